"""Central's commands: ``central`` and ``snapshot`` (the operator commands calling central are in ``aeterna_cli``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aeterna_security.production import DEVELOPMENT_HELP
from aeterna_shared.config import load_config
from aeterna_shared.errors import AeternaError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


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
    central.add_argument("--development", action="store_true", help=DEVELOPMENT_HELP)
    central.set_defaults(handler=_run_central)

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


def _run_central(args: argparse.Namespace) -> int:
    from central_svc.__main__ import migrate, run  # noqa: PLC0415 - keeps `aeterna --help` fast

    return migrate(args) if args.action == "migrate" else run(args)


def _report(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def _run(coroutine: Any) -> int:
    try:
        result: int = asyncio.run(coroutine)
    except (AeternaError, OSError, ValueError) as error:
        return _report(error)
    return result


@contextlib.asynccontextmanager
async def _database(config_path: str | None) -> AsyncIterator[Any]:
    """The configured database, or the embedded one in central.dataDir (started if it is not running)."""
    from central_svc.deps import embedded_postgres  # noqa: PLC0415
    from central_svc.store.database import Database  # noqa: PLC0415
    from central_svc.store.migrate import upgrade  # noqa: PLC0415

    config = load_config(config_path, os.environ)
    owned = None
    url = config.postgresql.url
    if url is None:
        server = embedded_postgres(config.central)
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
    from central_svc.deps import snapshot_dir  # noqa: PLC0415
    from central_svc.store.episodes import PostgresEpisodeStore  # noqa: PLC0415

    async with _database(args.config) as (config, database):
        directory = Path(args.output) if args.output else snapshot_dir(config.central)
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
