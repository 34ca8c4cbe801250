"""A model-based loss hunt (issue 12): Hypothesis stateful testing against a real edge and a real central.

One central process on a fresh database of the session's PostgreSQL and, for every example, a fresh edge
process (its own agent id and data dir) reaching it through ``proxy.FaultProxy``, the edge's own (owned)
Redis with small memory bounds
(``cache.layers.working.maxSize`` 4Mi, ``cache.layers.session.maxSize`` 6Mi). A
``RuleBasedStateMachine`` drives random interleavings of agent calls and faults:

* calls: ``PutSession`` (whole replace, sometimes a ~512 KiB state), ``AppendSessionMessages`` (one
  caller), a *burst* of 3-10 concurrent appenders on one session (each on its own gRPC channel),
  ``Authorize``, ``UpsertVectors`` (ids reused: the newest version must win), ``AppendEpisode``,
  ``FlushSync``, idling while the background sync runs;
* pressure: working-memory floods (256 KiB values, far past its bound: it may evict) and session
  floods (~512 KiB sessions past the session bound: the edge must refuse with RESOURCE_EXHAUSTED);
* faults: link cut / restore (the proxy refuses + RST, optionally mid-flush), edge SIGKILL + restart
  on the same data dir (optionally mid-flush, or in the middle of a burst, whose unanswered appenders
  then retry with the same message ids, as an agent would), a restart of the edge's cache (SIGKILL of
  the owned redis-server children found through /proc; the test restarts the edge only if it does
  not recover by itself within 3 s), and re-provisioning (drain, stop, delete the data dir, start
  again with the same agent id).

The model (``hunt_model``) holds only what was acknowledged. At the end of every example the link is
restored, the edge flushed until its outbox is empty (bounded), and central's PostgreSQL is compared
with the model exactly: every acknowledged session with exactly its turns (by message id: none lost,
none twice, order kept; a burst's calls in any order) and its state, every decision, vector (newest
version) and episode. Losses are reported precisely and fail the example; Hypothesis then prints the
failing sequence of steps (shrunk with ``AETERNA_HUNT_SHRINK=1`` or ``--soak``).

Knobs (environment):

* ``AETERNA_HUNT_SEED``: the Hypothesis seed (default ``DEFAULT_SEED``);
* ``AETERNA_HUNT_EXAMPLES`` / ``AETERNA_HUNT_STEPS``: override the mode's sizes;
* ``AETERNA_HUNT_SHRINK``: 1 to shrink a failure (default: 0 in CI mode, 1 with ``--soak``);
* ``AETERNA_HUNT_FAULTS``: comma list out of ``ALL_FAULTS`` (default all; ``none`` for calls only);
* ``AETERNA_HUNT_SKIP``: ``burst`` leaves out concurrent appenders (to isolate another finding);
* ``AETERNA_HUNT_CACHE``: ``owned`` (default) or ``external``, a redis-server the test owns
  (noeviction, AOF fsync always, ``cache.url``) that the test kills and starts again;
* ``AETERNA_HUNT_SESSION_TTL``: ``cache.layers.session.ttl`` of the edge (default 5s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import pytest
import redis
from aeterna.edge.v1 import edge_pb2
from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2
from google.protobuf import duration_pb2
from grpc import StatusCode, aio
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from central_svc.store.embedded_postgres import EmbeddedPostgres
from tests.fault.hunt_model import (
    AMBIGUOUS,
    OK,
    REFUSED,
    CentralRows,
    HuntModel,
    SessionModel,
    Verdict,
    check_session,
    classify,
    compare,
    match_groups,
    read_central,
)
from tests.fault.proxy import FaultProxy
from tests.fault.support import ALLOW_ALL, DIMENSION, central_document, edge_document, free_port, report, soak
from tests.support.clients import Client
from tests.support.redis import answers
from tests.support.services import ServiceFactory, ServiceProcess

T = TypeVar("T")

DEFAULT_SEED = 20240612
SESSIONS = 4
"""Session ids per example (few, so that calls and faults pile up on the same sessions)."""
VECTOR_IDS = 6
FLOOD_VALUE = "w" * (256 * 1024)
BIG_STATE = "b" * (512 * 1024)
RPC_TIMEOUT = 30.0
ALL_FAULTS = ("kill", "burstkill", "cut", "cache", "reprovision", "flood", "sessionflood")
FAULTS = frozenset(
    f.strip() for f in os.environ.get("AETERNA_HUNT_FAULTS", ",".join(ALL_FAULTS)).split(",") if f.strip()
)
FAULT_BUDGET = {"kill": 2, "burstkill": 2, "cut": 3, "cache": 2, "reprovision": 1, "flood": 3, "sessionflood": 2}
"""Faults of each kind per example (times ``BUDGET_SCALE``): bounds an example's cost, and keeps an example
whose rules Hypothesis narrowed to one fault (swarm testing) from spending the whole run on it."""
BUDGET_SCALE = [1]
"""1 in CI mode, 4 with ``--soak`` (set by the test)."""
CACHE_MODE = os.environ.get("AETERNA_HUNT_CACHE", "owned")
SKIP = frozenset(s.strip() for s in os.environ.get("AETERNA_HUNT_SKIP", "").split(",") if s.strip())
"""Call rules to leave out (e.g. ``burst``), to isolate a finding from another one already known."""
SESSION_TTL = os.environ.get("AETERNA_HUNT_SESSION_TTL", "5s")

EDGE_SETTINGS: dict[str, object] = {
    "cache.layers.working.maxSize": "4Mi",
    "cache.layers.session.maxSize": "6Mi",
    "cache.layers.session.ttl": SESSION_TTL,
    "sync.batch.maxSize": 5,
    "sync.centralServer.timeout": "2s",
}
"""What the hunt's edge runs with, on top of the fault suite's fast ``edge_document``."""


# --- figures ------------------------------------------------------------------------------------


@dataclass
class HuntStats:
    """Everything the hunt tried, over all examples (shrinking and the final replay included)."""

    examples: int = 0
    steps: int = 0
    failing_examples: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    """"<rpc>:<outcome>" -> count."""
    faults: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    """"<rpc> <code>: <details>" of every call that did not end OK (shown at the end)."""
    acked: Counter[str] = field(default_factory=Counter)
    """What the final checks covered: sessions, turns, decisions, vectors, episodes."""
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    uncertain: int = 0
    notes: int = 0
    flood_bytes: int = 0
    first_failure: str = ""

    @property
    def operations(self) -> int:
        return sum(self.calls.values())


STATS = HuntStats()


def _reset_stats() -> None:
    global STATS  # noqa: PLW0603 - one run's figures, read by the machine and the summary
    STATS = HuntStats()


# --- an event loop in a thread: the proxy forwards between steps too --------------------------


class LoopThread:
    """An asyncio loop running in its own thread; the (synchronous) state machine submits coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hunt-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


# --- the edge's cache --------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class ExternalRedis:
    """A redis-server the test owns (``AETERNA_HUNT_CACHE=external``): noeviction, AOF fsync always."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.directory)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--maxmemory", "32mb"]
        args += ["--maxmemory-policy", "noeviction"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not answers(self.url, 1000):
            raise AssertionError("the test's redis-server did not answer")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()


# --- the rig: central, proxy, edge ------------------------------------------------------------


class HuntRig:
    """Central and the proxy, shared by every example; the edge of the current example."""

    def __init__(self, services: ServiceFactory, tmp_path: Path, database_url: str, conninfo: str) -> None:
        self.services = services
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.conninfo = conninfo
        self.agent = "edge-hunt"
        self.data_dir = tmp_path / "edge-data"
        self.loop = LoopThread()
        self.central: ServiceProcess | None = None
        self.edge: ServiceProcess | None = None
        self.proxy: FaultProxy | None = None
        self.client: Client | None = None
        self.central_client: Client | None = None
        self.cache: ExternalRedis | None = None
        self.run_id = uuid.uuid4().hex[:6]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 300) -> T:
        return self.loop.run(coro, timeout)

    def start(self) -> None:
        document = central_document(self.database_url, self.tmp_path / "central-data")
        self.central = self.services.make("central", "central", document).start()
        central = self.central

        async def connect() -> None:
            self.proxy = await FaultProxy(central.port).start()
            self.central_client = Client(central.target, self.agent)
            await self.central_client.publish(ALLOW_ALL)

        self.run(connect())
        if CACHE_MODE == "external":
            self.cache = ExternalRedis(self.tmp_path / "external-redis")
            self.cache.start()

    def fresh_edge(self, agent: str) -> None:
        """Replace the edge by a new one with its own agent id and data dir, online with the policy bundle.

        Every example starts on a fresh edge: nothing an earlier example did (a re-provisioning, a
        checkpoint, a full cache) can cause a failure that the printed sequence of steps does not show.
        """
        assert self.proxy is not None
        if self.edge is not None:
            self.edge.stop()
            self.edge.kill()
            shutil.rmtree(self.data_dir, ignore_errors=True)  # its logs stay beside its config
        self.restore()
        self.agent = agent
        self.data_dir = self.tmp_path / "edge-data" / agent
        overrides = dict(EDGE_SETTINGS)
        if self.cache is not None:
            self.cache.flush()
            overrides["cache.url"] = self.cache.url
        document = edge_document(self.data_dir, self.proxy.port, agent, **overrides)
        self.edge = self.services.make("edge", agent, document).start()
        self.run(self._new_client())
        if not self.run(self.wait_online(need_bundle=True, limit=60)):
            raise AssertionError(f"the fresh edge {agent} did not come online with the policy bundle within 60 s")

    async def _new_client(self) -> None:
        if self.client is not None:
            await self.client.close()
        assert self.edge is not None
        self.client = Client(self.edge.target)

    @property
    def edge_client(self) -> Client:
        assert self.client is not None
        return self.client

    async def wait_online(self, *, need_bundle: bool = False, limit: float = 30) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with contextlib.suppress(aio.AioRpcError):
                status = await self.edge_client.status()
                if status.link_state == edge_pb2.LINK_STATE_ONLINE and (status.policy_version > 0 or not need_bundle):
                    return True
            await asyncio.sleep(0.1)
        return False

    def kill_edge(self) -> None:
        assert self.edge is not None
        self.edge.kill()

    def start_edge(self) -> None:
        """Start the edge again (same config and data dir) and reconnect the client."""
        assert self.edge is not None
        if not self.edge.running:
            self.edge.start()
        self.run(self._new_client())

    def restart_edge(self) -> None:
        self.kill_edge()
        self.start_edge()

    def cut_now(self) -> None:
        """On the loop thread: new connections are refused, open ones reset."""
        assert self.proxy is not None
        self.proxy.mode = "refuse"
        self.proxy.cut()

    def cut(self) -> None:
        async def go() -> None:
            self.cut_now()

        self.run(go())

    def restore(self) -> None:
        async def go() -> None:
            assert self.proxy is not None
            self.proxy.mode = "pass"

        self.run(go())

    async def drain(self, limit: float) -> tuple[bool, str]:
        """FlushSync until nothing is pending and the edge is online; (drained, last status text)."""
        deadline = time.monotonic() + limit
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                reply = await self.edge_client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=20)
                status = await self.edge_client.status()
                queues = {sync_pb2.SyncChannel.Name(q.channel): q.pending_items for q in status.queues}
                last = (
                    f"link={edge_pb2.LinkState.Name(status.link_state)} flush_pending={reply.items_pending} "
                    f"queues={queues} dead_letters={sum(q.dead_letters for q in status.queues)}"
                )
                if (
                    reply.items_pending == 0
                    and status.link_state == edge_pb2.LINK_STATE_ONLINE
                    and all(q.pending_items == 0 for q in status.queues)
                ):
                    return True, last
            except aio.AioRpcError as error:
                last = f"{error.code().name}: {error.details()}"
            await asyncio.sleep(0.2)
        return False, last

    def owned_redis_pids(self) -> list[int]:
        assert self.edge is not None
        assert self.edge.process is not None
        pids = _descendants(self.edge.process.pid)
        return [pid for pid in pids if _comm(pid) == "redis-server" and _alive(pid)]

    def close(self) -> None:
        async def go() -> None:
            for client in (self.client, self.central_client):
                if client is not None:
                    await client.close()
            if self.proxy is not None:
                await self.proxy.close()

        with contextlib.suppress(Exception):
            self.run(go(), 60)
        self.loop.close()
        if self.cache is not None:
            self.cache.kill()


# --- the state machine --------------------------------------------------------------------------


def _turns(ids: list[str]) -> list[memory_pb2.SessionMessage]:
    return [
        memory_pb2.SessionMessage(role="user" if i % 2 == 0 else "assistant", content=turn, message_id=turn)
        for i, turn in enumerate(ids)
    ]


class LossHunt(RuleBasedStateMachine):
    """One example: a fresh edge (own agent id and data dir) beside the shared central, a fresh model."""

    rig: ClassVar[HuntRig | None] = None
    example_counter: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        rig = type(self).rig
        assert rig is not None, "LossHunt.rig is set by the test before running"
        self.hunt = rig
        type(self).example_counter += 1
        self.example = type(self).example_counter
        self.prefix = f"h{rig.run_id}-e{self.example}-"
        rig.fresh_edge(f"hunt-{rig.run_id}-e{self.example}")
        self.model = HuntModel(self.prefix, rig.agent)
        self.link_cut = False
        self.counter = 0
        self.steps = 0
        self.fault_count: Counter[str] = Counter()
        self.rng = random.Random(self.example)
        self.log: list[str] = []
        STATS.examples += 1

    # -- helpers --

    def allowed(self, fault: str) -> bool:
        """A fault kind is enabled (``AETERNA_HUNT_FAULTS``) and this example has not used up its budget."""
        return fault in FAULTS and self.fault_count[fault] < FAULT_BUDGET[fault] * BUDGET_SCALE[0]

    def next_id(self, kind: str) -> str:
        self.counter += 1
        return f"{self.prefix}{kind}{self.counter}"

    def sid(self, index: int) -> str:
        return f"{self.prefix}s{index}"

    def note(self, text: str) -> None:
        self.log.append(text)

    def call(self, rpc: str, request: Any, *, retry: bool = True, name: str = "") -> tuple[str, Any]:
        """One RPC to the (current) edge: (outcome, reply or error). An ambiguous outcome is retried with
        the same request (as an agent would) up to twice; it stays ambiguous unless a retry is acknowledged."""
        name = name or rpc

        async def once() -> tuple[str, Any]:
            method = getattr(self.hunt.edge_client.edge, rpc)
            try:
                return OK, await method(request, timeout=RPC_TIMEOUT)
            except aio.AioRpcError as error:
                return classify(error), error

        outcome, result = self.hunt.run(once())
        attempts = 0
        while outcome == AMBIGUOUS and retry and attempts < 2:
            attempts += 1
            time.sleep(0.3)
            second, result = self.hunt.run(once())
            outcome = OK if second == OK else AMBIGUOUS
        STATS.calls[f"{name}:{outcome}"] += 1
        if outcome != OK:
            error = result
            details = (error.details() or "")[:120]
            self.note(f"{name} {outcome}: {error.code().name} {details}")
            STATS.errors[f"{name} {error.code().name}: {details[:60]}"] += 1
        return outcome, result

    # -- calls --

    @rule(session=st.integers(0, SESSIONS - 1), turns=st.integers(0, 3), big=st.sampled_from([False, False, True]))
    def put_session(self, session: int, turns: int, big: bool) -> None:
        self.steps += 1
        sid = self.sid(session)
        ids = [self.next_id("t") for _ in range(turns)]
        mark = self.next_id("p")
        state: dict[str, Any] = {"put": mark, "last": mark}
        if big:
            state["blob"] = BIG_STATE
        message = memory_pb2.Session(session_id=sid, user_id="u", messages=_turns(ids))
        message.state.update(state)
        outcome, _ = self.call("PutSession", edge_pb2.PutSessionRequest(session=message))
        self._record_put(sid, ids, state, mark, outcome)

    def _record_put(self, sid: str, ids: list[str], state: dict[str, Any], mark: str, outcome: str) -> None:
        model = self.model.session(sid)
        if outcome == OK:
            model.put(ids, state)
        elif outcome == REFUSED:
            model.refused(ids)
        else:
            model.maybe(ids, state)
            model.uncertain = model.uncertain or f"PutSession {mark} ended without an answer"

    @rule(session=st.integers(0, SESSIONS - 1), turns=st.integers(1, 3), patch=st.booleans())
    def append(self, session: int, turns: int, patch: bool) -> None:
        self.steps += 1
        self._append(session, turns, patch)

    def _append(self, session: int, turns: int, patch: bool) -> None:
        sid = self.sid(session)
        ids = [self.next_id("t") for _ in range(turns)]
        mark = self.next_id("a")
        state = {mark: "x", "last": mark} if patch else {}
        request = edge_pb2.AppendSessionMessagesRequest(session_id=sid, user_id="u", messages=_turns(ids))
        if state:
            request.state_patch.update(state)
        outcome, _ = self.call("AppendSessionMessages", request)
        self._record_appends(sid, [(ids, state, outcome)])

    def _record_appends(self, sid: str, results: list[tuple[list[str], dict[str, Any], str]]) -> None:
        model = self.model.session(sid)
        model.append([(ids, state) for ids, state, outcome in results if outcome == OK])
        for ids, state, outcome in results:
            if outcome == REFUSED:
                model.refused(ids)
            elif outcome == AMBIGUOUS:
                model.maybe(ids, state)

    @precondition(lambda self: "burst" not in SKIP)
    @rule(
        session=st.integers(0, SESSIONS - 1),
        appenders=st.integers(3, 10),
        kill=st.booleans(),
        kill_after=st.sampled_from([0.0, 0.005, 0.02, 0.05]),
    )
    def burst(self, session: int, appenders: int, kill: bool, kill_after: float) -> None:
        """Concurrent appenders on one session, each on its own channel; optionally SIGKILL the edge
        while they run, restart it, and let every unanswered appender retry with the same ids."""
        self.steps += 1
        kill = kill and self.allowed("burstkill")
        if kill:
            self.fault_count["burstkill"] += 1
        sid = self.sid(session)
        mark = self.next_id("c")
        requests: list[tuple[list[str], dict[str, Any], edge_pb2.AppendSessionMessagesRequest]] = []
        for i in range(appenders):
            ids = [self.next_id("t") for _ in range(1 + i % 2)]
            state = {f"{mark}_{i}": "x"}
            request = edge_pb2.AppendSessionMessagesRequest(session_id=sid, user_id="u", messages=_turns(ids))
            request.state_patch.update(state)
            requests.append((ids, state, request))
        rig = self.hunt
        assert rig.edge is not None
        target = rig.edge.target

        async def one(request: edge_pb2.AppendSessionMessagesRequest) -> str:
            client = Client(target)
            try:
                await client.edge.AppendSessionMessages(request, timeout=RPC_TIMEOUT)
                return OK
            except aio.AioRpcError as error:
                details = (error.details() or "")[:60]
                STATS.errors[f"AppendSessionMessages(burst) {error.code().name}: {details}"] += 1
                return classify(error)
            finally:
                await client.close()

        async def go() -> list[str]:
            tasks = [asyncio.ensure_future(one(request)) for _, _, request in requests]
            if kill:
                await asyncio.sleep(kill_after)
                await asyncio.to_thread(rig.kill_edge)
            return list(await asyncio.gather(*tasks))

        outcomes = rig.run(go())
        if kill:
            STATS.faults["burst_kill"] += 1
            rig.start_edge()
        results: list[tuple[list[str], dict[str, Any], str]] = []
        for (ids, state, request), first in zip(requests, outcomes, strict=True):
            outcome = first
            if first != OK and (first == AMBIGUOUS or kill):
                # The edge died under it (or was down): the agent retries the same turns.
                outcome, _ = self.call("AppendSessionMessages", request, name="AppendSessionMessages(retry)")
                if outcome != OK and first == AMBIGUOUS:
                    outcome = AMBIGUOUS
            else:
                STATS.calls[f"AppendSessionMessages(burst):{first}"] += 1
            results.append((ids, state, outcome))
        self._record_appends(sid, results)

    @precondition(lambda self: self.allowed("flood"))
    @rule(values=st.integers(4, 24))
    def flood_working_memory(self, values: int) -> None:
        """Working memory far past its bound: it may be evicted or refused; sessions must not suffer."""
        self.steps += 1
        ttl = duration_pb2.Duration(seconds=5)
        for i in range(values):
            request = edge_pb2.SetWorkingMemoryRequest(key=f"{self.prefix}wm{self.counter}-{i}", ttl=ttl)
            request.value.string_value = FLOOD_VALUE
            outcome, _ = self.call("SetWorkingMemory", request, retry=False)
            if outcome == OK:
                STATS.flood_bytes += len(FLOOD_VALUE)
        self.fault_count["flood"] += 1
        STATS.faults["floods"] += 1

    @precondition(lambda self: self.allowed("sessionflood"))
    @rule(sessions=st.integers(4, 14))
    def flood_sessions(self, sessions: int) -> None:
        """Fill the session store (``cache.layers.session.maxSize``) with ~512 KiB sessions: past the bound
        the edge must refuse (RESOURCE_EXHAUSTED), and what it acknowledged must all reach central."""
        self.steps += 1
        for _ in range(sessions):
            sid = self.next_id("f")
            ids = [self.next_id("t")]
            mark = self.next_id("p")
            state: dict[str, Any] = {"put": mark, "blob": BIG_STATE}
            message = memory_pb2.Session(session_id=sid, user_id="u", messages=_turns(ids))
            message.state.update(state)
            outcome, _ = self.call("PutSession", edge_pb2.PutSessionRequest(session=message), name="PutSession(flood)")
            self._record_put(sid, ids, state, mark, outcome)
        self.fault_count["sessionflood"] += 1
        STATS.faults["session_floods"] += 1

    @rule(count=st.integers(1, 4))
    def authorize(self, count: int) -> None:
        self.steps += 1
        for _ in range(count):
            request = edge_pb2.AuthorizeRequest(
                principal='User::"hunt"', action='Action::"read"', resource=f'Doc::"{self.next_id("d")}"'
            )
            outcome, reply = self.call("Authorize", request, retry=False)
            if outcome == OK:
                if reply.decision_id:
                    self.model.decisions.add(reply.decision_id)
                else:
                    STATS.calls["Authorize:ok-without-id"] += 1

    @rule(ids=st.lists(st.integers(0, VECTOR_IDS - 1), min_size=1, max_size=3, unique=True))
    def upsert_vectors(self, ids: list[int]) -> None:
        self.steps += 1
        vectors = []
        for i in ids:
            values = [round(self.rng.uniform(0.1, 1.0), 3) for _ in range(DIMENSION)]
            vectors.append(memory_pb2.Vector(vector_id=f"{self.prefix}v{i}", values=values))
        outcome, _ = self.call("UpsertVectors", edge_pb2.UpsertVectorsRequest(vectors=vectors))
        for vector in vectors:
            if outcome == OK:
                self.model.vectors.setdefault(vector.vector_id, []).append(list(vector.values))
            elif outcome == AMBIGUOUS:
                self.model.maybe_vectors.setdefault(vector.vector_id, []).append(list(vector.values))

    @rule()
    def append_episode(self) -> None:
        self.steps += 1
        episode_id = str(uuid.uuid4())
        episode = memory_pb2.Episode(episode_id=episode_id, session_id=self.sid(0), content=f"{self.prefix}episode")
        outcome, _ = self.call("AppendEpisode", edge_pb2.AppendEpisodeRequest(episode=episode))
        if outcome == OK:
            self.model.episodes.add(episode_id)
        elif outcome == AMBIGUOUS:
            self.model.maybe_episodes.add(episode_id)

    @rule()
    def flush(self) -> None:
        self.steps += 1
        self.call("FlushSync", edge_pb2.FlushSyncRequest(), retry=False)

    @rule(seconds=st.sampled_from([0.1, 0.4, 1.0]))
    def idle(self, seconds: float) -> None:
        """Let the background sync (200 ms intervals) and health checks run."""
        self.steps += 1
        time.sleep(seconds)

    # -- faults --

    def _during_flush(self, delay: float, fault: Callable[[], None], *, in_loop: bool = False) -> None:
        """Start a FlushSync, run ``fault`` ``delay`` s later while it runs (in a thread when it blocks, on
        the loop when it touches the proxy), then collect the flush."""
        client = self.hunt.edge_client

        async def go() -> None:
            flush = asyncio.ensure_future(client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=10))
            await asyncio.sleep(delay)
            if in_loop:
                fault()
            else:
                await asyncio.to_thread(fault)
            with contextlib.suppress(aio.AioRpcError, asyncio.CancelledError):
                await flush

        self.hunt.run(go())

    @precondition(lambda self: self.allowed("cut") and not self.link_cut)
    @rule(mid_flush=st.booleans(), delay=st.sampled_from([0.0, 0.01, 0.05]))
    def cut_link(self, mid_flush: bool, delay: float) -> None:
        self.steps += 1
        if mid_flush:
            self._during_flush(delay, self.hunt.cut_now, in_loop=True)
        else:
            self.hunt.cut()
        self.link_cut = True
        self.fault_count["cut"] += 1
        STATS.faults["cuts"] += 1

    @precondition(lambda self: self.link_cut)
    @rule()
    def restore_link(self) -> None:
        self.steps += 1
        self.hunt.restore()
        self.link_cut = False

    @precondition(lambda self: self.allowed("kill"))
    @rule(mid_flush=st.booleans(), delay=st.sampled_from([0.0, 0.01, 0.05, 0.15]))
    def kill_edge(self, mid_flush: bool, delay: float) -> None:
        self.steps += 1
        if mid_flush:
            self._during_flush(delay, self.hunt.kill_edge)
        else:
            self.hunt.kill_edge()
        self.hunt.start_edge()
        self.fault_count["kill"] += 1
        STATS.faults["kills"] += 1

    @precondition(lambda self: self.allowed("cache"))
    @rule(session=st.integers(0, SESSIONS - 1))
    def restart_cache(self, session: int) -> None:
        """SIGKILL the edge's cache; one append is tried while it is down (it must be refused or kept)."""
        self.steps += 1
        rig = self.hunt
        if rig.cache is not None:
            rig.cache.kill()
        else:
            pids = rig.owned_redis_pids()
            assert pids, "the edge runs no redis-server of its own (cache.url is unset, so it should)"
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.01)
        self.fault_count["cache"] += 1
        STATS.faults["cache_restarts"] += 1
        self._append(session, 1, True)
        if rig.cache is not None:
            rig.cache.start()
        if not self._cache_recovers(3.0):
            # The edge does not bring its cache back by itself: restart the edge (same data dir).
            STATS.faults["cache_recovered_by_edge_restart"] += 1
            rig.restart_edge()

    def _cache_recovers(self, limit: float) -> bool:
        client = self.hunt.edge_client

        async def probe() -> bool:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                try:
                    await client.edge.GetWorkingMemory(edge_pb2.GetWorkingMemoryRequest(key="hunt-probe"), timeout=2)
                    return True
                except aio.AioRpcError as error:
                    if error.code() == StatusCode.NOT_FOUND:
                        return True
                await asyncio.sleep(0.1)
            return False

        return self.hunt.run(probe())

    @precondition(lambda self: self.allowed("reprovision"))
    @rule()
    def reprovision(self) -> None:
        """Drain, stop, delete the data dir, start again with the same agent id (a new incarnation)."""
        self.steps += 1
        rig = self.hunt
        self.fault_count["reprovision"] += 1
        was_cut = self.link_cut
        if was_cut:
            rig.restore()
        drained, last = rig.run(rig.drain(60))
        if not drained:
            # Deleting the data dir now would destroy acknowledged data on purpose; the teardown reports it.
            STATS.faults["reprovision_skipped_not_drained"] += 1
            self.note(f"re-provisioning skipped: the edge did not drain ({last})")
        else:
            assert rig.edge is not None
            rig.edge.stop()
            rig.edge.kill()
            shutil.rmtree(rig.data_dir, ignore_errors=True)
            if rig.cache is not None:
                rig.cache.flush()
            rig.start_edge()
            STATS.faults["reprovisions"] += 1
        if was_cut:
            rig.cut()

    # -- the final invariant --

    def teardown(self) -> None:
        rig = self.hunt
        try:
            self._settle_and_check(rig)
        finally:
            STATS.steps += self.steps

    def _settle_and_check(self, rig: HuntRig) -> None:
        assert rig.edge is not None
        if self.link_cut:
            rig.restore()
            self.link_cut = False
        if not rig.edge.running:
            rig.start_edge()
        drained, last = rig.run(rig.drain(90))
        rows = read_central(rig.conninfo, self.model)
        verdict = compare(self.model, rows)
        if not drained:
            verdict.wrong.append(f"the edge did not drain within 90 s after the link was restored: {last}")
        sessions = [s for s in self.model.sessions.values() if s.exists]
        STATS.acked.update(
            sessions=len(sessions),
            turns=self.model.acked_turns,
            decisions=len(self.model.decisions),
            vectors=len(self.model.vectors),
            episodes=len(self.model.episodes),
        )
        STATS.lost += len(verdict.lost)
        STATS.duplicated += len(verdict.duplicated)
        STATS.wrong += len(verdict.wrong)
        STATS.uncertain += len(verdict.uncertain)
        STATS.notes += len(verdict.notes)
        print(
            f"HUNT example={self.example} steps={self.steps} faults={dict(self.fault_count)} sessions={len(sessions)} "
            f"turns={self.model.acked_turns} decisions={len(self.model.decisions)} vectors={len(self.model.vectors)} "
            f"episodes={len(self.model.episodes)} lost={len(verdict.lost)} duplicated={len(verdict.duplicated)} "
            f"wrong={len(verdict.wrong)} uncertain={len(verdict.uncertain)} notes={len(verdict.notes)}",
            flush=True,
        )
        if verdict.notes and verdict.clean:
            print(verdict.text(), flush=True)
        if not verdict.clean:
            STATS.failing_examples += 1
            detail = verdict.text() + f"\n  the edge after the final flush: {last}"
            if self.log:
                detail += "\n  calls that were not acknowledged:\n" + "\n".join(
                    f"    {line}" for line in self.log[-20:]
                )
            print(detail, flush=True)
            STATS.first_failure = STATS.first_failure or detail
            raise AssertionError(
                f"loss hunt example {self.example}: lost={len(verdict.lost)} duplicated={len(verdict.duplicated)} "
                f"wrong={len(verdict.wrong)} (central's PostgreSQL vs what the edge acknowledged)\n{detail}"
            )


# --- the test -------------------------------------------------------------------------------------


def _sizes(config: pytest.Config) -> tuple[int, int, bool]:
    examples, steps, shrink = (100, 40, True) if soak(config) else (12, 16, False)
    examples = int(os.environ.get("AETERNA_HUNT_EXAMPLES", examples))
    steps = int(os.environ.get("AETERNA_HUNT_STEPS", steps))
    shrink = os.environ.get("AETERNA_HUNT_SHRINK", "1" if shrink else "0") == "1"
    return examples, steps, shrink


@pytest.mark.ci_slow
@pytest.mark.timeout(4 * 3600)
def test_loss_hunt(
    request: pytest.FixtureRequest,
    database_url: str,
    postgres_server: EmbeddedPostgres,
    services: ServiceFactory,
    tmp_path: Path,
) -> None:
    examples, steps, shrink = _sizes(request.config)
    BUDGET_SCALE[0] = 4 if soak(request.config) else 1
    hunt_seed = int(os.environ.get("AETERNA_HUNT_SEED", DEFAULT_SEED))
    conninfo = postgres_server.conninfo(urlsplit(database_url).path.lstrip("/"))
    rig = HuntRig(services, tmp_path, database_url, conninfo)
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    started = time.monotonic()
    _reset_stats()
    try:
        rig.start()
        LossHunt.rig = rig
        run_state_machine_as_test(
            seed(hunt_seed)(LossHunt),
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                database=None,
                phases=phases,
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
                print_blob=False,
            ),
        )
    finally:
        LossHunt.rig = None
        report(
            "FAULT",
            "loss-hunt",
            seed=hunt_seed,
            mode="soak" if soak(request.config) else "ci",
            cache=CACHE_MODE,
            examples=STATS.examples,
            failing_examples=STATS.failing_examples,
            steps=STATS.steps,
            operations=STATS.operations,
            acked=sum(n for k, n in STATS.calls.items() if k.endswith(":ok")),
            refused=sum(n for k, n in STATS.calls.items() if k.endswith(":refused")),
            ambiguous=sum(n for k, n in STATS.calls.items() if k.endswith(":ambiguous")),
            kills=STATS.faults["kills"],
            burst_kills=STATS.faults["burst_kill"],
            cuts=STATS.faults["cuts"],
            cache_restarts=STATS.faults["cache_restarts"],
            cache_edge_restarts=STATS.faults["cache_recovered_by_edge_restart"],
            reprovisions=STATS.faults["reprovisions"],
            session_floods=STATS.faults["session_floods"],
            floods=STATS.faults["floods"],
            flood_mib=STATS.flood_bytes // (1024 * 1024),
            checked_sessions=STATS.acked["sessions"],
            checked_turns=STATS.acked["turns"],
            checked_decisions=STATS.acked["decisions"],
            checked_vectors=STATS.acked["vectors"],
            checked_episodes=STATS.acked["episodes"],
            lost=STATS.lost,
            duplicated=STATS.duplicated,
            wrong=STATS.wrong,
            uncertain=STATS.uncertain,
            notes=STATS.notes,
            wall_s=round(time.monotonic() - started),
        )
        print("HUNT calls " + " ".join(f"{k}={v}" for k, v in sorted(STATS.calls.items())), flush=True)
        for error, count in STATS.errors.most_common(12):
            print(f"HUNT not acknowledged x{count}: {error}", flush=True)
        rig.close()


# --- the checker itself (pure logic, no processes) -------------------------------------------------


def _session(ids: list[str], state: dict[str, str] | None = None) -> memory_pb2.Session:
    message = memory_pb2.Session(session_id="s", messages=_turns(ids))
    if state:
        message.state.update(state)
    return message


def test_model_checker_judges_turns_exactly() -> None:
    model = SessionModel("s")
    model.put(["p1"], {"last": "p"})
    model.append([(["a1", "a2"], {"last": "a"})])
    model.append([(["b1"], {"k1": "x"}), (["c1", "c2"], {"k2": "x"})])  # a burst: any order of the calls
    model.append([(["d1"], {})])
    full = {"last": "a", "k1": "x", "k2": "x"}
    verdict = Verdict()
    check_session(model, [_session(["p1", "a1", "a2", "c1", "c2", "b1", "d1"], full)], verdict)
    assert verdict.clean, verdict.text()
    cases = {
        "lost": ["p1", "a1", "a2", "c1", "c2", "d1"],
        "duplicated": ["p1", "a1", "a2", "b1", "c1", "c2", "d1", "a1"],
        "wrong": ["p1", "a2", "a1", "b1", "c1", "c2", "d1"],
    }
    for kind, ids in cases.items():
        verdict = Verdict()
        check_session(model, [_session(ids, full)], verdict)
        assert getattr(verdict, kind), f"{kind} not detected for {ids}: {verdict.text()}"
    verdict = Verdict()
    check_session(model, [_session(["p1", "a1", "a2", "b1", "c1", "d1", "c2"], full)], verdict)
    assert verdict.wrong, "a call's turns split apart must be reported"
    verdict = Verdict()
    check_session(model, [_session(["p1", "a1", "a2", "b1", "c1", "c2", "d1"], {"last": "a", "k1": "x"})], verdict)
    assert verdict.lost, "a missing state key must be reported as lost"
    model.put(["q1"], {"last": "q"})
    verdict = Verdict()
    check_session(model, [_session(["p1", "q1"], {"last": "q"})], verdict)
    assert verdict.wrong, "a turn replaced by a later put must be gone"
    assert match_groups([[("a",), ("b", "c")]], ["b", "c", "a"])
    assert not match_groups([[("a",), ("b", "c")]], ["b", "a", "c"])


def test_model_allows_unanswered_calls_but_requires_acknowledged_ones() -> None:
    model = HuntModel("p-", "edge")
    session = model.session("s")
    session.append([(["a1"], {})])
    session.maybe(["m1"], {"m": "x"})
    session.refused(["r1"])
    model.decisions.add("d1")
    model.vectors["v"] = [[0.1, 0.2], [0.3, 0.4]]
    ok = CentralRows({"s": [_session(["a1", "m1"], {"m": "x"})]}, {"d1": ["edge"]}, {"v": [[0.3, 0.4]]}, {})
    assert compare(model, ok).clean
    bad = CentralRows({"s": [_session(["a1", "r1"])]}, {}, {"v": [[0.1, 0.2]]}, {})
    verdict = compare(model, bad)
    assert any("refused" in line for line in verdict.wrong)
    assert any("decision d1" in line for line in verdict.lost)
    assert any("older one" in line for line in verdict.wrong)
