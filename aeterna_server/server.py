"""Building a grpc.aio server the same way for central and edge.

Both services get gzip (unless configured off), the standard health service,
server reflection (v1 and v1alpha, with method lookups: ``aeterna_server.reflection``), a
bounded receive size, and the interceptor chain in the order given (the first
is outermost).

Health has two meanings, told apart by service name:

* readiness: the whole server ("") and each service's full name. SERVING
  only while the process can do its work (``aeterna_server.readiness`` polls
  the process's dependency and flips these), NOT_SERVING while it cannot and
  from the start of a graceful shutdown, so balancers send calls elsewhere;
* liveness: ``aeterna.liveness`` (``LIVENESS_SERVICE``). SERVING for as long
  as the process runs, whatever its dependencies do: restarting a process
  because its database is down cures nothing. It is answered by the event
  loop like every call, so a wedged process lets the probe time out.

A server may also be given a maximum connection age (central is, so that
long-lived edge streams move over to replicas an autoscaler adds): gRPC core
sends GOAWAY once a connection is that old, give or take 10 %, and closes it
after the grace period; clients reconnect for their next call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aeterna_server.reflection import enable_reflection

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
LIVENESS_SERVICE = "aeterna.liveness"
"""Health service name that is SERVING for as long as the process runs (its dependencies do not matter)."""

Registrar = Callable[[Any, aio.Server], None]


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer, the generated function that registers it, and its full name."""

    register: Registrar
    servicer: Any
    full_name: str


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health ships no types
    """grpc's health servicer whose graceful shutdown leaves ``LIVENESS_SERVICE`` SERVING.

    A process draining its calls is still alive: its liveness probe must not
    fail (and get it killed) before it has finished.
    """

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for every name but ``LIVENESS_SERVICE``, for good (later ``set`` calls are ignored)."""
        await super().enter_graceful_shutdown()
        await self._set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)


def compression_of(name: str) -> grpc.Compression:
    """Map the config's compression name to gRPC's."""
    return grpc.Compression.Gzip if name == "gzip" else grpc.Compression.NoCompression


def build_server(
    bindings: Sequence[ServiceBinding],
    *,
    interceptors: Sequence[aio.ServerInterceptor] = (),
    compression: str = "gzip",
    max_message_bytes: int = 10 * 1024 * 1024,
    max_concurrent_streams: int | None = None,
    max_connection_age_ms: int = 0,
    max_connection_age_grace_ms: int = 0,
) -> tuple[aio.Server, health.aio.HealthServicer]:
    """A server with the bindings, health (all SERVING once started) and reflection.

    ``max_connection_age_ms`` > 0 sends GOAWAY on connections that old (gRPC
    core jitters it by ±10 %), and ``max_connection_age_grace_ms`` > 0 bounds
    how long calls still open on such a connection may go on; 0 leaves gRPC's
    default (unlimited).
    """
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]
    if max_concurrent_streams is not None:
        options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
    if max_connection_age_ms > 0:
        options.append(("grpc.max_connection_age_ms", max_connection_age_ms))
        if max_connection_age_grace_ms > 0:
            options.append(("grpc.max_connection_age_grace_ms", max_connection_age_grace_ms))
    server = aio.server(
        interceptors=list(interceptors),
        compression=compression_of(compression),
        options=options,
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [binding.full_name for binding in bindings]
    for binding in bindings:
        binding.register(binding.servicer, server)
    enable_reflection([*names, HEALTH_SERVICE], server)
    return server, health_servicer


async def mark_serving(health_servicer: health.aio.HealthServicer, names: Sequence[str]) -> None:
    """Report SERVING for the whole server (""), each service and ``LIVENESS_SERVICE``."""
    for name in ["", *names, LIVENESS_SERVICE]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def mark_not_serving(health_servicer: health.aio.HealthServicer) -> None:
    """Report NOT_SERVING everywhere but liveness, first thing on shutdown, so balancers drain us."""
    await health_servicer.enter_graceful_shutdown()


def bind(
    server: aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind ``host:port`` (port 0 picks one) and return the bound port."""
    address = f"{host}:{port}"
    bound = (
        server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    )
    if bound == 0:
        raise OSError(f"cannot bind {address}")
    return bound


async def start_health_server(
    health_servicer: health.aio.HealthServicer, host: str, port: int
) -> tuple[aio.Server, int]:
    """A plaintext server answering only grpc.health.v1, for kubelet gRPC probes.

    Kubernetes' native gRPC probes cannot speak TLS, so when the main port
    requires TLS the chart probes this port instead (``telemetry.healthPort``).
    It shares the main server's health servicer, so both report the same state.
    """
    server = aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = bind(server, host, port)
    await server.start()
    return server, bound
