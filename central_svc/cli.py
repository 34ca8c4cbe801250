"""Central's commands: ``central``, ``policy publish``, ``conflicts``, ``snapshot``, ``edges``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aeterna_shared.config import load_config
from aeterna_shared.errors import AeternaError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_TARGET = "127.0.0.1:8081"


def add_commands(subparsers: Subparsers) -> None:
    """Register central's commands on the ``aeterna`` parser."""
    central = subparsers.add_parser(
        "central",
        help="run the central authority",
        description="Run Aeterna central: sync API, policy authority, episodic memory, vector graph. "
        "Without postgresql.url it starts an embedded PostgreSQL 18 + pgvector in central.dataDir.",
    )
    central.add_argument(
        "action",
        nargs="?",
        choices=["serve", "migrate"],
        default="serve",
        help="serve (default) runs central; migrate only brings the database schema up to date and exits "
        "(the Helm chart's migration Job runs it)",
    )
    central.add_argument("--config", help="YAML config file with the spec's keys (env AETERNA_* overrides)")
    central.add_argument("--ready-file", help="write JSON {pid, port, metrics_port} here once serving")
    central.set_defaults(handler=_run_central)

    policy = subparsers.add_parser("policy", help="manage Cedar policies at central", description="Cedar policies.")
    policy_commands = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    publish = policy_commands.add_parser(
        "publish",
        help="publish every *.cedar file of a folder as the next policy version",
        description="Publish all *.cedar files of DIR (policy id = file name without .cedar) as one bundle. "
        "schema.json and entities.json in DIR are sent along when present.",
    )
    publish.add_argument("directory", metavar="DIR", help="folder holding *.cedar files")
    _add_target(publish)
    publish.add_argument("--expected-version", type=int, default=0, help="refuse unless this is the current version")
    publish.set_defaults(handler=_publish)

    conflicts = subparsers.add_parser("conflicts", help="review decision conflicts", description="Manual review.")
    conflict_commands = conflicts.add_subparsers(dest="conflicts_command", metavar="ACTION", required=True)
    listing = conflict_commands.add_parser("list", help="list conflicts", description="List decision conflicts.")
    listing.add_argument("--state", choices=["pending", "resolved", "all"], default="pending", help="which ones")
    _add_target(listing)
    listing.set_defaults(handler=_list_conflicts)
    resolve = conflict_commands.add_parser("resolve", help="resolve one conflict", description="Settle a conflict.")
    resolve.add_argument("conflict_id", metavar="ID", help="conflict id from 'aeterna conflicts list'")
    resolve.add_argument("--keep", choices=["edge", "central"], required=True, help="which decision stays effective")
    resolve.add_argument("--note", default="", help="free-text note kept with the resolution")
    _add_target(resolve)
    resolve.set_defaults(handler=_resolve_conflict)

    snapshot = subparsers.add_parser(
        "snapshot",
        help="create or restore episodic-memory snapshots",
        description="Episodic snapshots: gzip JSON-lines plus manifest.json. Restore inserts the episodes "
        "that are missing and never overwrites, so it is safe to repeat.",
    )
    snapshot_commands = snapshot.add_subparsers(dest="snapshot_command", metavar="ACTION", required=True)
    create = snapshot_commands.add_parser("create", help="write a snapshot now", description="Write a snapshot.")
    create.add_argument("--config", help="central's config file (database and snapshot dir)")
    create.add_argument("--output", help="folder for the snapshot (default central.snapshotDir)")
    create.set_defaults(handler=_snapshot_create)
    restore = snapshot_commands.add_parser("restore", help="restore a snapshot", description="Restore a snapshot.")
    restore.add_argument("path", metavar="DIR", help="snapshot folder (holding manifest.json)")
    restore.add_argument("--config", help="central's config file (database)")
    restore.set_defaults(handler=_snapshot_restore)

    edges = subparsers.add_parser("edges", help="the edge registry", description="Edges known to central.")
    edge_commands = edges.add_subparsers(dest="edges_command", metavar="ACTION", required=True)
    edge_list = edge_commands.add_parser("list", help="list edges and their state", description="List edges.")
    _add_target(edge_list)
    edge_list.set_defaults(handler=_list_edges)


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"central's host:port (default {DEFAULT_TARGET})")
    parser.add_argument("--agent-id", default="operator", help="identity to call as (development auth)")
    parser.add_argument("--tenant-id", default="default", help="tenant to act in (development auth)")


def _run_central(args: argparse.Namespace) -> int:
    from central_svc.__main__ import migrate, run  # noqa: PLC0415 - keeps `aeterna --help` fast

    return migrate(args) if args.action == "migrate" else run(args)


def _report(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def _run(coroutine: Any) -> int:
    from central_svc.api import operator  # noqa: PLC0415

    try:
        result: int = asyncio.run(coroutine)
    except (AeternaError, OSError, ValueError) as error:
        return _report(error)
    except operator.RpcFailure as error:
        return _report(error)
    return result


def _publish(args: argparse.Namespace) -> int:
    from central_svc.api import operator  # noqa: PLC0415

    return _run(operator.publish(args))


def _list_conflicts(args: argparse.Namespace) -> int:
    from central_svc.api import operator  # noqa: PLC0415

    return _run(operator.list_conflicts(args))


def _resolve_conflict(args: argparse.Namespace) -> int:
    from central_svc.api import operator  # noqa: PLC0415

    return _run(operator.resolve_conflict(args))


def _list_edges(args: argparse.Namespace) -> int:
    from central_svc.api import operator  # noqa: PLC0415

    return _run(operator.list_edges(args))


@contextlib.asynccontextmanager
async def _database(config_path: str | None) -> AsyncIterator[Any]:
    """The configured database, or the embedded one in central.dataDir (started if it is not running)."""
    from central_svc.__main__ import embedded_postgres  # noqa: PLC0415
    from central_svc.store.database import Database  # noqa: PLC0415
    from central_svc.store.migrate import upgrade  # noqa: PLC0415

    config = load_config(config_path, os.environ)
    owned = None
    url = config.postgresql.url
    if url is None:
        server = embedded_postgres(config)
        if not server.is_running():
            owned = server
            await asyncio.to_thread(server.start)
        url = server.url
    try:
        await asyncio.to_thread(upgrade, url, vector_dimension=config.vector_database.dimension)
        database = Database(url, max_size=2)
        await database.open()
        try:
            yield config, database
        finally:
            await database.close()
    finally:
        if owned is not None:
            await asyncio.to_thread(owned.stop)


async def _create(args: argparse.Namespace) -> int:
    from central_svc import snapshots  # noqa: PLC0415
    from central_svc.store.episodes import PostgresEpisodeStore  # noqa: PLC0415

    async with _database(args.config) as (config, database):
        directory = Path(args.output or config.central.snapshot_dir or Path(config.central.data_dir) / "snapshots")
        manifest = await snapshots.create(PostgresEpisodeStore(database), directory)
    print(f"snapshot of {manifest.episodes} episodes written to {manifest.path}")
    return 0


async def _restore(args: argparse.Namespace) -> int:
    from central_svc import snapshots  # noqa: PLC0415
    from central_svc.store.episodes import PostgresEpisodeStore  # noqa: PLC0415

    async with _database(args.config) as (_config, database):
        manifest = snapshots.read_manifest(Path(args.path))
        inserted = await snapshots.restore(PostgresEpisodeStore(database), Path(args.path))
    print(f"restored {inserted} of {manifest.episodes} episodes from {manifest.path}")
    return 0


def _snapshot_create(args: argparse.Namespace) -> int:
    return _run(_create(args))


def _snapshot_restore(args: argparse.Namespace) -> int:
    return _run(_restore(args))
