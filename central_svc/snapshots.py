"""Episodic snapshots: a gzip JSON-lines file of every episode plus a manifest, and restoring one.

Layout of a snapshot directory ``<snapshotDir>/episodes-<UTC time>/``:

* ``episodes.jsonl.gz``: one JSON object per episode (ids, tenant, content,
  embedding, occur time, and ``data``: the episode's protobuf encoding in base64);
* ``manifest.json``: format, creation time, episode count, and the SHA-256 of
  the data file, checked before a restore touches the database.

Restore (``aeterna snapshot restore DIR``) inserts every episode whose id is
not yet present; it never overwrites, so restoring twice is harmless.

Scheduled snapshots (``SnapshotScheduler``) are taken by one replica only when
several share a database: the one holding the snapshot lock (a PostgreSQL
advisory lock, ``central_svc.store.advisory_lock``). After each one, the
complete snapshots older than the newest ``central.snapshotRetention`` are
deleted (``prune``); a folder without a manifest is never deleted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aeterna_shared.errors import AeternaError, FailedPrecondition, InvalidArgument
from central_svc.ports import LeaderLock, SnapshotSource

_log = logging.getLogger(__name__)

FORMAT = "aeterna-episodes/1"
DATA_FILE = "episodes.jsonl.gz"
MANIFEST = "manifest.json"

SnapshotRow = tuple[str, str, str, str, str, str | None, datetime, bytes]
"""(episode_id, tenant_id, session_id, agent_id, content, embedding text, occur_time, data)."""


@dataclass(frozen=True)
class Manifest:
    """What a snapshot holds."""

    path: Path
    episodes: int
    sha256: str
    created: datetime


def _line(row: SnapshotRow) -> bytes:
    episode_id, tenant, session, agent, content, embedding, occur, data = row
    return (
        json.dumps(
            {
                "episode_id": episode_id,
                "tenant_id": tenant,
                "session_id": session,
                "agent_id": agent,
                "content": content,
                "embedding": embedding,
                "occur_time": occur.isoformat(),
                "data": base64.b64encode(data).decode(),
            },
            separators=(",", ":"),
        ).encode()
        + b"\n"
    )


def _row(line: bytes) -> SnapshotRow:
    doc = json.loads(line)
    return (
        doc["episode_id"],
        doc["tenant_id"],
        doc["session_id"],
        doc["agent_id"],
        doc["content"],
        doc["embedding"],
        datetime.fromisoformat(doc["occur_time"]),
        base64.b64decode(doc["data"]),
    )


async def create(source: SnapshotSource, directory: Path, *, now: datetime | None = None) -> Manifest:
    """Write a snapshot into a new folder under ``directory``; the manifest is written last, atomically."""
    created = now or datetime.now(UTC)
    target = directory / f"episodes-{created.strftime('%Y%m%dT%H%M%S%fZ')}"
    target.mkdir(parents=True, exist_ok=False)
    digest = hashlib.sha256()
    count = 0
    data_path = target / DATA_FILE
    with data_path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
        async for row in source.export():
            packed.write(_line(row))
            count += 1
    digest.update(data_path.read_bytes())
    manifest = {
        "format": FORMAT,
        "created": created.isoformat(),
        "episodes": count,
        "file": DATA_FILE,
        "sha256": digest.hexdigest(),
    }
    tmp = target / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, target / MANIFEST)
    _log.info("episodic snapshot of %d episodes written to %s", count, target)
    return Manifest(target, count, digest.hexdigest(), created)


def read_manifest(path: Path) -> Manifest:
    """Load and check a snapshot's manifest (``path`` is the snapshot folder or its manifest)."""
    folder = path.parent if path.name == MANIFEST else path
    try:
        document = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidArgument(f"{folder} is not a snapshot: {error}", reason="BAD_SNAPSHOT") from None
    if document.get("format") != FORMAT:
        raise InvalidArgument(f"{folder}: unknown snapshot format {document.get('format')!r}", reason="BAD_SNAPSHOT")
    return Manifest(
        folder, int(document["episodes"]), str(document["sha256"]), datetime.fromisoformat(document["created"])
    )


async def restore(source: SnapshotSource, path: Path, *, chunk: int = 1000) -> int:
    """Insert a snapshot's episodes that are missing; return how many were inserted."""
    manifest = read_manifest(path)
    data_path = manifest.path / DATA_FILE
    if hashlib.sha256(data_path.read_bytes()).hexdigest() != manifest.sha256:
        raise FailedPrecondition(f"{data_path} does not match its manifest's checksum", reason="SNAPSHOT_CORRUPT")
    inserted = 0
    batch: list[SnapshotRow] = []
    with gzip.open(data_path, "rb") as lines:
        for line in lines:
            batch.append(_row(line))
            if len(batch) >= chunk:
                inserted += await source.import_rows(batch)
                batch = []
    if batch:
        inserted += await source.import_rows(batch)
    _log.info("restored %d of %d episodes from %s", inserted, manifest.episodes, manifest.path)
    return inserted


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete the complete snapshots older than the newest ``keep`` (0: none); returns the deleted folders.

    Only folders with a manifest count and go: one without (a snapshot still
    being written, or one that failed half-way) is never touched here.
    """
    if keep <= 0 or not directory.is_dir():
        return []
    # The folder names carry the creation time in a fixed-width UTC format: by name is by age.
    complete = sorted(path for path in directory.glob("episodes-*") if (path / MANIFEST).is_file())
    old = complete[:-keep]
    for path in old:
        shutil.rmtree(path)
        _log.info("deleted snapshot %s (central.snapshotRetention keeps the newest %d)", path, keep)
    return old


def newest(directory: Path) -> Manifest | None:
    """The newest complete snapshot in ``directory`` (None when there is none)."""
    complete = sorted(path for path in directory.glob("episodes-*") if (path / MANIFEST).is_file())
    for path in reversed(complete):
        with contextlib.suppress(InvalidArgument, KeyError, ValueError):
            return read_manifest(path)
    return None


class SnapshotScheduler:
    """Writes a snapshot every ``interval`` on the one replica that leads, keeping the newest ``retention``.

    With a ``lock`` (``central_svc.ports.LeaderLock``, a PostgreSQL advisory
    lock in production) only the replica holding it takes scheduled snapshots;
    the others ask for it every ``check`` seconds (``min(interval, 30 s)``) and
    the first to ask after the leader is gone (its connection ended with its
    process) takes over. The leader confirms it still holds the lock as often,
    and right before each snapshot. Without a lock this process always leads.

    A new leader's first snapshot is due one interval after the newest complete
    snapshot in ``directory`` (when the folder is shared, the schedule goes on
    where the old leader left it), or one interval after it began to lead.
    ``on_leading`` is told each change (for the ``aeterna_snapshot_leader`` gauge).
    """

    def __init__(
        self,
        source: SnapshotSource,
        directory: Path,
        interval: timedelta,
        *,
        lock: LeaderLock | None = None,
        retention: int = 0,
        on_leading: Callable[[bool], object] = lambda _leading: None,
        check: float | None = None,
    ) -> None:
        self._source = source
        self._directory = directory
        self._interval = interval
        self._lock = lock
        self._retention = retention
        self._on_leading = on_leading
        self._check = check if check is not None else min(interval.total_seconds(), 30.0)
        self._task: asyncio.Task[None] | None = None
        self._due: datetime | None = None
        self._problem = ""
        self.leading = False
        """Whether this replica takes the scheduled snapshots now."""

    def start(self) -> None:
        """Begin asking for the lock and, while leading, the schedule."""
        self._task = asyncio.create_task(self._run(), name="episodic-snapshots")

    async def stop(self) -> None:
        """Stop the schedule (a snapshot in progress is cancelled) and give the lock up."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._lock is not None:
            await self._lock.release()
        if self.leading:
            _log.info("stopped taking scheduled snapshots; the snapshot lock is released for another replica")
        self._lead(False, stopping=True)

    async def _holds(self) -> bool:
        if self._lock is None:
            return True
        try:
            held = await self._lock.hold()
        except AeternaError as error:
            if error.message != self._problem:
                _log.warning("cannot ask for the snapshot lock: %s [%s]", error.message, error.reason)
            self._problem = error.message
            return False
        except Exception:  # a bug in the adapter must not end the schedule for good: not leading, ask again
            _log.exception("asking for the snapshot lock failed")
            return False
        self._problem = ""
        return held

    def _lead(self, leading: bool, *, stopping: bool = False) -> None:
        if leading == self.leading:
            return
        self.leading = leading
        self._on_leading(leading)
        if leading:
            _log.info("taking scheduled snapshots (leader) every %s into %s", self._interval, self._directory)
            last = newest(self._directory)
            since = last.created if last is not None else datetime.now(UTC)
            self._due = since + self._interval
        else:
            if not stopping:
                _log.warning("no longer the snapshot leader: another replica may take the scheduled snapshots")
            self._due = None

    async def _run(self) -> None:
        waiting_logged = False
        while True:
            self._lead(await self._holds())
            if not self.leading and not waiting_logged and self._lock is not None:
                _log.info("another replica takes the scheduled snapshots; asking again every %.0f s", self._check)
                waiting_logged = True
            if self.leading and self._due is not None and datetime.now(UTC) >= self._due:
                await self._snapshot()
            await asyncio.sleep(self._pause())

    def _pause(self) -> float:
        if not self.leading or self._due is None:
            return self._check
        until_due = (self._due - datetime.now(UTC)).total_seconds()
        return min(self._check, max(until_due, 0.05))

    async def _snapshot(self) -> None:
        self._due = datetime.now(UTC) + self._interval
        try:
            await create(self._source, self._directory)
            await asyncio.to_thread(prune, self._directory, self._retention)
        except Exception:
            _log.exception("episodic snapshot failed; next one in %s", self._interval)
