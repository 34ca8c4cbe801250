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

from aeterna_cli.output import add_json, print_json, progress
from aeterna_security.production import DEVELOPMENT_HELP
from aeterna_shared.config import load_config
from aeterna_shared.config.loader import ConfigError
from aeterna_shared.errors import AeternaError

if TYPE_CHECKING:
    from central_svc.ports import SnapshotSource
    from central_svc.snapshots import Manifest, SnapshotRow

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

PROGRESS_EVERY = 1000
"""Episodes between two progress lines of ``snapshot create`` (restore reports each chunk it inserts)."""


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
    add_json(create)
    create.set_defaults(handler=_snapshot_create)
    restore = snapshot_commands.add_parser("restore", help="restore a snapshot", description="Restore a snapshot.")
    restore.add_argument("path", metavar="DIR", help="snapshot folder (holding manifest.json)")
    restore.add_argument("--config", help="central's config file (database)")
    add_json(restore)
    restore.set_defaults(handler=_snapshot_restore)
    listing = snapshot_commands.add_parser(
        "list", help="list the snapshots", description="List the complete snapshots in central.snapshotDir."
    )
    listing.add_argument("--config", help="central's config file (snapshot dir)")
    listing.add_argument("--dir", help="folder holding the snapshots (default central.snapshotDir)")
    add_json(listing)
    listing.set_defaults(handler=_snapshot_list)


def _run_central(args: argparse.Namespace) -> int:
    from central_svc.__main__ import migrate, run  # noqa: PLC0415 - keeps `aeterna --help` fast

    return migrate(args) if args.action == "migrate" else run(args)


def _report(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def _run(coroutine: Any) -> int:
    try:
        result: int = asyncio.run(coroutine)
    except ConfigError:
        raise  # reported once, as the README shows, by ``aeterna_cli.main``
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


class _Progress:
    """A snapshot source that reports, on stderr, how far an export or an import has got."""

    def __init__(self, source: SnapshotSource, total: int | None = None) -> None:
        self._source = source
        self._total = total
        self.read = 0
        self.inserted = 0

    async def export(self) -> AsyncIterator[SnapshotRow]:
        async for row in self._source.export():
            self.read += 1
            if self.read % PROGRESS_EVERY == 0:
                progress(f"  {self.read} episodes written")
            yield row

    async def import_rows(self, rows: list[SnapshotRow]) -> int:
        inserted = await self._source.import_rows(rows)
        self.read += len(rows)
        self.inserted += inserted
        progress(f"  {self.read} of {self._total} episodes read, {self.inserted} new")
        return inserted


def _manifest_document(manifest: Manifest) -> dict[str, Any]:
    return {
        "path": str(manifest.path),
        "episodes": manifest.episodes,
        "sha256": manifest.sha256,
        "created": manifest.created.isoformat(),
    }


async def _create(args: argparse.Namespace) -> int:
    from central_svc import snapshots  # noqa: PLC0415
    from central_svc.deps import snapshot_dir  # noqa: PLC0415
    from central_svc.store.episodes import PostgresEpisodeStore  # noqa: PLC0415

    async with _database(args.config) as (config, database):
        directory = Path(args.output) if args.output else snapshot_dir(config.central)
        progress(f"writing a snapshot of every episode under {directory}")
        manifest = await snapshots.create(_Progress(PostgresEpisodeStore(database)), directory)
    if args.json:
        print_json({"snapshot": _manifest_document(manifest)})
    else:
        print(f"snapshot of {manifest.episodes} episodes written to {manifest.path}")
    return 0


async def _restore(args: argparse.Namespace) -> int:
    from central_svc import snapshots  # noqa: PLC0415
    from central_svc.store.episodes import PostgresEpisodeStore  # noqa: PLC0415

    async with _database(args.config) as (_config, database):
        manifest = snapshots.read_manifest(Path(args.path))
        progress(f"restoring {manifest.episodes} episodes from {manifest.path} (existing ones are kept)")
        inserted = await snapshots.restore(_Progress(PostgresEpisodeStore(database), manifest.episodes), manifest.path)
    if args.json:
        print_json({"snapshot": _manifest_document(manifest), "inserted": inserted})
    else:
        print(f"restored {inserted} of {manifest.episodes} episodes from {manifest.path}")
    return 0


def _snapshot_create(args: argparse.Namespace) -> int:
    return _run(_create(args))


def _snapshot_restore(args: argparse.Namespace) -> int:
    return _run(_restore(args))


def _snapshot_list(args: argparse.Namespace) -> int:
    from central_svc import snapshots  # noqa: PLC0415
    from central_svc.deps import snapshot_dir  # noqa: PLC0415

    directory = Path(args.dir) if args.dir else snapshot_dir(load_config(args.config, os.environ).central)
    found: list[Manifest] = []
    if directory.is_dir():
        for folder in sorted(directory.iterdir()):
            if (folder / snapshots.MANIFEST).exists():  # one being written has no manifest yet
                with contextlib.suppress(AeternaError):
                    found.append(snapshots.read_manifest(folder))
    if args.json:
        print_json({"directory": str(directory), "snapshots": [_manifest_document(m) for m in found]})
        return 0
    if not found:
        print(f"no snapshots in {directory}")
    for manifest in found:
        print(f"{manifest.path.name}  {manifest.episodes:>10} episodes  created {manifest.created.isoformat()}")
    return 0
