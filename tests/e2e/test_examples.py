"""The example configurations and policies in examples/ work as the README says:
they load, a central and an edge run from them, and the example policies decide.

The example files run as written, from a copy of examples/ in the test's own
folder and from another working directory (``aeterna edge --config
examples/edge.yaml`` must not depend on where it is run: relative paths in a
config file are relative to that file). Only their fixed ports are moved, via
``AETERNA_*`` env overrides, so that the test never collides with anything
else on the machine.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.policy.v1 import decision_pb2

from aeterna_cli.processes import ServiceProcess, child_env
from aeterna_shared.config import env_name, load_config
from tests.support.services import ServiceFactory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _copy_examples(tmp_path: Path) -> Path:
    """examples/ copied unchanged into the test's folder (their data goes beside them, as for a user)."""
    return Path(shutil.copytree(EXAMPLES, tmp_path / "examples"))


def _run_example(services: ServiceFactory, kind: str, config: Path, **env: str) -> ServiceProcess:
    """``aeterna <kind> --config <config>`` on the file as written, with ``env`` as AETERNA_* overrides."""
    home = services.root / f"{kind}-run"
    home.mkdir(exist_ok=True)
    service = ServiceProcess(
        kind=kind,
        config_path=config,
        ready_path=home / "ready.json",
        log_path=home / "service.log",
        env={**child_env(), **env},
    )
    services.started.append(service)  # stopped with the others at the end of the test
    return service


def test_example_configs_load() -> None:
    central = load_config(EXAMPLES / "central.yaml", {})
    edge = load_config(EXAMPLES / "edge.yaml", {})
    assert central.sync.listen_port == edge.sync.central_server.port == 8081
    assert central.aeterna.offline.conflict_resolution_by_action == {'Action::"approve"': "manual"}
    # Relative paths in a file are relative to the file, wherever it is loaded from.
    assert central.central.data_dir == str(EXAMPLES / "var" / "central")
    assert edge.edge.data_dir == str(EXAMPLES / "var" / "edge")


def test_relative_paths_from_the_environment_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(
        EXAMPLES / "edge.yaml",
        {env_name(("edge", "data_dir")): "mine/edge", env_name(("tls", "ca_file")): "certs/ca.pem"},
    )
    assert config.edge.data_dir == str(tmp_path / "mine" / "edge")
    assert config.tls.ca_file == str(tmp_path / "certs" / "ca.pem")


async def test_example_central_edge_and_policies(
    services: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = _copy_examples(tmp_path)
    # The README's commands, word for word: `aeterna central --config examples/central.yaml` and
    # `aeterna edge --config examples/edge.yaml`, from the folder above examples/ (the services
    # inherit this working directory, which is not the folder of their config files).
    monkeypatch.chdir(tmp_path)
    no_metrics_port = {env_name(("telemetry", "metrics_port")): "0"}
    central = _run_example(
        services,
        "central",
        Path("examples/central.yaml"),
        **{env_name(("sync", "listen_port")): "0"},
        **no_metrics_port,
    ).start()
    edge = _run_example(
        services,
        "edge",
        Path("examples/edge.yaml"),
        **{env_name(("edge", "listen_port")): "0"},
        **{env_name(("sync", "central_server", "port")): str(central.port)},
        **no_metrics_port,
    ).start()
    # Their data went where the example files say: beside them, not into the working directory.
    assert (examples / "var" / "central" / "postgres" / "pgdata").is_dir()
    assert (examples / "var" / "edge" / "redis-sessions").is_dir()
    assert not (tmp_path / "var").exists()
    publish = [
        sys.executable, "-m", "aeterna_cli.main", "policy", "publish", str(examples / "policies"),
        "--target", central.target,
    ]  # fmt: skip
    published = await asyncio.to_thread(
        subprocess.run, publish, capture_output=True, text=True, timeout=60, check=False
    )
    assert published.returncode == 0, published.stderr

    async with grpc.aio.insecure_channel(edge.target) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)

        async def decide(principal: str, amount: int) -> edge_pb2.AuthorizeResponse:
            request = edge_pb2.AuthorizeRequest(
                principal=f'User::"{principal}"', action='Action::"approve"', resource='Invoice::"inv-1"'
            )
            request.context.update({"amount": amount})
            return await stub.Authorize(request)

        deadline = time.monotonic() + 60  # a bound on the wait, not a measurement
        reply = await decide("alice", 500)
        while not reply.policy_version and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            reply = await decide("alice", 500)
        assert reply.effect == decision_pb2.EFFECT_ALLOW
        assert list(reply.determining_policies) == ["approve"]
        assert (await decide("alice", 20_000)).effect == decision_pb2.EFFECT_DENY
        assert (await decide("mallory", 500)).effect == decision_pb2.EFFECT_DENY
