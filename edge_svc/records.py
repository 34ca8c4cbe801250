"""The plain data the edge keeps, independent of protobuf and of any store.

Times are integer nanoseconds since the epoch so that a value survives a round
trip through JSON and protobuf unchanged (the session checksum depends on it).
Every record converts to and from a JSON-ready dict, which is how the cache and
the outbox store it.

How many shapes a session takes on its way to central
-----------------------------------------------------

Before (issue 13, item 8) it changed shape six times between the handler and
the wire::

    proto --codec--> SessionRecord --to_json--> JSON document in Redis (+ pending-change hash)
      --collect: from_json--> SessionRecord, wrapped in a SessionChange --to_json--> JSON item in SQLite
      --send: SessionChange.from_json--> SessionChange(SessionRecord) --codec--> proto (SyncSessionsRequest)

Now it has three shapes (proto, record, JSON), and its JSON is one format::

    proto --codec--> SessionRecord --to_json--> JSON document in Redis (+ pending-change hash)
      --collect: the same document, cut to what changed (memory._change)--> JSON item in SQLite
      --send: codec.session_changes_to_proto--> proto (SyncSessionsRequest)

The record lives where the edge's logic needs one (the handler, ``EdgeNode``,
``SessionMemory.put/append/get``); from Redis on, a session stays the JSON it
was written as. A *session change*, the outbox item of the sessions channel,
is that document plus ``kind`` (``ChangeKind``, see ``change_kind``):
``replace`` carries it whole; ``append`` drops ``state``, keeps only the turns
not yet sent, and adds ``patch`` (the state keys set since) and, for a copy
started offline, ``partial``. Either kind carries ``trace`` (the writes' W3C
trace contexts, ``edge_svc.trace_context``) when the writes were traced, and
only then. The stored bytes, in Redis and in SQLite, are
those the earlier code wrote, and so are the wire messages
(``tests/edge/test_records_session_formats.py``). At central a session is
proto -> record -> rows.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

JsonDict = dict[str, Any]


def now_ns() -> int:
    """The current wall-clock time in nanoseconds."""
    return time.time_ns()


class Channel(StrEnum):
    """The independent sync flows from edge to central; each has its own sequence."""

    SESSIONS = "sessions"
    VECTORS = "vectors"
    DECISIONS = "decisions"
    EPISODES = "episodes"


def encode_floats(values: list[float]) -> str:
    """Pack floats as base64 little-endian float32 (a quarter of their JSON size)."""
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def decode_floats(text: str) -> list[float]:
    """Inverse of ``encode_floats``."""
    return [float(v) for v in np.frombuffer(base64.b64decode(text), dtype="<f4")]


def all_finite(values: list[float]) -> bool:
    """True when no component is NaN or infinite."""
    return all(math.isfinite(v) for v in values)


@dataclass
class Message:
    """One turn of a conversation; ``message_id`` makes it count once at central, however often it is sent."""

    role: str
    content: str
    create_time: int = 0
    metadata: JsonDict = field(default_factory=dict)
    message_id: str = ""

    def to_json(self) -> JsonDict:
        """A JSON-ready dict."""
        return {
            "id": self.message_id,
            "role": self.role,
            "content": self.content,
            "t": self.create_time,
            "meta": self.metadata,
        }

    @classmethod
    def from_json(cls, data: JsonDict) -> Message:
        """Inverse of ``to_json``."""
        return cls(
            data["role"], data["content"], int(data.get("t", 0)), dict(data.get("meta") or {}), data.get("id", "")
        )


@dataclass
class SessionRecord:
    """One session as held in session memory."""

    session_id: str
    user_id: str = ""
    messages: list[Message] = field(default_factory=list)
    state: JsonDict = field(default_factory=dict)
    last_activity: int = 0
    tenant_id: str = ""

    def to_json(self) -> JsonDict:
        """A JSON-ready dict."""
        return {
            "id": self.session_id,
            "user": self.user_id,
            "messages": [m.to_json() for m in self.messages],
            "state": self.state,
            "t": self.last_activity,
            "tenant": self.tenant_id,
        }

    @classmethod
    def from_json(cls, data: JsonDict) -> SessionRecord:
        """Inverse of ``to_json``."""
        return cls(
            session_id=data["id"],
            user_id=data.get("user", ""),
            messages=[Message.from_json(m) for m in data.get("messages", [])],
            state=dict(data.get("state") or {}),
            last_activity=int(data.get("t", 0)),
            tenant_id=data.get("tenant", ""),
        )


class ChangeKind(StrEnum):
    """How a session changed since it was last synced, which decides how central applies it."""

    REPLACE = "replace"
    """A whole session was written (PutSession): central replaces its copy when this one is newer."""
    APPEND = "append"
    """Only turns were appended and state keys set: central merges them into its copy."""


def change_kind(item: JsonDict) -> ChangeKind:
    """The kind of a session change (an outbox item); an item without one (an older outbox) is a whole session."""
    return ChangeKind(item.get("kind", ChangeKind.REPLACE.value))


@dataclass
class VectorRecord:
    """One embedding with its payload."""

    vector_id: str
    values: list[float]
    region: str = ""
    tenant_id: str = ""
    payload: JsonDict = field(default_factory=dict)
    update_time: int = 0

    def to_json(self) -> JsonDict:
        """A JSON-ready dict (values packed as float32)."""
        return {
            "id": self.vector_id,
            "v": encode_floats(self.values),
            "region": self.region,
            "tenant": self.tenant_id,
            "payload": self.payload,
            "t": self.update_time,
        }

    @classmethod
    def from_json(cls, data: JsonDict) -> VectorRecord:
        """Inverse of ``to_json``."""
        return cls(
            vector_id=data["id"],
            values=decode_floats(data["v"]),
            region=data.get("region", ""),
            tenant_id=data.get("tenant", ""),
            payload=dict(data.get("payload") or {}),
            update_time=int(data.get("t", 0)),
        )


@dataclass
class ScoredRecord:
    """A search hit and where it came from."""

    vector: VectorRecord
    score: float
    source: str = "local"


@dataclass
class DecisionRecord:
    """One authorization decision as recorded for replay to central."""

    decision_id: str
    decide_time: int
    principal: str
    action: str
    resource: str
    allowed: bool
    policy_version: int
    metadata: JsonDict = field(default_factory=dict)
    offline: bool = False

    def to_json(self) -> JsonDict:
        """A JSON-ready dict."""
        return {
            "id": self.decision_id,
            "t": self.decide_time,
            "p": self.principal,
            "a": self.action,
            "r": self.resource,
            "allow": self.allowed,
            "v": self.policy_version,
            "meta": self.metadata,
            "offline": self.offline,
        }

    @classmethod
    def from_json(cls, data: JsonDict) -> DecisionRecord:
        """Inverse of ``to_json``."""
        return cls(
            decision_id=data["id"],
            decide_time=int(data["t"]),
            principal=data["p"],
            action=data["a"],
            resource=data["r"],
            allowed=bool(data["allow"]),
            policy_version=int(data["v"]),
            metadata=dict(data.get("meta") or {}),
            offline=bool(data.get("offline", False)),
        )


@dataclass
class EpisodeRecord:
    """One entry of episodic memory on its way to central."""

    episode_id: str
    session_id: str = ""
    content: str = ""
    embedding: list[float] = field(default_factory=list)
    metadata: JsonDict = field(default_factory=dict)
    occur_time: int = 0
    tenant_id: str = ""

    def to_json(self) -> JsonDict:
        """A JSON-ready dict."""
        return {
            "id": self.episode_id,
            "session": self.session_id,
            "content": self.content,
            "emb": encode_floats(self.embedding) if self.embedding else "",
            "meta": self.metadata,
            "t": self.occur_time,
            "tenant": self.tenant_id,
        }

    @classmethod
    def from_json(cls, data: JsonDict) -> EpisodeRecord:
        """Inverse of ``to_json``."""
        return cls(
            episode_id=data["id"],
            session_id=data.get("session", ""),
            content=data.get("content", ""),
            embedding=decode_floats(data["emb"]) if data.get("emb") else [],
            metadata=dict(data.get("meta") or {}),
            occur_time=int(data.get("t", 0)),
            tenant_id=data.get("tenant", ""),
        )


@dataclass(frozen=True)
class PolicyBundleRecord:
    """One immutable, versioned set of Cedar policies."""

    version: int
    policies: tuple[tuple[str, str], ...]
    entities_json: str = "[]"
    schema_json: str = ""
    checksum: str = ""
    publish_time: int = 0

    def to_json(self) -> JsonDict:
        """A JSON-ready dict."""
        return {
            "version": self.version,
            "policies": [[pid, text] for pid, text in self.policies],
            "entities": self.entities_json,
            "schema": self.schema_json,
            "checksum": self.checksum,
            "t": self.publish_time,
        }

    @classmethod
    def from_json(cls, data: JsonDict) -> PolicyBundleRecord:
        """Inverse of ``to_json``."""
        return cls(
            version=int(data["version"]),
            policies=tuple((str(p[0]), str(p[1])) for p in data["policies"]),
            entities_json=data.get("entities") or "[]",
            schema_json=data.get("schema", ""),
            checksum=data.get("checksum", ""),
            publish_time=int(data.get("t", 0)),
        )


@dataclass(frozen=True)
class OutboxBatch:
    """One batch waiting in the outbox: its channel, sequence, id and items (JSON dicts)."""

    channel: Channel
    sequence: int
    batch_id: str
    created: float
    items: list[JsonDict]


@dataclass(frozen=True)
class Ack:
    """Central's acknowledgement of one batch, reduced to what the edge acts on."""

    sequence: int
    batch_id: str
    processed: int
    failed: int
    checkpoint: int
    failures: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Checkpoints:
    """Central's answer to a reconnecting edge."""

    sequences: Mapping[Channel, int]
    """Per channel, the highest contiguous sequence central applied."""
    acks: Mapping[Channel, Sequence[Ack]] = field(default_factory=dict)
    """The stored acks of the held batches the edge named that central had applied (their acks were lost)."""
