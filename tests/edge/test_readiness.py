"""The edge's readiness follows its session store; its liveness does not.

A real ``aeterna edge`` process on an external redis-server (``cache.url``)
of this test alone, which the test stops and starts again on the same socket.
Through gRPC health ``Check``: while Redis is down, readiness (the whole
server "" and ``EdgeService``) is NOT_SERVING and liveness
(``aeterna.liveness``) stays SERVING; once Redis is back, readiness is SERVING
again. The edge runs without a central (offline) the whole time: a lost link
does not make it unready.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aeterna_server.server import LIVENESS_SERVICE
from edge_svc.server import SERVICE_NAME
from tests.edge.conftest import closed_port, edge_document
from tests.support.redis import _start as start_redis
from tests.support.services import ServiceFactory
from tests.support.waiting import health_statuses, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READINESS = ("", SERVICE_NAME)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    process.wait(10)


async def test_readiness_follows_the_session_store_and_liveness_stays(services: ServiceFactory, tmp_path: Path) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis_process, url = start_redis(redis_dir)
    try:
        document = edge_document(tmp_path / "edge", closed_port())
        document["cache"] = {"url": url}
        edge = services.make("edge", "edge", document).start()
        async with aio.insecure_channel(edge.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert await health_statuses(health, READINESS) == {SERVING}
            assert await health_statuses(health, (LIVENESS_SERVICE,)) == {SERVING}

            _stop(redis_process)

            async def not_ready() -> bool:
                return await health_statuses(health, READINESS) == {NOT_SERVING}

            await wait_until(not_ready, "the edge reports NOT_SERVING without its session store")
            assert await health_statuses(health, (LIVENESS_SERVICE,)) == {SERVING}

            redis_process, _ = start_redis(redis_dir)  # the same directory: the same socket, the same data

            async def ready() -> bool:
                return await health_statuses(health, READINESS) == {SERVING}

            await wait_until(ready, "the edge is SERVING again once its session store is back")
            assert await health_statuses(health, (LIVENESS_SERVICE,)) == {SERVING}
        assert edge.stop() == 0
        log = edge.log_text()
        assert log.count("session store unreachable") == 1
        assert log.count("session store reachable again") == 1
    finally:
        _stop(redis_process)
