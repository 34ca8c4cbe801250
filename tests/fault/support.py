"""Shared pieces of the fault suite: trial counts, the one-line summaries, clients and the invariant check.

Every scenario prints one line ``FAULT <scenario> trials=.. items=.. lost=0 duplicated=0 ...``
(also collected into the terminal summary) so ``tests/fault/README.md`` quotes real output.
"""

from __future__ import annotations

import hashlib
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aeterna.edge.v1 import edge_pb2
from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2

from tests.support.clients import Client, make_session
from tests.support.postgres import TEST_VECTOR_DIMENSION

SUMMARIES: list[str] = []
"""Every ``FAULT``/``FUZZ`` line printed in this session (shown again in the terminal summary)."""

ALLOW_ALL = "permit(principal, action, resource);"
DIMENSION = TEST_VECTOR_DIMENSION


def soak(config: pytest.Config) -> bool:
    """True when the suite runs in soak mode (``--soak``)."""
    return bool(config.getoption("--soak"))


def trials(config: pytest.Config, ci: int, soak_count: int) -> int:
    """How many trials a scenario runs: ``ci`` in CI mode, ``soak_count`` with ``--soak``."""
    return soak_count if soak(config) else ci


def report(kind: str, scenario: str, **figures: object) -> str:
    """Print (and remember) one summary line."""
    line = f"{kind} {scenario} " + " ".join(f"{key}={value}" for key, value in figures.items())
    SUMMARIES.append(line)
    print(line, flush=True)
    return line


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def central_document(database_url: str, data_dir: Path, port: int = 0, **extra: Any) -> dict[str, Any]:
    """A central process on the test's PostgreSQL database (the ``postgres_server`` fixture's server)."""
    document: dict[str, Any] = {
        "deploymentMode": "central",
        "postgresql": {"url": database_url},
        "central": {"dataDir": str(data_dir)},
        "sync": {"listenPort": port},
        "telemetry": {"metricsPort": 0, "logFormat": "text"},
        "vectorDatabase": {"dimension": DIMENSION},
    }
    document.update(extra)
    return document


def edge_document(data_dir: Path, central_port: int, agent_id: str, **overrides: Any) -> dict[str, Any]:
    """An edge with fast health checks and sync intervals; ``overrides`` use dotted keys."""
    document: dict[str, Any] = {
        "deploymentMode": "edge",
        "edge": {"agentId": agent_id, "region": f"region-{agent_id}", "dataDir": str(data_dir), "listenPort": 0},
        "sync": {
            "centralServer": {"url": f"http://127.0.0.1:{central_port}", "timeout": "3s", "maxRetries": 2},
            "sessionMemory": {"interval": "200ms"},
            "episodicMemory": {"vectorSync": {"interval": "200ms", "batchSize": 5}},
            "batch": {"maxSize": 5, "flushInterval": "1s"},
        },
        "centralServer": {"healthCheck": {"interval": "200ms", "timeout": "500ms", "failureThreshold": 2}},
        "vectorDatabase": {"dimension": DIMENSION},
        "telemetry": {"metricsPort": 0, "logFormat": "text"},
    }
    for dotted, value in overrides.items():
        target = document
        *parents, leaf = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = value
    return document


@dataclass
class Acked:
    """What the edge acknowledged to an agent: the ledger the invariant is checked against."""

    sessions: dict[str, str] = field(default_factory=dict)
    """session id -> checksum of the last acknowledged write."""
    vectors: dict[str, list[float]] = field(default_factory=dict)
    decisions: set[str] = field(default_factory=set)
    session_write: dict[str, int] = field(default_factory=dict)
    """session id -> number of the last acknowledged write (the session's text ends with it)."""
    prefix: str = ""

    @property
    def items(self) -> int:
        return len(self.sessions) + len(self.vectors) + len(self.decisions)


def make_vector(vector_id: str, rng: random.Random) -> memory_pb2.Vector:
    values = [round(rng.uniform(0.1, 1.0), 3) for _ in range(DIMENSION)]
    return memory_pb2.Vector(vector_id=vector_id, values=values)


class Writer:
    """An agent writing to one edge in a loop; records only what the edge acknowledged."""

    def __init__(self, prefix: str, rng: random.Random) -> None:
        self.prefix = prefix
        self.rng = rng
        self.acked = Acked(prefix=prefix)
        self.counter = 0

    async def step(self, client: Client) -> None:
        """One write of a random kind; added to the ledger only once answered."""
        self.counter += 1
        n = self.counter
        kind = self.rng.random()
        if kind < 0.4:
            sid = f"{self.prefix}-s{self.rng.randrange(max(n // 3, 1))}"
            put = await client.edge.PutSession(
                edge_pb2.PutSessionRequest(session=make_session(sid, f"{self.prefix} write {n}")), timeout=10
            )
            self.acked.sessions[sid] = put.session.checksum
            self.acked.session_write[sid] = n
        elif kind < 0.7:
            vector = make_vector(f"{self.prefix}-v{n}", self.rng)
            await client.edge.UpsertVectors(edge_pb2.UpsertVectorsRequest(vectors=[vector]), timeout=10)
            self.acked.vectors[vector.vector_id] = list(vector.values)
        else:
            request = edge_pb2.AuthorizeRequest(principal='User::"a"', action='Action::"read"', resource='Doc::"d"')
            decision = await client.edge.Authorize(request, timeout=10)
            self.acked.decisions.add(decision.decision_id)


@dataclass
class Verdict:
    lost: list[str]
    duplicated: list[str]
    wrong: list[str]


def check_central(conninfo: str, agent_id: str, acked: Acked) -> Verdict:
    """Compare the ledger with central's PostgreSQL, read directly."""
    lost: list[str] = []
    duplicated: list[str] = []
    wrong: list[str] = []
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT session_id, checksum, data, count(*) OVER (PARTITION BY session_id) FROM session_memory "
            "WHERE session_id = ANY(%s)",
            (list(acked.sessions),),
        ).fetchall()
        found = {str(r[0]): (str(r[1]), bytes(r[2])) for r in rows}
        duplicated += [str(r[0]) for r in rows if r[3] > 1]
        for sid, checksum in acked.sessions.items():
            if sid not in found:
                lost.append(sid)
                continue
            stored_checksum, data = found[sid]
            if stored_checksum == checksum:
                continue
            # A write that was in flight when a process died may have been applied without its answer
            # arriving: central may hold that later write, never an older one than the acknowledged.
            stored = memory_pb2.Session.FromString(data)
            text = stored.messages[0].content if stored.messages else ""
            later = int(text.rsplit(" ", 1)[1]) if text.startswith(acked.prefix) else -1
            if later <= acked.session_write[sid]:
                wrong.append(f"{sid}: central has {text!r} ({stored_checksum}), acked write {acked.session_write[sid]}")
        rows = conn.execute(
            "SELECT vector_id, embedding::text FROM vectors WHERE vector_id = ANY(%s)", (list(acked.vectors),)
        ).fetchall()
        seen: dict[str, str] = {}
        for vid, text in rows:
            if vid in seen:
                duplicated.append(str(vid))
            seen[str(vid)] = str(text)
        for vid, values in acked.vectors.items():
            if vid not in seen:
                lost.append(vid)
                continue
            embedding = [float(x) for x in seen[vid].strip("[]").split(",")]
            if any(abs(a - b) > 1e-5 for a, b in zip(embedding, values, strict=True)):
                wrong.append(f"vector {vid}: {embedding} != {values}")
        rows = conn.execute(
            "SELECT decision_id, agent_id FROM decisions WHERE decision_id = ANY(%s)", (list(acked.decisions),)
        ).fetchall()
        got = [str(r[0]) for r in rows]
        duplicated += sorted({d for d in got if got.count(d) > 1})
        lost += sorted(acked.decisions - set(got))
        wrong += [f"decision {r[0]} owned by {r[1]}" for r in rows if r[1] != agent_id]
    return Verdict(lost, duplicated, wrong)


def digest(values: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(values)).encode()).hexdigest()[:12]


async def checkpoints_match(edge: Client, central: Client) -> tuple[bool, dict[int, tuple[int, int]]]:
    """Each channel's acked sequence at the edge against central's GetSyncCheckpoint for that edge's incarnation."""
    status = await edge.status()
    request = sync_pb2.GetSyncCheckpointRequest(incarnation_id=status.incarnation_id)
    reply = await central.sync.GetSyncCheckpoint(request, metadata=central.metadata)
    at_central: dict[int, int] = {c.channel: int(c.sequence) for c in reply.checkpoints}
    pairs: dict[int, tuple[int, int]] = {
        q.channel: (int(q.acked_sequence), at_central.get(q.channel, 0)) for q in status.queues
    }
    return all(a == b for a, b in pairs.values()), pairs


async def drained(edge: Client) -> bool:
    status = await edge.status()
    return status.link_state == edge_pb2.LINK_STATE_ONLINE and all(q.pending_items == 0 for q in status.queues)
