"""Central's readiness follows its PostgreSQL; its liveness does not.

A real ``aeterna central`` process on a database of the test PostgreSQL
server. The database is taken away for real: new connections are refused
(``ALLOW_CONNECTIONS false``) and central's open ones are terminated. Through
gRPC health ``Check``, readiness (the whole server "" and each service) goes
NOT_SERVING while liveness (``aeterna.liveness``) stays SERVING; when the
database accepts connections again, readiness is SERVING again. The change is
logged once each way, not on every poll.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aeterna_server.server import LIVENESS_SERVICE
from central_svc.server import SERVICE_NAMES
from central_svc.store.embedded_postgres import EmbeddedPostgres
from tests.support.postgres import TEST_VECTOR_DIMENSION
from tests.support.services import ServiceFactory
from tests.support.waiting import health_statuses, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READINESS = ("", *SERVICE_NAMES)


def block_database(admin_conninfo: str, name: str, *, allow: bool) -> None:
    """Refuse (or allow again) new connections to ``name``; when refusing, end the open ones too."""
    with psycopg.connect(admin_conninfo, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {'true' if allow else 'false'}")
        if not allow:
            admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


async def test_readiness_follows_postgresql_and_liveness_stays(
    services: ServiceFactory, database_url: str, postgres_server: EmbeddedPostgres
) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    central = services.make(
        "central",
        "central",
        {
            "deploymentMode": "central",
            "postgresql": {"url": database_url},
            "sync": {"listenPort": 0},
            "telemetry": {"metricsPort": 0},
            "vectorDatabase": {"dimension": TEST_VECTOR_DIMENSION},
        },
    ).start()
    try:
        async with aio.insecure_channel(central.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert await health_statuses(health, READINESS) == {SERVING}
            assert await health_statuses(health, (LIVENESS_SERVICE,)) == {SERVING}

            block_database(postgres_server.conninfo(), name, allow=False)

            async def not_ready() -> bool:
                return await health_statuses(health, READINESS) == {NOT_SERVING}

            await wait_until(not_ready, "central reports NOT_SERVING without its database")
            assert await health_statuses(health, (LIVENESS_SERVICE,)) == {SERVING}

            block_database(postgres_server.conninfo(), name, allow=True)

            async def ready() -> bool:
                return await health_statuses(health, READINESS) == {SERVING}

            await wait_until(ready, "central is SERVING again once its database is back")
            assert await health_statuses(health, (LIVENESS_SERVICE,)) == {SERVING}
    finally:
        block_database(postgres_server.conninfo(), name, allow=True)  # so the fixture can drop it
    assert central.stop() == 0
    log = central.log_text()
    assert log.count("PostgreSQL unreachable") == 1
    assert log.count("PostgreSQL reachable again") == 1
