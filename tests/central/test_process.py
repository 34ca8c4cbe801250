"""``aeterna central`` as a real process: embedded PostgreSQL, migrations, health, a sync, graceful stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from central_svc.store.embedded_postgres import EmbeddedPostgres
from tests.central.conftest import Edge, make_session


async def test_central_process_on_embedded_postgres(services: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "central-data"
    central = services.make(
        "central",
        "central",
        {
            "central": {"dataDir": str(data_dir)},
            "sync": {"listenPort": 0},
            "telemetry": {"metricsPort": 0},
            "vectorDatabase": {"dimension": 8},
        },
    ).start()
    async with aio.insecure_channel(central.target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        edge = Edge("edge-process")
        call = sync_pb2_grpc.SyncServiceStub(channel).SyncSessions(
            iter([edge.sessions([make_session("s1")])]), metadata=edge.metadata
        )
        [response] = [r async for r in call]
        assert response.ack.status == sync_pb2.ACK_STATUS_ACCEPTED
        got = await sync_pb2_grpc.SyncServiceStub(channel).GetSession(
            sync_pb2.GetSessionRequest(session_id="s1"), metadata=edge.metadata
        )
        assert got.session.session_id == "s1"
    assert central.stop() == 0
    # Graceful stop also stops the PostgreSQL central started for itself.
    assert not EmbeddedPostgres(data_dir / "postgres").is_running()
    assert "central ready" in central.log_text()
