"""Edge commands: ``aeterna edge`` runs a node; ``aeterna dead-letters`` lists or requeues its dead letters."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aeterna_cli.output import add_json, print_json, progress
from aeterna_security.production import DEVELOPMENT_HELP
from edge_svc.records import Channel

if TYPE_CHECKING:
    from edge_svc.store.outbox import SqliteOutbox


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
    edge.add_argument("--development", action="store_true", help=DEVELOPMENT_HELP)
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
        add_json(action)
        action.set_defaults(handler=_dead_letters)


def _dead_letters(args: argparse.Namespace) -> int:
    from aeterna_shared.config import load_config  # noqa: PLC0415 - keep `aeterna --help` fast
    from aeterna_shared.errors import AeternaError  # noqa: PLC0415
    from edge_svc.deps import outbox_limits, outbox_path  # noqa: PLC0415
    from edge_svc.store.outbox import SqliteOutbox  # noqa: PLC0415

    config = load_config(args.config)
    data_dir = Path(args.data_dir or config.edge.data_dir)
    path = outbox_path(data_dir)
    if not path.exists():
        print(f"no outbox at {path}: is {data_dir} an edge's data directory?", file=sys.stderr)
        return 1
    try:
        outbox = SqliteOutbox(path, outbox_limits(config))
        try:
            return _dead_letters_on(outbox, args)
        finally:
            outbox.close()
    except AeternaError as error:  # the outbox cannot be read or written now (locked, read-only, disk full)
        print(f"{error.message} [{error.reason}]", file=sys.stderr)
        return 1


def _dead_letters_on(outbox: SqliteOutbox, args: argparse.Namespace) -> int:
    if args.dead_letters_action == "requeue":
        return _requeue(outbox, Channel(args.channel) if args.channel else None, as_json=args.json)
    rows = sorted(outbox.dead_letter_counts(), key=lambda row: (row[0].value, row[1]))
    if args.json:
        print_json({"deadLetters": [{"channel": c.value, "cause": cause, "items": n} for c, cause, n in rows]})
        return 0
    if not rows:
        print("no dead letters")
    for channel_of, cause, items in rows:
        print(f"{channel_of.value:<10} {cause:<40} {items:>8} item(s)")
    return 0


def _requeue(outbox: SqliteOutbox, only: Channel | None, *, as_json: bool) -> int:
    """Requeue channel by channel, a progress line (stderr) after each, then one summary line (stdout)."""
    waiting: dict[Channel, int] = {}
    for channel_of, _cause, items in outbox.dead_letter_counts():
        if only is None or channel_of == only:
            waiting[channel_of] = waiting.get(channel_of, 0) + items
    channels = sorted(waiting, key=lambda c: c.value)
    progress(f"requeueing {sum(waiting.values())} dead-lettered item(s) in {len(channels)} channel(s)")
    done: dict[str, int] = {}
    for index, channel_of in enumerate(channels, start=1):
        done[channel_of.value] = outbox.requeue_dead_letters(channel_of)
        progress(f"  [{index}/{len(channels)}] {channel_of.value}: requeued {done[channel_of.value]} item(s)")
    total = sum(done.values())
    if as_json:
        print_json({"requeued": total, "channels": done})
    else:
        print(f"requeued {total} item(s); they go out with the next sync")
    return 0


def _run_edge(args: argparse.Namespace) -> int:
    from edge_svc.server import main  # noqa: PLC0415 - keep `aeterna --help` fast

    return main(args.config, args.ready_file, development=args.development)
