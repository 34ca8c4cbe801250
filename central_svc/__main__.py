"""``python -m central_svc`` / ``aeterna central``: the one place where central is wired together."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

import prometheus_client

from aeterna_security.production import DEVELOPMENT_HELP, EXIT_REFUSED, refusal, role_refusal
from aeterna_server.capacity import raise_open_file_limit
from aeterna_server.server import start_health_server
from aeterna_shared.config import AeternaConfig, load_config
from aeterna_shared.logs import configure_logging
from central_svc.deps import build_deps, embedded_postgres
from central_svc.metrics import CentralMetrics
from central_svc.server import create_server
from central_svc.snapshots import SnapshotScheduler
from central_svc.store.advisory_lock import SNAPSHOT_LOCK_KEY, AdvisoryLock
from central_svc.store.database import Database
from central_svc.store.embedded_postgres import EmbeddedPostgres
from central_svc.store.migrate import upgrade
from interceptors.telemetry import MetricsEndpoint, install_tracer_provider, serve_metrics, shutdown_tracer_provider

_log = logging.getLogger("central")

GRACE_SECONDS = 10.0


def write_ready_file(path: Path, document: dict[str, int]) -> None:
    """Write JSON atomically (tmp + rename), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)


async def serve(config: AeternaConfig, ready_file: Path | None = None) -> int:
    """Run central until SIGTERM/SIGINT; return the exit code."""
    owned: EmbeddedPostgres | None = None
    url = config.postgresql.url
    if url is None:
        owned = embedded_postgres(config.central)
        _log.info("starting embedded PostgreSQL in %s", owned.root)
        await asyncio.to_thread(owned.start)
        url = owned.url
    try:
        _log.info("running database migrations")
        # Migrations hold a session-level advisory lock: directly, never through a pooler.
        migrate_url = config.postgresql.direct_url or url
        await asyncio.to_thread(upgrade, migrate_url, vector_dimension=config.vector_database.dimension)
        database = Database(url, max_size=config.postgresql.pool_size, direct_url=config.postgresql.direct_url)
        await database.open()
        try:
            return await _serve_on(config, database, ready_file)
        finally:
            await database.close()
    finally:
        if owned is not None:
            _log.info("stopping embedded PostgreSQL")
            await asyncio.to_thread(owned.stop)


async def _serve_on(config: AeternaConfig, database: Database, ready_file: Path | None) -> int:
    deps = await build_deps(config, database)
    deps.listener.start()
    _log.info("policy listener starting (LISTEN/NOTIFY)")
    await asyncio.wait_for(deps.listener.connected.wait(), timeout=30)
    server = create_server(config, deps)
    await server.start()
    port = server.port
    _log.info("central serving on %s:%d", config.central.listen_host, port)
    # One registry per process: the interceptors' RPC metrics and central's
    # gauges are served together on one /metrics endpoint.
    registry = prometheus_client.REGISTRY
    metrics = CentralMetrics(registry, deps)
    metrics.start()
    metrics_port = 0
    endpoint: MetricsEndpoint | None = None
    if config.telemetry.metrics_enabled:
        endpoint = serve_metrics(config.telemetry, registry=registry)
        metrics_port = endpoint.port
        _log.info("metrics on %s:%d/metrics", config.telemetry.metrics_host, metrics_port)
    health_server = None
    if config.telemetry.health_port is not None:
        health_server, health_port = await start_health_server(
            server.health, config.central.listen_host, config.telemetry.health_port
        )
        _log.info("plaintext health endpoint for probes on port %d", health_port)
    # Scheduled snapshots on one replica only: whichever holds the snapshot advisory lock.
    snapshots = SnapshotScheduler(
        deps.episode_store,
        deps.snapshot_dir,
        config.sync.episodic_memory.snapshot_interval,
        lock=AdvisoryLock(database.direct_conninfo, SNAPSHOT_LOCK_KEY),
        retention=config.central.snapshot_retention,
        on_leading=metrics.set_snapshot_leader,
    )
    snapshots.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ready_file is not None:
        write_ready_file(ready_file, {"pid": os.getpid(), "port": port, "metrics_port": metrics_port})
    _log.info("central ready")
    await stop.wait()
    _log.info("shutting down: NOT_SERVING, then draining for up to %.0f s", GRACE_SECONDS)
    await server.stop(GRACE_SECONDS)  # NOT_SERVING, watch streams ended, calls in flight drained
    await snapshots.stop()
    await metrics.stop()
    await deps.listener.stop()
    if health_server is not None:
        await health_server.stop(0)
    if endpoint is not None:
        endpoint.close()
    _log.info("central stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    """Handler of ``aeterna central``."""
    config = load_config(args.config, os.environ)
    if getattr(args, "development", False):
        config = config.model_copy(update={"development": True})
    # Before anything starts (no embedded PostgreSQL for a refused configuration).
    refused = role_refusal(config, "central", args.config) or refusal(config, "central")
    if refused is not None:
        print(refused, file=sys.stderr)
        return EXIT_REFUSED
    configure_logging(config, "central")
    raise_open_file_limit()  # one socket per edge: 10,000 edges need more than the usual 1,024
    tracer_provider = install_tracer_provider(config.telemetry, "central")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(serve(config, Path(args.ready_file) if args.ready_file else None))
        return 130
    finally:
        shutdown_tracer_provider(tracer_provider)  # the last spans leave before the process does


def migrate(args: argparse.Namespace) -> int:
    """Handler of ``aeterna central migrate``: upgrade the schema of ``postgresql.url`` and exit.

    It refuses to run without a URL: migrating a throw-away embedded database
    from a one-shot Job would look like success and change nothing that lasts.
    """
    config = load_config(args.config, os.environ)
    configure_logging(config, "central")
    install_tracer_provider(config.telemetry, "central")
    if config.postgresql.url is None:
        print("error: postgresql.url is not set; 'central migrate' needs the database to migrate", file=sys.stderr)
        return 2
    upgrade(config.postgresql.url, vector_dimension=config.vector_database.dimension)
    print("database schema is up to date")
    return 0


def main() -> int:
    """``python -m central_svc``."""
    parser = argparse.ArgumentParser(prog="python -m central_svc", description="Run Aeterna central.")
    parser.add_argument("--config", help="YAML config file (the spec's keys)")
    parser.add_argument("--ready-file", help="write {pid, port, metrics_port} here once serving")
    parser.add_argument("--development", action="store_true", help=DEVELOPMENT_HELP)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
