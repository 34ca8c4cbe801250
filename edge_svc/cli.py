"""Edge commands: ``aeterna edge`` runs a node; ``render_status`` draws an edge's status for ``aeterna status``."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edge``."""
    edge = subparsers.add_parser(
        "edge",
        help="run an edge node",
        description=(
            "Run an Aeterna edge node: working and session memory in Redis (an owned redis-server when "
            "cache.url is unset), a Qdrant Edge vector subset, the offline-capable Cedar agent, and the "
            "sync loops to central. SIGTERM stops it gracefully (flush, announce offline, stop)."
        ),
    )
    edge.add_argument("--config", metavar="FILE", help="YAML configuration (the spec's keys); AETERNA_* env overrides")
    edge.add_argument(
        "--ready-file",
        metavar="PATH",
        help="write JSON {pid, port, metrics_port} here (atomically) once the edge is serving",
    )
    edge.set_defaults(handler=_run_edge)


def _run_edge(args: argparse.Namespace) -> int:
    from edge_svc.__main__ import main  # noqa: PLC0415 - keep `aeterna --help` fast

    return main(args.config, args.ready_file)


def render_status(status: dict[str, Any]) -> str:
    """The status as a readable table."""
    lines = [
        f"edge            {status.get('agentId', '')}  (region {status.get('region', '')})",
        f"link            {status.get('linkState', '')}  since {status.get('linkChangeTime', '-')}"
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
        lines.append(f"{channel:<10} {items:>13} {batches:>8} {dead:>12} {acked:>9}  {last}")
    return "\n".join(lines)
