"""Episodic snapshots: a gzip JSON-lines file of every episode plus a manifest, and restoring one.

Layout of a snapshot directory ``<snapshotDir>/episodes-<UTC time>/``:

* ``episodes.jsonl.gz``: one JSON object per episode (ids, tenant, content,
  embedding, occur time, and ``data``: the episode's protobuf encoding in base64);
* ``manifest.json``: format, creation time, episode count, and the SHA-256 of
  the data file, checked before a restore touches the database.

Restore (``aeterna snapshot restore DIR``) inserts every episode whose id is
not yet present; it never overwrites, so restoring twice is harmless.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aeterna_shared.errors import FailedPrecondition, InvalidArgument
from central_svc.periodic import Periodic
from central_svc.ports import SnapshotSource

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


class SnapshotScheduler:
    """Writes a snapshot every ``interval`` while the server runs."""

    def __init__(self, source: SnapshotSource, directory: Path, interval: timedelta) -> None:
        self._schedule = Periodic(
            "episodic-snapshots", interval.total_seconds(), lambda: create(source, directory), first_now=False
        )

    def start(self) -> None:
        """Begin the schedule (first snapshot one interval after start)."""
        self._schedule.start()

    async def stop(self) -> None:
        """Stop the schedule."""
        await self._schedule.stop()
