"""Liveness and readiness as a client sees them on a real server built by ``aeterna_server.server``.

A graceful shutdown takes readiness (the whole server "" and each service) to
NOT_SERVING at once, while liveness (``aeterna.liveness``) stays SERVING: a
process draining its calls must not be killed by its liveness probe. A
``ReadinessWatch`` whose dependency stops answering reports NOT_SERVING only
after ``threshold`` failures in a row, SERVING again at the first answer, and
leaves liveness alone; once shutdown began, it no longer changes anything.
"""

from __future__ import annotations

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aeterna_server.readiness import ReadinessWatch
from aeterna_server.server import LIVENESS_SERVICE, bind, build_server, mark_not_serving, mark_serving

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "test.v1.Service"


async def _status(stub: health_pb2_grpc.HealthStub, name: str) -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
    return int(reply.status)


async def test_readiness_follows_the_probe_and_shutdown_leaves_liveness_serving() -> None:
    server, health = build_server([])
    port = bind(server, "127.0.0.1", 0)
    await server.start()
    answering = True

    async def probe() -> None:
        if not answering:
            raise ConnectionError("dependency gone")

    watch = ReadinessWatch(health, [SERVICE], probe, dependency="dependency", threshold=2)
    try:
        await mark_serving(health, [SERVICE])
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert await watch.check_once()
            assert {await _status(stub, name) for name in ("", SERVICE, LIVENESS_SERVICE)} == {SERVING}

            answering = False
            assert await watch.check_once()  # one failure in a row: still ready
            assert await _status(stub, "") == SERVING
            assert not await watch.check_once()
            assert [await _status(stub, name) for name in ("", SERVICE)] == [NOT_SERVING, NOT_SERVING]
            assert await _status(stub, LIVENESS_SERVICE) == SERVING

            answering = True
            assert await watch.check_once()
            assert [await _status(stub, name) for name in ("", SERVICE)] == [SERVING, SERVING]

            await mark_not_serving(health)
            assert [await _status(stub, name) for name in ("", SERVICE)] == [NOT_SERVING, NOT_SERVING]
            assert await _status(stub, LIVENESS_SERVICE) == SERVING
            await watch.check_once()  # the dependency answers, but a server shutting down stays NOT_SERVING
            assert await _status(stub, "") == NOT_SERVING
    finally:
        await server.stop(0)
