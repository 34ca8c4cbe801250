"""Edge commands: ``aeterna edge`` runs a node; ``render_status`` draws an edge's status for ``aeterna status``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge_svc.records import Channel


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

    dead = subparsers.add_parser(
        "dead-letters",
        help="list or requeue an edge's dead-lettered sync items",
        description=(
            "Items that expired (sync.offline.queueTTL) or overflowed (maxQueueSize) in an edge's outbox are "
            "kept in its dead-letter store, never dropped. 'list' shows them; 'requeue' puts them back at the "
            "end of their queues, to be sent on the next sync. Works on the edge's data directory, also while "
            "the edge runs."
        ),
    )
    actions = dead.add_subparsers(dest="dead_letters_action", metavar="ACTION", required=True)
    for name, text in (("list", "show dead letters per channel and cause"), ("requeue", "send them again")):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("--config", metavar="FILE", help="the edge's configuration (its edge.dataDir is used)")
        action.add_argument("--data-dir", metavar="DIR", help="the edge's data directory (overrides --config)")
        if name == "requeue":
            action.add_argument(
                "--channel", choices=[c.value for c in Channel], help="only this channel (default: all)"
            )
        action.set_defaults(handler=_dead_letters)


def _dead_letters(args: argparse.Namespace) -> int:
    from aeterna_shared.config import load_config  # noqa: PLC0415 - keep `aeterna --help` fast
    from edge_svc.__main__ import outbox_limits  # noqa: PLC0415
    from edge_svc.store.outbox import Outbox  # noqa: PLC0415

    config = load_config(args.config)
    data_dir = Path(args.data_dir or config.edge.data_dir)
    path = data_dir / "outbox.sqlite3"
    if not path.exists():
        print(f"no outbox at {path}: is {data_dir} an edge's data directory?", file=sys.stderr)
        return 1
    outbox = Outbox(path, outbox_limits(config))
    try:
        if args.dead_letters_action == "requeue":
            channel = Channel(args.channel) if args.channel else None
            print(f"requeued {outbox.requeue_dead_letters(channel)} item(s); they go out with the next sync")
            return 0
        rows = sorted(outbox.dead_letter_counts(), key=lambda row: (row[0].value, row[1]))
        if not rows:
            print("no dead letters")
        for channel_of, cause, items in rows:
            print(f"{channel_of.value:<10} {cause:<40} {items:>8} item(s)")
        return 0
    finally:
        outbox.close()


def _run_edge(args: argparse.Namespace) -> int:
    from edge_svc.__main__ import main  # noqa: PLC0415 - keep `aeterna --help` fast

    return main(args.config, args.ready_file)


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
