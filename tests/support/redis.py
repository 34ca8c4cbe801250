"""A real redis-server for the test session, flushed before each test that uses it.

It listens on a Unix socket in a temporary directory, so it never takes a TCP
port, and runs with persistence off, as the edge's owned Redis does.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis


def answers(url: str, attempts: int = 500, *, alive: Callable[[], bool] = lambda: True) -> bool:
    """Whether the redis-server at ``url`` answers PING within ``attempts`` tries 10 ms apart (and while ``alive``)."""
    for _ in range(attempts):
        if not alive():
            return False
        try:
            client = redis.Redis.from_url(url)
            try:
                if client.ping():
                    return True
            finally:
                client.close()
        except (redis.ConnectionError, redis.BusyLoadingError, OSError):
            time.sleep(0.01)
    return False


def _start(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    sock = directory / "redis.sock"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            # What the edge requires of a session store (it checks at start-up): no eviction and an
            # append-only file. The tests skip the fsync (appendfsync no): nothing here survives power loss.
            "--appendonly",
            "yes",
            "--appendfsync",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"unix://{sock}"
    if answers(url, alive=lambda: process.poll() is None):
        return process, url
    if process.poll() is not None:
        raise RuntimeError("redis-server exited at start")
    process.kill()
    raise RuntimeError("redis-server did not answer")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL (unix://) of a redis-server shared by the whole session."""
    directory = Path(tempfile.mkdtemp(prefix="aeterna-redis-"))
    process, url = _start(directory)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's redis-server, emptied for this test."""
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server
