"""``aeterna status``: how an edge or central is doing, for an operator at 3 a.m.

The command asks the target for the edge status first; a central answers that
with UNIMPLEMENTED, and is then asked for its own view (edge registry, policy
version, pending reviews). So one command works against either process. It
connects like every other command (``aeterna_cli.connection``: TLS, client
certificate, pins, API key or token, or the ``--config`` of the process).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from aeterna_cli.connection import EXIT_FAILED, EXIT_USAGE, UsageError, add_connection_options
from aeterna_cli.output import add_json, print_json


def render_status(status: dict[str, Any]) -> str:
    """The status as a readable table; a degraded edge (online, but a channel makes no progress) says DEGRADED."""
    link = status.get("linkState", "")
    if status.get("degraded"):
        link = f"DEGRADED ({link.lower() or 'online'}, but sync makes no progress; see below)"
    lines = [
        f"edge            {status.get('agentId', '')}  (region {status.get('region', '')})",
        f"incarnation     {status.get('incarnationId') or '(none: the outbox predates incarnations)'}",
        f"link            {link}  since {status.get('linkChangeTime', '-')}"
        f"  (failed checks in a row: {status.get('consecutiveFailures', 0)})",
        f"policy version  {status.get('policyVersion', '0')}",
        f"local data      {status.get('localSessions', '0')} sessions, {status.get('localVectors', '0')} vectors",
        "",
        f"{'channel':<10} {'pending items':>13} {'batches':>8} {'dead letters':>12} {'acked seq':>9}  last sync",
    ]
    for queue in status.get("queues", []):
        channel = queue.get("channel", "")
        items, batches = queue.get("pendingItems", "0"), queue.get("pendingBatches", "0")
        dead, acked = queue.get("deadLetters", "0"), queue.get("ackedSequence", "0")
        last = queue.get("lastSyncTime") or "never"
        flag = "  DEGRADED" if queue.get("degraded") else ""
        lines.append(f"{channel:<10} {items:>13} {batches:>8} {dead:>12} {acked:>9}  {last}{flag}")
    stuck = [queue for queue in status.get("queues", []) if queue.get("degraded")]
    if stuck:
        lines.append("")
        lines += [f"DEGRADED {q.get('channel', '')}: {q.get('degradedReason', '')}" for q in stuck]
    return "\n".join(lines)


def render_central(status: dict[str, Any]) -> str:
    """Central's status as a readable table."""
    edges = status["edges"]
    online = sum(1 for edge in edges if edge["state"] == "online")
    lines = [
        f"central         {status['target']}",
        f"policy version  {status['policyVersion']}",
        f"manual review   {status['pendingConflicts']} pending conflict(s)  (aeterna conflicts list)",
        f"edges           {online} online of {len(edges)} registered",
    ]
    if edges:
        lines += ["", f"{'agent id':<24} {'region':<16} {'state':<9} incarnation"]
        lines += [
            f"{e['agentId']:<24} {e['region']:<16} {e['state']:<9} {e['incarnationId'] or '(none)'}"
            + (f"  (re-provisioned: {e['incarnationCount']} incarnations)" if e["incarnationCount"] > 1 else "")
            for e in edges
        ]
    return "\n".join(lines)


def _show(args: argparse.Namespace) -> int:
    from aeterna_cli.api.clients import StatusUnavailable, status_of  # noqa: PLC0415 - keeps `aeterna --help` fast
    from aeterna_cli.connection import describe, resolve  # noqa: PLC0415

    try:
        connection = resolve(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        status = status_of(connection.target, connection.settings)
    except StatusUnavailable as error:
        print(f"cannot get the status of {connection.target}: {describe(error.error, connection)}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json(status)
        return 0
    print(render_status(status) if status["role"] == "edge" else render_central(status))
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``aeterna status``."""
    parser = subparsers.add_parser(
        "status",
        help="show how an edge or central is doing",
        description=(
            "Against an edge: online/offline, outbox depth and dead letters per channel, last successful "
            "sync per layer, and the policy version in force. Against central: the policy version, "
            "pending manual reviews and every registered edge with its state."
        ),
    )
    add_json(parser)
    add_connection_options(parser, peer="self", timeout=5.0)
    parser.set_defaults(handler=_show)
