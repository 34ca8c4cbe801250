"""``aeterna health``: is the local central or edge SERVING? For the image's HEALTHCHECK.

One ``grpc.health.v1.Health/Check`` call with a short deadline; exit status 0
when the answer is SERVING, 1 otherwise (NOT_SERVING, unknown service, no
answer, a bad config or option: Docker reserves 2), and one line of output
either way. The target defaults to the process configured by ``--config`` /
``$AETERNA_CONFIG``: ``telemetry.healthPort`` when set (plaintext, also when
TLS is on), else the edge's ``edge.listenPort`` or central's ``sync.listenPort``
(by ``deploymentMode``; hybrid means the edge). The TLS options are the other
commands' (``aeterna_cli.connection``) and the call goes through the same
``open_channel``; health needs no credential, so none is sent.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from aeterna_cli.connection import TLS_REASONS, Connection, UsageError, add_connection_options, own_target
from aeterna_cli.output import add_json, print_json

if TYPE_CHECKING:
    from aeterna_shared.config.model import AeternaConfig

EXIT_SERVING = 0
EXIT_UNHEALTHY = 1


def default_target(config: AeternaConfig) -> tuple[str, bool]:
    """``(host:port, tls)`` of the configured process's health service."""
    target, use_tls = own_target(config)
    if config.telemetry.health_port is not None:
        host = target.rpartition(":")[0]
        return f"{host}:{config.telemetry.health_port}", False
    return target, use_tls


async def _check(connection: Connection, service: str) -> str:
    import grpc  # noqa: PLC0415 - keeps `aeterna --help` fast
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    from aeterna_cli.connection import describe  # noqa: PLC0415
    from aeterna_client.channel import open_channel  # noqa: PLC0415
    from aeterna_client.credentials import NoCredentials  # noqa: PLC0415

    async with open_channel(connection.target, connection.settings, credentials=NoCredentials()) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=connection.settings.unary_timeout
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            if code == grpc.StatusCode.UNAVAILABLE and connection.settings.tls:
                # A refused TLS handshake says why (a missing client certificate, an untrusted server).
                line = await asyncio.to_thread(describe, error, connection)
                if any(f"[{reason}]" in line for reason in TLS_REASONS):
                    return f"{code.name} ({line.split(': ', 1)[1]})"
            return str(code.name)
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return name


def check(connection: Connection, service: str) -> str:
    """The serving status of ``service`` ("SERVING", "NOT_SERVING", ...) or the failure's code."""
    return asyncio.run(_check(connection, service))


def run(args: argparse.Namespace) -> int:
    """``aeterna health``."""
    from aeterna_cli.connection import resolve  # noqa: PLC0415
    from aeterna_shared.config.loader import ConfigError  # noqa: PLC0415

    try:  # a HEALTHCHECK must exit 0 or 1 (Docker reserves 2), so a bad config is "unhealthy" too
        connection = resolve(args)
    except ConfigError as error:
        print(f"cannot check health: {error.message.splitlines()[0]}")
        return EXIT_UNHEALTHY
    except (UsageError, OSError, ValueError) as error:
        print(f"cannot check health: {error}")
        return EXIT_UNHEALTHY
    status = check(connection, args.service)
    if args.json:
        code, _, why = status.partition(" (")
        print_json({"target": connection.target, "service": args.service, "status": code, "reason": why[:-1] or None})
    else:
        shown = args.service or '"" (readiness)'
        print(f"{connection.target} {shown}: {status}")
    return EXIT_SERVING if status == "SERVING" else EXIT_UNHEALTHY


def add_commands(subparsers: Any) -> None:
    """Register ``aeterna health``."""
    parser = subparsers.add_parser(
        "health",
        help="Check a local central or edge over gRPC health (exit 0 when SERVING); the image's HEALTHCHECK.",
        description=(
            "Ask a central or edge for its grpc.health.v1 status: exit 0 when SERVING, 1 otherwise (also for a "
            "bad config or option), one line of output. Without --target it checks the process configured by "
            "--config ($AETERNA_CONFIG): telemetry.healthPort when set, else edge.listenPort or, for "
            "deploymentMode central, sync.listenPort, with the config's TLS. No credential is sent: health "
            "answers without one (a server requiring client certificates still needs --cert-file/--key-file)."
        ),
    )
    parser.add_argument(
        "--service",
        default="",
        help='health service name: "" (default) is readiness, aeterna.liveness is liveness',
    )
    add_json(parser)
    add_connection_options(parser, peer="health", timeout=3.0, credentials=False)
    parser.set_defaults(handler=run)
