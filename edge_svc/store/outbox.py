"""The durable outbox: every batch bound for central, in SQLite (WAL, synchronous=FULL).

A batch is committed here, with its channel, per-channel monotonic sequence
and batch id, before anything tries to send it, and it is removed only when
central acknowledges it (or central's checkpoint shows it was applied). Limits
come from configuration: a batch older than the queue TTL, or the oldest
batches when a channel holds more items than its maximum, move to the
``dead_letters`` table, are counted per channel and logged — never dropped
silently. So do items central refused: the items an ack lists as failed
move there in the same transaction that removes their batch
(``ack_refusing``, cause ``refused:<REASON>``), and a batch central refused
as a whole moves there through ``discard``; central's message is kept in the
row's ``detail``.

All methods are synchronous and guarded by one lock; async callers run them
with ``asyncio.to_thread`` so that fsyncs never stall the event loop.

The journal is the one exception to both rules, for answers that must not
wait for a disk or a thread (``aeterna.offline.decisionDurability: process``).
``journal`` is called on the event loop: one INSERT into the ``journal`` table
through a connection of its own with ``synchronous=NORMAL`` and no automatic
checkpoint, so when it returns the row is in the write-ahead log, in the OS
page cache: it survives a crash or SIGKILL of this process, not yet a power
loss or kernel crash. It never waits: when another commit holds SQLite's write
lock it returns False and the caller uses ``journal_many`` in a thread.
``move_journal`` (in a thread) turns journaled items into ordinary batches,
removing them from the journal in the same transaction, so each is queued
exactly once whatever crashes when. ``sync`` bounds what a power loss can
take: a checkpoint and an fsync of the log from a third connection (commits go
on meanwhile); any later fsynced commit also makes the journal durable.

Library errors are mapped here, at the adapter: a database SQLite cannot read
or write now (disk full, locked, read-only, gone) raises the project's own
``Unavailable`` (reason ``OUTBOX_UNAVAILABLE``) after the transaction was
rolled back, never an ``sqlite3`` exception. Other SQLite errors (a constraint
violated) are bugs and stay what they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aeterna_shared.errors import Unavailable
from edge_svc.ports import REFUSED_PREFIX, ChannelStats, DeadLetter, Refusals, RefusedItem
from edge_svc.records import Channel, JsonDict, OutboxBatch

_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    channel    TEXT    NOT NULL,
    sequence   INTEGER NOT NULL,
    batch_id   TEXT    NOT NULL UNIQUE,
    created    REAL    NOT NULL,
    item_count INTEGER NOT NULL,
    payload    BLOB    NOT NULL,
    PRIMARY KEY (channel, sequence)
);
CREATE TABLE IF NOT EXISTS channels (
    channel        TEXT    PRIMARY KEY,
    next_sequence  INTEGER NOT NULL DEFAULT 1,
    acked_sequence INTEGER NOT NULL DEFAULT 0,
    last_sync      REAL,
    dead_letters   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    id      INTEGER PRIMARY KEY,
    channel TEXT    NOT NULL,
    created REAL    NOT NULL,
    item    TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    channel    TEXT    NOT NULL,
    sequence   INTEGER NOT NULL,
    batch_id   TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    created    REAL    NOT NULL,
    moved      REAL    NOT NULL,
    item_count INTEGER NOT NULL,
    payload    BLOB    NOT NULL
);
"""


@dataclass(frozen=True)
class ChannelLimits:
    """How much one channel may hold."""

    max_items: int
    ttl_seconds: float


UNAVAILABLE_MESSAGE = "the edge's outbox cannot be written (disk full or locked); nothing was acknowledged"
"""What a caller is told when SQLite cannot read or write the outbox now (reason ``OUTBOX_UNAVAILABLE``)."""


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Translate SQLite's operational errors into the project's own (one place, at the adapter)."""
    try:
        yield
    except sqlite3.OperationalError as error:
        _log.warning("outbox: %s failed: %s", what, error)
        raise Unavailable(UNAVAILABLE_MESSAGE, reason="OUTBOX_UNAVAILABLE", retry_after=1.0) from error


_BUSY_TIMEOUT_MS = 5000
"""How long a write waits for SQLite's write lock held by another connection (a commit, the ``aeterna`` CLI)."""
_MOVE_BATCHES = 64
"""Batches ``move_journal`` makes per transaction (a long journal moves in several)."""
_BATCH_WINDOW = 1.0
"""Seconds between the first and the last journaled item of one batch (its ``created`` is the first's)."""


def _busy(error: sqlite3.OperationalError) -> bool:
    """SQLite's write lock is held by another connection."""
    return error.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _cannot_open(path: Path, error: sqlite3.OperationalError) -> Unavailable:
    """A database SQLite cannot open or set up (unreadable, read-only directory, locked, disk full)."""
    return Unavailable(
        f"the edge's outbox {path} cannot be opened: {error}", reason="OUTBOX_UNAVAILABLE", retry_after=1.0
    )


class SqliteOutbox:
    """SQLite-backed, per-channel ordered queue of batches (the ``edge_svc.ports.Outbox`` adapter)."""

    def __init__(
        self, path: Path, limits: dict[Channel, ChannelLimits], *, clock: Callable[[], float] = time.time
    ) -> None:
        """``clock`` (wall-clock seconds) stamps batches and drives TTL expiry; tests inject a fake one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()
        self._limits = limits
        self._clock = clock
        self._held: dict[Channel, int] = {}
        """Items queued per channel, as last counted (for ``_enforce_size``); cleared by every other write."""
        self._data_version = -1
        """SQLite's ``data_version`` when ``_held`` was counted: it changes when another connection commits."""
        self._unsynced = False
        """A journal commit (no fsync) happened since the last ``sync``."""
        self._sync_lock = threading.Lock()
        self._syncer: sqlite3.Connection | None = None
        self._journal_lock = threading.Lock()
        self._journal: sqlite3.Connection | None = None
        try:
            self._db = self._connect()
        except sqlite3.OperationalError as error:
            raise _cannot_open(path, error) from error
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._atomic():
                existing = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'batches'").fetchone()
                for statement in _SCHEMA.split(";"):  # one transaction (executescript would commit each)
                    if statement.strip():
                        self._db.execute(statement)
                for channel in Channel:
                    self._db.execute("INSERT OR IGNORE INTO channels(channel) VALUES (?)", (channel.value,))
                # A new database gets a new incarnation; one that predates incarnations keeps the empty id.
                self._db.execute(
                    "INSERT OR IGNORE INTO meta(name, value) VALUES ('incarnation_id', ?)",
                    ("" if existing else str(uuid.uuid4()),),
                )
                (incarnation,) = self._db.execute("SELECT value FROM meta WHERE name = 'incarnation_id'").fetchone()
            self._add_detail_column()
            self._journal = self._connect()
            self._journal.execute("PRAGMA synchronous=NORMAL")
            self._journal.execute("PRAGMA wal_autocheckpoint=0")
            self._journal.execute("PRAGMA busy_timeout=0")
        except sqlite3.OperationalError as error:
            self._close_connections()
            raise _cannot_open(path, error) from error
        except BaseException:
            self._close_connections()
            raise
        self.incarnation_id: str = str(incarnation)
        """Identity of this outbox's database (``BatchHeader.incarnation_id``); empty for a pre-incarnation one."""

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[None]:
        """One write transaction under the lock: BEGIN IMMEDIATE, the body, COMMIT; rolled back on any error."""
        with self._lock:
            self._held.clear()  # any write but enqueue's may change what a channel holds
            with self._begun():
                yield

    @contextlib.contextmanager
    def _begun(self) -> Iterator[None]:
        """BEGIN IMMEDIATE, the body, COMMIT, with the lock held; rolled back (and the counts forgotten) on error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._held.clear()
            if self._db.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                self._db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """``_atomic``, with SQLite's operational errors mapped to ``Unavailable``."""
        with _mapped(what), self._atomic():
            yield

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Reads under the lock (each statement sees one committed state)."""
        with self._lock, _mapped(what):
            yield

    def _add_detail_column(self) -> None:
        """``dead_letters.detail`` (central's message for what it refused), also in outboxes made before it."""
        with self._atomic():
            columns = {str(row[1]) for row in self._db.execute("PRAGMA table_info(dead_letters)")}
            if "detail" not in columns:
                self._db.execute("ALTER TABLE dead_letters ADD COLUMN detail TEXT NOT NULL DEFAULT ''")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            str(self._path), check_same_thread=False, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000
        )

    def _close_connections(self) -> None:
        with self._sync_lock:
            if self._syncer is not None:
                self._syncer.close()
                self._syncer = None
        with self._journal_lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None
        self._db.close()  # the last one: closing checkpoints the log into the database and fsyncs it

    def close(self) -> None:
        """Close the database (the last connection's close checkpoints and fsyncs it: everything is on disk)."""
        with self._lock:
            self._close_connections()

    def enqueue(self, channel: Channel, items: Sequence[JsonDict]) -> OutboxBatch:
        """Commit one batch of ``items``; returns it with its sequence and batch id."""
        payload = json.dumps(list(items), separators=(",", ":")).encode()
        with self._lock, _mapped("enqueue"), self._begun():
            batch = self._insert(channel, payload, len(items), self._clock())
            self._enforce_size(channel, len(items))
        return OutboxBatch(channel, batch[0], batch[1], batch[2], list(items))

    def _insert(self, channel: Channel, payload: bytes, count: int, created: float) -> tuple[int, str, float]:
        """One batch, in the caller's transaction; (sequence, batch id, created)."""
        batch_id = str(uuid.uuid4())
        (sequence,) = self._db.execute(
            "UPDATE channels SET next_sequence = next_sequence + 1 WHERE channel = ? RETURNING next_sequence - 1",
            (channel.value,),
        ).fetchone()
        self._db.execute(
            "INSERT INTO batches(channel, sequence, batch_id, created, item_count, payload) VALUES (?, ?, ?, ?, ?, ?)",
            (channel.value, sequence, batch_id, created, count, payload),
        )
        return int(sequence), batch_id, created

    def journal(self, channel: Channel, item: str) -> bool:
        """Commit one item (its compact JSON) to the journal without an fsync and without waiting.

        For the event loop: False (nothing done) while another commit holds
        SQLite's write lock; the caller then uses ``journal_many`` in a thread.
        """
        if not self._journal_lock.acquire(blocking=False):
            return False
        try:
            with _mapped("journal"):
                if self._journal is None:
                    raise sqlite3.OperationalError("the outbox is closed")
                try:
                    self._journal.execute(
                        "INSERT INTO journal(channel, created, item) VALUES (?, ?, ?)",
                        (channel.value, self._clock(), item),
                    )
                except sqlite3.OperationalError as error:
                    if _busy(error):
                        return False
                    raise
        finally:
            self._journal_lock.release()
        self._unsynced = True
        return True

    def journal_many(self, channel: Channel, items: Sequence[str]) -> None:
        """``journal`` for several items in one transaction, waiting for the write lock (run it in a thread)."""
        with self._journal_lock, _mapped("journal"):
            if self._journal is None:
                raise sqlite3.OperationalError("the outbox is closed")
            db = self._journal
            db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    now = self._clock()
                    db.executemany(
                        "INSERT INTO journal(channel, created, item) VALUES (?, ?, ?)",
                        [(channel.value, now, item) for item in items],
                    )
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            finally:
                db.execute("PRAGMA busy_timeout=0")
        self._unsynced = True

    def move_journal(self, channel: Channel, max_items: int, max_bytes: int) -> int:
        """Turn the channel's journaled items into batches (at most ``max_items`` and ``max_bytes`` encoded each),
        removing them from the journal in the same transaction; returns how many moved.

        Commits without an fsync (what it moves was not fsynced either; ``sync``
        is what bounds a power loss), so the write lock is held only briefly.
        """
        moved = 0
        with self._lock, _mapped("move_journal"):
            if self._db.execute("SELECT 1 FROM journal WHERE channel = ? LIMIT 1", (channel.value,)).fetchone() is None:
                return 0
            self._held.clear()
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                while True:
                    with self._begun():
                        rows = self._db.execute(
                            "SELECT id, created, item FROM journal WHERE channel = ? ORDER BY id LIMIT ?",
                            (channel.value, max_items * _MOVE_BATCHES),
                        ).fetchall()
                        for created, chunk in _chunks([(c, item) for _, c, item in rows], max_items, max_bytes):
                            self._insert(channel, ("[" + ",".join(chunk) + "]").encode(), len(chunk), created)
                        if rows:
                            self._db.execute(
                                "DELETE FROM journal WHERE channel = ? AND id <= ?", (channel.value, rows[-1][0])
                            )
                            self._enforce_size(channel, len(rows))
                    moved += len(rows)
                    if len(rows) < max_items * _MOVE_BATCHES:
                        break
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
        self._unsynced = True
        return moved

    def sync(self) -> bool:
        """Make the journal's commits (no fsync) survive a power loss; returns whether there were any.

        A passive checkpoint (it fsyncs the log, copies it into the database
        and fsyncs that) and an fsync of the log, from a connection of its
        own: commits go on meanwhile. Blocks on the disk: run it in a thread.
        """
        if not self._unsynced:
            return False
        with self._sync_lock, _mapped("sync"):
            if not self._unsynced:
                return False
            self._unsynced = False  # a commit from now on sets it again and waits for the next sync
            try:
                if self._syncer is None:
                    self._syncer = self._connect()
                self._syncer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                # The checkpoint fsyncs the log only when it copies something; a reader in another
                # process can hold it back. An fsync of the whole file covers every commit made so far.
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(f"{self._path}-wal", os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            except BaseException:
                self._unsynced = True
                raise
        return True

    def pending(self, channel: Channel, limit: int) -> list[OutboxBatch]:
        """The oldest ``limit`` batches of ``channel``, in sequence order."""
        with self._reading("pending"):
            rows = self._db.execute(
                "SELECT sequence, batch_id, created, payload FROM batches WHERE channel = ? ORDER BY sequence LIMIT ?",
                (channel.value, limit),
            ).fetchall()
        return [
            OutboxBatch(channel, int(seq), bid, float(created), json.loads(blob)) for seq, bid, created, blob in rows
        ]

    def held(self, channel: Channel, limit: int) -> list[tuple[int, str]]:
        """(sequence, batch id) of the oldest ``limit`` batches of ``channel``, in sequence order."""
        with self._reading("held"):
            rows = self._db.execute(
                "SELECT sequence, batch_id FROM batches WHERE channel = ? ORDER BY sequence LIMIT ?",
                (channel.value, limit),
            ).fetchall()
        return [(int(sequence), str(batch_id)) for sequence, batch_id in rows]

    def contains(self, channel: Channel, sequence: int) -> bool:
        """True while the batch is still queued."""
        with self._reading("contains"):
            row = self._db.execute(
                "SELECT 1 FROM batches WHERE channel = ? AND sequence = ?", (channel.value, sequence)
            ).fetchone()
        return row is not None

    def ack(self, channel: Channel, sequences: Sequence[int], checkpoint: int = 0) -> int:
        """Remove acknowledged batches (and any at or below ``checkpoint``); returns items removed."""
        removed, _ = self.ack_refusing(channel, sequences, checkpoint)
        return removed

    def ack_refusing(
        self, channel: Channel, sequences: Sequence[int], checkpoint: int = 0, refused: Refusals | None = None
    ) -> tuple[int, list[RefusedItem]]:
        """``ack``, moving the items central refused to the dead letters in the same transaction.

        ``refused`` maps an acknowledged batch's sequence to its ack's failures
        (item id, reason, message). Items are matched by their ``id``; returns
        (items removed from the queue, refused items now in the dead letters).
        """
        now = self._clock()
        moved: list[RefusedItem] = []
        with self._transaction("ack_refusing"):
            removed = 0
            for sequence in sequences:
                row = self._db.execute(
                    "DELETE FROM batches WHERE channel = ? AND sequence = ? "
                    "RETURNING item_count, batch_id, created, payload",
                    (channel.value, sequence),
                ).fetchone()
                removed += int(row[0]) if row else 0
                failures = (refused or {}).get(sequence)
                if row and failures:
                    moved += self._dead_letter_items(channel, sequence, row, failures)
            if checkpoint:
                rows = self._db.execute(
                    "DELETE FROM batches WHERE channel = ? AND sequence <= ? RETURNING item_count",
                    (channel.value, checkpoint),
                ).fetchall()
                removed += sum(int(r[0]) for r in rows)
            top = max([*sequences, checkpoint])
            self._db.execute(
                "UPDATE channels SET acked_sequence = MAX(acked_sequence, ?), last_sync = ? WHERE channel = ?",
                (top, now, channel.value),
            )
        return removed, moved

    def _dead_letter_items(
        self, channel: Channel, sequence: int, row: tuple[Any, ...], failures: Sequence[tuple[str, str, str]]
    ) -> list[RefusedItem]:
        """Dead-letter the items of one (just removed) batch that central refused, one row per reason."""
        _, batch_id, created, payload = row  # the removed batch: item_count, batch_id, created, payload
        why = {item_id: (reason, message) for item_id, reason, message in failures}
        by_reason: dict[str, list[tuple[JsonDict, str]]] = {}
        moved: list[RefusedItem] = []
        for item in json.loads(payload):
            item_id = str(item.get("id", "")) if isinstance(item, dict) else ""
            if item_id not in why:
                continue
            reason, message = why[item_id]
            by_reason.setdefault(reason, []).append((item, f"{item_id}: {message}"))
            moved.append(RefusedItem(sequence, batch_id, item_id, reason, message))
        now = self._clock()
        for reason, entries in by_reason.items():
            self._db.execute(
                "INSERT INTO dead_letters(channel, sequence, batch_id, reason, created, moved, item_count, payload,"
                " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    channel.value,
                    sequence,
                    batch_id,
                    REFUSED_PREFIX + reason,
                    created,
                    now,
                    len(entries),
                    json.dumps([item for item, _ in entries], separators=(",", ":")).encode(),
                    "; ".join(text for _, text in entries)[:8000],
                ),
            )
        if moved:
            self._db.execute(
                "UPDATE channels SET dead_letters = dead_letters + ? WHERE channel = ?", (len(moved), channel.value)
            )
        return moved

    def discard(self, channel: Channel, sequence: int, reason: str, detail: str = "") -> int:
        """Move one batch to the dead-letter table (a batch central refused); returns the items moved."""
        with self._transaction("discard"):
            return self._dead_letter(channel, "sequence = ?", (sequence,), reason, detail)

    def bury(self, channel: Channel, items: Sequence[JsonDict], reason: str) -> int:
        """Put items that never made it into a batch straight into the dead-letter table; returns how many."""
        if not items:
            return 0
        now = self._clock()
        with self._transaction("bury"):
            self._db.execute(
                "INSERT INTO dead_letters(channel, sequence, batch_id, reason, created, moved, item_count,"
                " payload) VALUES (?, 0, '', ?, ?, ?, ?, ?)",
                (channel.value, reason, now, now, len(items), json.dumps(list(items)).encode()),
            )
            self._db.execute(
                "UPDATE channels SET dead_letters = dead_letters + ? WHERE channel = ?", (len(items), channel.value)
            )
        _log.warning("outbox: %d %s items moved to dead letters: %s", len(items), channel.value, reason)
        return len(items)

    def expire(self) -> int:
        """Move batches older than their channel's TTL to the dead-letter table; returns items moved."""
        moved = 0
        with self._transaction("expire"):
            for channel, limits in self._limits.items():
                cutoff = self._clock() - limits.ttl_seconds
                moved += self._dead_letter(channel, "created < ?", (cutoff,), "expired")
        return moved

    def _enforce_size(self, channel: Channel, added: int) -> None:
        """Move the oldest batches out while the channel holds more items than allowed (``added`` just came in).

        The count is kept from one enqueue to the next, so a long queue (an
        edge offline for hours) is not summed on every commit; it is counted
        again after any other write, a rollback, or a commit by another
        connection (``PRAGMA data_version``: the ``aeterna`` CLI requeueing).
        """
        limit = self._limits[channel].max_items
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        if version != self._data_version:
            self._held.clear()
            self._data_version = version
        held = self._held.get(channel)
        if held is not None and held + added <= limit:
            self._held[channel] = held + added
            return
        while True:
            total, oldest = self._db.execute(
                "SELECT COALESCE(SUM(item_count), 0), MIN(sequence) FROM batches WHERE channel = ?", (channel.value,)
            ).fetchone()
            if total <= limit or oldest is None:
                self._held[channel] = int(total)
                return
            self._dead_letter(channel, "sequence = ?", (oldest,), "overflow")

    def _dead_letter(
        self, channel: Channel, where: str, params: tuple[object, ...], reason: str, detail: str = ""
    ) -> int:
        rows = self._db.execute(
            f"DELETE FROM batches WHERE channel = ? AND {where} "
            "RETURNING sequence, batch_id, created, item_count, payload",
            (channel.value, *params),
        ).fetchall()
        now = self._clock()
        items = 0
        for sequence, batch_id, created, count, payload in rows:
            self._db.execute(
                "INSERT INTO dead_letters(channel, sequence, batch_id, reason, created, moved, item_count, payload,"
                " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (channel.value, sequence, batch_id, reason, created, now, count, payload, detail[:8000]),
            )
            items += int(count)
            _log.warning(
                "outbox: %s batch %s (sequence %d, %d items) moved to dead letters: %s",
                channel.value,
                batch_id,
                sequence,
                count,
                reason,
            )
        if items:
            self._db.execute(
                "UPDATE channels SET dead_letters = dead_letters + ? WHERE channel = ?", (items, channel.value)
            )
        return items

    def stats(self) -> list[ChannelStats]:
        """Depth, dead letters and last sync of every channel."""
        with self._reading("stats"):
            rows = self._db.execute(
                "SELECT c.channel, COALESCE(SUM(b.item_count), 0)"
                " + (SELECT COUNT(*) FROM journal j WHERE j.channel = c.channel), COUNT(b.sequence), c.dead_letters, "
                "c.acked_sequence, c.last_sync FROM channels c LEFT JOIN batches b ON b.channel = c.channel "
                "GROUP BY c.channel ORDER BY c.channel"
            ).fetchall()
        return [
            ChannelStats(Channel(name), int(items), int(batches), int(dead), int(acked), last)
            for name, items, batches, dead, acked, last in rows
        ]

    def requeue_dead_letters(self, channel: Channel | None = None) -> int:
        """Put dead letters (of one channel, or all) back at the end of their queues; returns items requeued.

        Each gets a new sequence and a new batch id: the items are idempotent at
        central by their own ids, while a reused batch id with a new sequence
        would be refused as a different batch. This works while the edge runs:
        sequences are taken inside the same SQLite write transaction the edge uses.
        """
        where, params = ("WHERE channel = ?", (channel.value,)) if channel else ("", ())
        requeued = 0
        with self._transaction("requeue_dead_letters"):
            rows = self._db.execute(
                f"SELECT id, channel, item_count, payload FROM dead_letters {where} ORDER BY id", params
            ).fetchall()
            for row_id, name, count, payload in rows:
                (sequence,) = self._db.execute(
                    "SELECT next_sequence FROM channels WHERE channel = ?", (name,)
                ).fetchone()
                self._db.execute(
                    "INSERT INTO batches(channel, sequence, batch_id, created, item_count, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (name, sequence, str(uuid.uuid4()), self._clock(), count, payload),
                )
                self._db.execute("UPDATE channels SET next_sequence = ? WHERE channel = ?", (sequence + 1, name))
                self._db.execute("DELETE FROM dead_letters WHERE id = ?", (row_id,))
                requeued += int(count)
            for name in {row[1] for row in rows}:
                self._enforce_size(Channel(name), 0)
        if requeued:
            _log.warning("outbox: %d dead-lettered items requeued by an operator", requeued)
        return requeued

    def dead_letter_counts(self) -> list[tuple[Channel, str, int]]:
        """(channel, cause, items) over the whole dead-letter store, for metrics."""
        with self._reading("dead_letter_counts"):
            rows = self._db.execute(
                "SELECT channel, reason, SUM(item_count) FROM dead_letters GROUP BY channel, reason"
            ).fetchall()
        return [(Channel(channel), str(reason), int(items)) for channel, reason, items in rows]

    def dead_letters(self, channel: Channel) -> list[tuple[int, str, str, int]]:
        """(sequence, batch_id, reason, item_count) of the channel's dead letters, oldest first."""
        with self._reading("dead_letters"):
            rows = self._db.execute(
                "SELECT sequence, batch_id, reason, item_count FROM dead_letters WHERE channel = ? ORDER BY id",
                (channel.value,),
            ).fetchall()
        return [(int(s), str(b), str(r), int(c)) for s, b, r, c in rows]

    def dead_letter_rows(self, channel: Channel, batch_id: str | None = None) -> list[DeadLetter]:
        """The channel's dead letters (of one batch, when given) with their items and central's message."""
        where, params = ("AND batch_id = ?", (batch_id,)) if batch_id is not None else ("", ())
        with self._reading("dead_letter_rows"):
            rows = self._db.execute(
                f"SELECT sequence, batch_id, created, payload, reason, detail FROM dead_letters WHERE channel = ?"
                f" {where} ORDER BY id",
                (channel.value, *params),
            ).fetchall()
        return [
            DeadLetter(channel, int(q), str(b), float(c), list(json.loads(p)), str(r), str(d))
            for q, b, c, p, r, d in rows
        ]


def _chunks(items: list[tuple[float, str]], max_items: int, max_bytes: int) -> list[tuple[float, list[str]]]:
    """Journaled (created, encoded item) cut into batches: (created of the first, items), each of at most
    ``max_items``, ``max_bytes`` encoded and ``_BATCH_WINDOW`` seconds of journaling (so TTL expiry stays per
    batch what it is per item); an oversized item goes alone."""
    chunks: list[tuple[float, list[str]]] = []
    current: list[str] = []
    first = used = 0.0
    for created, item in items:
        if current and (len(current) >= max_items or used + len(item) > max_bytes or created - first > _BATCH_WINDOW):
            chunks.append((first, current))
            current, used = [], 0.0
        if not current:
            first = created
        current.append(item)
        used += len(item)
    if current:
        chunks.append((first, current))
    return chunks


__all__ = [
    "REFUSED_PREFIX",
    "UNAVAILABLE_MESSAGE",
    "ChannelLimits",
    "ChannelStats",
    "DeadLetter",
    "RefusedItem",
    "SqliteOutbox",
]
