"""Processes an edge or central owns never outlive it and never share a data directory (issue 12).

Everything here runs real processes: edges and centrals through ``aeterna``,
real redis-servers and the embedded PostgreSQL. What is running is read from
/proc, the way an operator would look with ``ps``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aeterna.edge.v1 import edge_pb2
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf import struct_pb2
from grpc import aio

from aeterna_cli.processes import ServiceStartError
from aeterna_shared.config import AeternaConfig
from aeterna_shared.errors import FailedPrecondition
from aeterna_shared.process_lock import DataDirLock
from central_svc.store.embedded_postgres import EmbeddedPostgres
from edge_svc.deps import open_edge
from edge_svc.records import Message, SessionRecord
from edge_svc.store.redis_server import PID_FILE_NAME, OwnedRedis
from tests.central.conftest import Edge as SyncingEdge
from tests.central.conftest import make_session as central_session
from tests.edge.conftest import closed_port, edge_document
from tests.support.clients import Client, make_session
from tests.support.redis import answers
from tests.support.services import ServiceFactory, ServiceProcess

SESSIONS = "redis-sessions"
WORKING = "redis-working"


# --- what runs, read from /proc ---------------------------------------------------------


def _live(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _processes() -> Iterator[tuple[int, str, Path | None, list[str]]]:
    """(pid, program name, current directory, argv) of every live process we can read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            argv = (entry / "cmdline").read_bytes().rstrip(b"\0").decode(errors="replace").split("\0")
        except OSError:
            continue
        # argv[0], not /proc/<pid>/exe: Debian's redis-server is a link to redis-check-rdb. A retitled
        # redis-server (set-proc-title yes, as before issue 12) shows "redis-server <address>" there.
        exe = Path(argv[0].split(" ", 1)[0]).name
        if _live(pid):
            yield pid, exe, cwd, argv


def redis_servers_in(directory: Path) -> list[int]:
    """Live redis-servers working in ``directory`` (redis-server changes into its --dir)."""
    return sorted(pid for pid, exe, cwd, _ in _processes() if exe == "redis-server" and cwd == directory)


def redis_servers_under(directory: Path) -> list[int]:
    """Live redis-servers working anywhere below ``directory``."""
    return sorted(
        pid
        for pid, exe, cwd, _ in _processes()
        if exe == "redis-server" and cwd is not None and cwd.is_relative_to(directory)
    )


def postmasters_on(pgdata: Path) -> list[int]:
    """Live postmasters (not backends, which retitle themselves) on ``pgdata``."""
    return sorted(pid for pid, exe, _, argv in _processes() if exe == "postgres" and str(pgdata) in argv[1:])


def owned_url(directory: Path) -> str:
    """The URL of the owned redis-server in ``directory``, from the command line its pid file records."""
    argv: list[str] = json.loads((directory / PID_FILE_NAME).read_text())["argv"]
    if "--unixsocket" in argv:
        return "unix://" + argv[argv.index("--unixsocket") + 1]
    # The loopback fallback demands the password in its 0600 config file (the first argument).
    password = Path(argv[1]).read_text().split()[1]
    return f"redis://:{password}@127.0.0.1:{argv[argv.index('--port') + 1]}/0"


def config_get(url: str, setting: str) -> str:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return str(client.config_get(setting)[setting])
    finally:
        client.close()


def make_edge(services: ServiceFactory, tmp_path: Path, name: str, **overrides: Any) -> ServiceProcess:
    """An edge in owned mode (no cache.url) with no central (it runs offline)."""
    document = edge_document(tmp_path / name / "data", closed_port(), **overrides)
    document["edge"]["agentId"] = name
    document["telemetry"]["logFormat"] = "text"
    return services.make("edge", name, document)


def sigkill_only(service: ServiceProcess) -> None:
    """SIGKILL the service's own process, not its process group: its children are on their own."""
    assert service.process is not None
    os.kill(service.process.pid, signal.SIGKILL)
    service.process.wait(10)


def start_bystander() -> subprocess.Popen[bytes]:
    """A process that has nothing to do with us and must survive every test."""
    return subprocess.Popen(["sleep", "600"])


def refused(service: ServiceProcess) -> str:
    """Start ``service``, expect it to exit instead of becoming ready; its log."""
    with pytest.raises(ServiceStartError):
        service.start(timeout=60)
    assert service.process is not None
    assert service.process.returncode not in (None, 0)
    return service.log_text()


# --- external redis-servers the tests start themselves ------------------------------------


class ExternalRedis:
    """A redis-server with the given settings, in a short temporary directory (Unix socket)."""

    def __init__(self, *settings: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.directory = Path(tempfile.mkdtemp(prefix="aeterna-ext-"))
        sock = self.directory / "redis.sock"
        self.url = f"unix://{sock}"
        self.process = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(sock), "--dir", str(self.directory), "--save", "", *settings],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if answers(self.url):
            return
        self.close()
        raise AssertionError("the external redis-server did not answer")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def external_redis() -> Iterator[Any]:
    made: list[ExternalRedis] = []

    def start(*settings: str) -> ExternalRedis:
        server = ExternalRedis(*settings)
        made.append(server)
        return server

    yield start
    for server in made:
        server.close()


# --- the edge's owned redis-servers ------------------------------------------------------


async def test_three_sigkills_leave_one_redis_per_role_and_the_sessions(
    services: ServiceFactory, tmp_path: Path
) -> None:
    edge = make_edge(services, tmp_path, "k").start()
    data = tmp_path / "k" / "data"
    client = Client(edge.target)
    try:
        await client.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session("kept-0", "before kill 1")))
        for round_ in range(1, 4):
            sigkill_only(edge)
            await client.close()
            edge.start()
            client = Client(edge.target)
            text = f"before kill {round_ + 1}"
            await client.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session(f"kept-{round_}", text)))

        assert len(redis_servers_in(data / SESSIONS)) == 1
        assert len(redis_servers_in(data / WORKING)) == 1
        assert len(redis_servers_under(data)) == 2
        for index in range(4):
            got = await client.edge.GetSession(edge_pb2.GetSessionRequest(session_id=f"kept-{index}"))
            assert got.source == edge_pb2.SESSION_SOURCE_LOCAL
            assert got.session.messages[0].content == f"before kill {index + 1}"
    finally:
        await client.close()
    assert edge.stop() == 0
    assert redis_servers_under(data) == []


_ORPHAN_MAKER = """
import sys, threading, time
from pathlib import Path
import redis
from edge_svc.store.redis_server import OwnedRedis

started = []
# Started from a worker thread that then exits: no PR_SET_PDEATHSIG (it would fire when that thread
# exits), so only the orphan sweep can stop this server once its owner is gone.
worker = threading.Thread(
    target=lambda: started.append(OwnedRedis.start(Path(sys.argv[1]), maxmemory=0, policy="noeviction", durable=True))
)
worker.start()
worker.join()
client = redis.Redis.from_url(started[0].url)
client.set("written-by-the-dead-owner", "kept")
client.close()
print(started[0].pid, flush=True)
time.sleep(600)
"""


def test_a_redis_left_by_a_killed_owner_is_stopped_before_a_new_one_starts(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    owner = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_MAKER, str(directory)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert owner.stdout is not None
        orphan = int(owner.stdout.readline())
    finally:
        owner.kill()
        owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()
    assert _live(orphan), "precondition: the killed owner's redis-server is still running"
    assert redis_servers_in(directory) == [orphan]

    owned = OwnedRedis.start(directory, maxmemory=0, policy="noeviction", durable=True)
    try:
        assert not _live(orphan)
        assert redis_servers_in(directory) == [owned.pid]
        client = redis.Redis.from_url(owned.url)
        try:
            assert client.get("written-by-the-dead-owner") == b"kept"
        finally:
            client.close()
    finally:
        owned.stop()
    assert redis_servers_in(directory) == []


def test_a_pid_file_naming_another_process_never_gets_it_killed(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    directory.mkdir()
    bystander = start_bystander()
    try:
        # The pid file of a killed owner whose pid the kernel has since given to someone else.
        record = {"pid": bystander.pid, "start_ticks": None, "argv": ["redis-server", "--dir", str(directory)]}
        (directory / PID_FILE_NAME).write_text(json.dumps(record))
        owned = OwnedRedis.start(directory, maxmemory=0, policy="noeviction", durable=True)
        owned.stop()
        assert bystander.poll() is None, "an unrelated process was signalled"
    finally:
        bystander.kill()
        bystander.wait(10)


async def test_a_start_that_fails_after_redis_started_stops_it_in_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "vectors").write_text("not a directory: opening the vector shard fails after Redis started")
    config = AeternaConfig.model_validate(edge_document(data, closed_port()))
    with pytest.raises(NotADirectoryError):
        await open_edge(config)
    assert redis_servers_under(data) == []
    # ... and it gave the data directory up.
    DataDirLock.acquire(data, name="edge.lock").release()


async def test_an_edge_whose_port_is_taken_leaves_no_redis_behind(services: ServiceFactory, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        edge = make_edge(services, tmp_path, "p", **{"edge.listenPort": port})
        log = refused(edge)
    assert "bind" in log
    assert redis_servers_under(tmp_path / "p" / "data") == []


async def test_a_second_edge_on_the_same_data_dir_is_refused(services: ServiceFactory, tmp_path: Path) -> None:
    first = make_edge(services, tmp_path, "one").start()
    data = tmp_path / "one" / "data"
    document = edge_document(data, closed_port())
    second = services.make("edge", "two", document)
    log = refused(second)
    assert str(data) in log
    assert "in use" in log
    assert first.process is not None
    assert f"process {first.process.pid}" in log
    assert "DATA_DIR_IN_USE" in log
    # The first edge is untouched.
    assert len(redis_servers_in(data / SESSIONS)) == 1
    assert len(redis_servers_in(data / WORKING)) == 1
    client = Client(first.target)
    try:
        await client.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session("still-one", "fine")))
    finally:
        await client.close()


async def test_owned_working_server_evicts_and_the_session_server_never_does(
    services: ServiceFactory, tmp_path: Path
) -> None:
    layers = {
        "working": {"maxSize": "4Mi", "ttl": "10m", "maxTtl": "10m", "evictionPolicy": "lru"},
        "session": {"maxSize": "64Mi"},
    }
    edge = make_edge(services, tmp_path, "w", **{"cache.layers": layers}).start()
    data = tmp_path / "w" / "data"
    sessions_url, working_url = owned_url(data / SESSIONS), owned_url(data / WORKING)

    assert config_get(sessions_url, "maxmemory-policy") == "volatile-lru"
    assert config_get(sessions_url, "appendonly") == "yes"
    assert config_get(sessions_url, "appendfsync") == "always"
    assert config_get(sessions_url, "maxmemory") == str(64 * 1024**2)
    assert config_get(working_url, "maxmemory-policy") == "allkeys-lru"
    assert config_get(working_url, "appendonly") == "no"
    assert config_get(working_url, "maxmemory") == str(4 * 1024**2)
    assert (data / SESSIONS).stat().st_mode & 0o777 == 0o700
    assert (data / WORKING).stat().st_mode & 0o777 == 0o700

    working = redis.Redis.from_url(working_url)
    sessions = redis.Redis.from_url(sessions_url)
    client = Client(edge.target)
    try:
        await client.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session("s-owned", "never evicted")))
        value = struct_pb2.Value(string_value="x" * 100_000)
        written = 0
        while int(working.info("stats")["evicted_keys"]) == 0 and written < 400:
            await client.edge.SetWorkingMemory(edge_pb2.SetWorkingMemoryRequest(key=f"wm-{written}", value=value))
            written += 1
        assert int(working.info("stats")["evicted_keys"]) > 0
        assert int(sessions.info("stats")["evicted_keys"]) == 0
        # Each layer is in its own server.
        assert list(sessions.scan_iter(match="*:wm:*")) == []
        assert list(working.scan_iter(match="*session*")) == []
        assert list(sessions.scan_iter(match="*session:s-owned"))
        got = await client.edge.GetSession(edge_pb2.GetSessionRequest(session_id="s-owned"))
        assert got.session.messages[0].content == "never evicted"
        # What was not evicted is still served (nothing writes between the scan and the read).
        kept = next(working.scan_iter(match="*:wm:*")).decode().rsplit(":wm:", 1)[1]
        still = await client.edge.GetWorkingMemory(edge_pb2.GetWorkingMemoryRequest(key=kept))
        assert still.value.string_value == value.string_value
    finally:
        await client.close()
        working.close()
        sessions.close()


def test_an_older_edges_redis_directory_becomes_the_session_store(services: ServiceFactory, tmp_path: Path) -> None:
    data = tmp_path / "old" / "data"
    legacy = data / "redis"
    legacy.mkdir(parents=True)
    old = subprocess.Popen(
        [
            "redis-server", "--port", "0", "--unixsocket", str(legacy / "redis.sock"), "--dir", str(legacy),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(500):
            try:
                client = redis.Redis.from_url(f"unix://{legacy / 'redis.sock'}")
                try:
                    client.set("written-by-an-older-edge", "kept")
                    break
                finally:
                    client.close()
            except (redis.ConnectionError, OSError):
                time.sleep(0.01)
        # While the older edge's redis-server still runs there, the edge refuses rather than share its files.
        log = refused(make_edge(services, tmp_path, "old"))
        assert str(legacy) in log
        assert str(old.pid) in log
    finally:
        old.terminate()
        old.wait(10)
    edge = make_edge(services, tmp_path, "old-again", **{"edge.dataDir": str(data)}).start()
    assert not legacy.exists()
    sessions = redis.Redis.from_url(owned_url(data / SESSIONS))
    try:
        assert sessions.get("written-by-an-older-edge") == b"kept"
    finally:
        sessions.close()
    assert edge.stop() == 0


# --- an external session store -------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "setting", "found"),
    [
        (("--maxmemory-policy", "allkeys-lru", "--appendonly", "yes"), "maxmemory-policy", "allkeys-lru"),
        (("--maxmemory-policy", "noeviction", "--appendonly", "no"), "appendonly", "no"),
    ],
)
async def test_an_unsafe_external_cache_is_refused_unless_allowed(
    external_redis: Any, tmp_path: Path, settings: tuple[str, ...], setting: str, found: str
) -> None:
    server = external_redis(*settings)
    document = edge_document(tmp_path / "data", closed_port())
    document["cache"] = {"url": server.url}
    with pytest.raises(FailedPrecondition) as refusal:
        await open_edge(AeternaConfig.model_validate(document))
    message = refusal.value.message
    assert f"{setting} is {found}" in message
    assert "needs" in message
    assert "cache.allowUnsafeCache: true" in message
    assert refusal.value.reason == "UNSAFE_CACHE"

    document["cache"]["allowUnsafeCache"] = True
    resources = await open_edge(AeternaConfig.model_validate(document))
    try:
        assert resources.owned_sessions is None
        assert await resources.session_cache.ping()
    finally:
        await resources.close()


async def test_an_edge_process_on_an_unsafe_cache_exits_naming_the_setting(
    external_redis: Any, services: ServiceFactory, tmp_path: Path
) -> None:
    server = external_redis("--maxmemory-policy", "allkeys-lru", "--appendonly", "yes")
    edge = make_edge(services, tmp_path, "u", **{"cache": {"url": server.url}})
    log = refused(edge)
    assert "maxmemory-policy is allkeys-lru, needs volatile-lru (or noeviction)" in log
    assert "cache.allowUnsafeCache: true" in log
    assert redis_servers_under(tmp_path / "u" / "data") == []


async def test_a_safe_external_cache_is_accepted_and_shared_by_both_layers(external_redis: Any, tmp_path: Path) -> None:
    server = external_redis("--maxmemory-policy", "noeviction", "--appendonly", "yes", "--appendfsync", "always")
    document = edge_document(tmp_path / "data", closed_port())
    document["cache"] = {"url": server.url}
    resources = await open_edge(AeternaConfig.model_validate(document))
    try:
        assert resources.owned_sessions is None
        assert resources.owned_working is None
        await resources.node.working.set("default", "k", 1, None)
        await resources.node.sessions.put("default", SessionRecord("s1", "u", [Message("user", "hello")]))
        client = redis.Redis.from_url(server.url)
        try:
            assert client.exists("aeterna:default:wm:k")
            assert list(client.scan_iter(match="*session:s1"))
        finally:
            client.close()
    finally:
        await resources.close()
    assert redis_servers_under(tmp_path / "data") == []


# --- central's embedded PostgreSQL ------------------------------------------------------------


def central_document(data_dir: Path) -> dict[str, Any]:
    return {
        "deploymentMode": "central",
        "central": {"dataDir": str(data_dir)},
        "sync": {"listenPort": 0},
        "telemetry": {"metricsPort": 0, "logFormat": "text"},
        "vectorDatabase": {"dimension": 8},
    }


async def _sync_one_session(central: ServiceProcess, session_id: str) -> None:
    edge = SyncingEdge("edge-pg")
    async with aio.insecure_channel(central.target) as channel:
        call = sync_pb2_grpc.SyncServiceStub(channel).SyncSessions(
            iter([edge.sessions([central_session(session_id)])]), metadata=edge.metadata
        )
        [response] = [r async for r in call]
        assert response.ack.status == sync_pb2.ACK_STATUS_ACCEPTED


async def _session_at(central: ServiceProcess, session_id: str) -> str:
    edge = SyncingEdge("edge-pg")
    async with aio.insecure_channel(central.target) as channel:
        got = await sync_pb2_grpc.SyncServiceStub(channel).GetSession(
            sync_pb2.GetSessionRequest(session_id=session_id), metadata=edge.metadata
        )
        return str(got.session.session_id)


async def test_two_centrals_on_one_data_dir_are_refused(services: ServiceFactory, tmp_path: Path) -> None:
    data = tmp_path / "central-data"
    first = services.make("central", "first", central_document(data)).start()
    log = refused(services.make("central", "second", central_document(data)))
    assert str(data / "postgres") in log
    assert "in use" in log
    assert first.process is not None
    assert f"process {first.process.pid}" in log
    # Nor can anything else own it while the first central does.
    with pytest.raises(FailedPrecondition) as in_use:
        EmbeddedPostgres(data / "postgres").start()
    assert in_use.value.reason == "DATA_DIR_IN_USE"
    await _sync_one_session(first, "still-served")
    assert await _session_at(first, "still-served") == "still-served"
    assert len(postmasters_on(data / "postgres" / "pgdata")) == 1


async def test_a_killed_centrals_postmaster_is_stopped_at_restart(services: ServiceFactory, tmp_path: Path) -> None:
    data = tmp_path / "central-data"
    pgdata = data / "postgres" / "pgdata"
    central = services.make("central", "central", central_document(data)).start()
    await _sync_one_session(central, "before-the-kill")
    central.kill()
    [orphan] = postmasters_on(pgdata)
    assert _live(orphan), "precondition: pg_ctl detaches the postmaster, so it outlives a killed central"

    central.start()
    assert not _live(orphan)
    [postmaster] = postmasters_on(pgdata)
    assert postmaster != orphan
    assert "left running" in central.log_text()
    assert await _session_at(central, "before-the-kill") == "before-the-kill"
    assert central.stop() == 0
    assert postmasters_on(pgdata) == []


async def test_a_stale_postmaster_pid_naming_another_process_is_not_obeyed(
    services: ServiceFactory, tmp_path: Path
) -> None:
    data = tmp_path / "central-data"
    pgdata = data / "postgres" / "pgdata"
    central = services.make("central", "central", central_document(data)).start()
    await _sync_one_session(central, "before-the-reboot")
    assert central.stop() == 0
    bystander = start_bystander()
    try:
        # After a reboot the pid in a crashed server's postmaster.pid can belong to anything.
        pid_file = pgdata / "postmaster.pid"
        stat = os.stat(pgdata)
        pid_file.write_text(f"{bystander.pid}\n{pgdata}\n0\n5432\n\n\n0 0\nready   \n")
        os.chown(pid_file, stat.st_uid, stat.st_gid)
        central.start()
        assert bystander.poll() is None, "an unrelated process was signalled"
        assert await _session_at(central, "before-the-reboot") == "before-the-reboot"
    finally:
        bystander.kill()
        bystander.wait(10)
