"""The TypeScript client (clients/typescript): its generated code is exactly what
``buf generate --template buf.gen.ts.yaml`` produces, it type-checks with ``tsc``,
and its smoke program talks to a real central and a real edge.

Needs ``node``; the package's npm dependencies (including protoc-gen-es and tsc)
are installed with ``npm ci`` when ``clients/typescript/node_modules`` is missing
or older than the lockfile.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "typescript"
GENERATED = PACKAGE / "src" / "gen"
BUF = ROOT / "node_modules" / ".bin" / "buf"
TSC = PACKAGE / "node_modules" / ".bin" / "tsc"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed; the TypeScript client needs Node 20+")


def _run(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def _dependencies_current() -> bool:
    installed = PACKAGE / "node_modules" / ".package-lock.json"
    lock = PACKAGE / "package-lock.json"
    return installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime and TSC.exists()


@pytest.fixture(scope="module")
def node_package() -> Path:
    """clients/typescript with its npm dependencies installed (``npm ci``, from the lockfile)."""
    if not _dependencies_current():
        assert NPM is not None, "npm is missing although node is installed"
        result = _run([NPM, "ci", "--no-audit", "--no-fund"], PACKAGE, timeout=280)
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return PACKAGE


@pytest.fixture(scope="module")
def compiled(node_package: Path) -> Path:
    """The package compiled by ``tsc`` into dist/ (a type error fails here)."""
    shutil.rmtree(node_package / "dist", ignore_errors=True)
    result = _run([str(TSC), "-p", "tsconfig.json"], node_package)
    assert result.returncode == 0, f"tsc failed:\n{result.stdout}\n{result.stderr}"
    smoke = node_package / "dist" / "examples" / "smoke.js"
    assert smoke.exists()
    return smoke


def _differences(left: Path, right: Path) -> list[str]:
    comparison = filecmp.dircmp(left, right)
    found = [f"only in {left}: {name}" for name in comparison.left_only]
    found += [f"only in {right}: {name}" for name in comparison.right_only]
    # dircmp compares by stat signature first; compare bytes for every common file.
    for name in comparison.common_files:
        if (left / name).read_bytes() != (right / name).read_bytes():
            found.append(f"differs: {left / name}")
    for name in comparison.common_dirs:
        found += _differences(left / name, right / name)
    return found


def test_generated_typescript_is_fresh(node_package: Path, tmp_path: Path) -> None:
    assert BUF.exists(), "buf is missing: run `npm ci` in the repository root (scripts/bootstrap does)"
    result = _run([str(BUF), "generate", "--template", "buf.gen.ts.yaml", "-o", str(tmp_path)], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    fresh = tmp_path / "clients" / "typescript" / "src" / "gen"
    assert sorted(p.relative_to(fresh).as_posix() for p in fresh.rglob("*_pb.ts")) == [
        "aeterna/edge/v1/edge_pb.ts",
        "aeterna/memory/v1/memory_pb.ts",
        "aeterna/policy/v1/decision_pb.ts",
        "aeterna/policy/v1/policy_pb.ts",
        "aeterna/sync/v1/sync_pb.ts",
    ]
    differences = _differences(GENERATED, fresh)
    assert not differences, (
        "clients/typescript/src/gen differs from `buf generate --template buf.gen.ts.yaml`; regenerate and commit:\n"
        + "\n".join(differences)
    )


def test_package_compiles(compiled: Path) -> None:
    assert (compiled.parent.parent / "src" / "index.d.ts").exists()


def test_type_error_against_generated_types_fails_compile(node_package: Path, tmp_path: Path) -> None:
    """The compile check bites: a call that does not match the generated request type is an error."""
    bad = node_package / "examples" / f"type-error-check-{tmp_path.name}.ts"
    bad.write_text(
        'import { createEdgeClient } from "../src/index.js";\n'
        'const edge = createEdgeClient("127.0.0.1:1", { agentId: "a" });\n'
        "export const call = edge.authorize({ principal: 42 });\n"
    )
    try:
        result = _run([str(TSC), "-p", "tsconfig.json", "--noEmit"], node_package)
    finally:
        bad.unlink()
    assert result.returncode != 0
    assert "TS2322" in result.stdout, result.stdout


TENANT = "acme"


@pytest.fixture
def pair(
    start_central: Callable[..., ServiceProcess], start_edge: Callable[..., ServiceProcess], tmp_path: Path
) -> tuple[ServiceProcess, ServiceProcess]:
    """A central, and an edge serving tenant "acme" (so the client's tenant metadata is what lets it in)."""
    central = start_central()
    edge_section = {
        "agentId": "edge-ts",
        "region": "eu-central-1",
        "tenantId": TENANT,
        "dataDir": str(tmp_path / "edge-ts" / "data"),
        "listenPort": 0,
    }
    return central, start_edge(central, name="edge-ts", region="eu-central-1", edge=edge_section)


def _smoke(smoke: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    assert NODE is not None
    result = _run([NODE, str(smoke), *args], PACKAGE, timeout=120)
    try:
        summary = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"smoke printed no JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.returncode, summary, result.stderr


def test_node_client_against_live_edge_and_central(compiled: Path, pair: tuple[ServiceProcess, ServiceProcess]) -> None:
    central, edge = pair
    code, summary, stderr = _smoke(
        compiled,
        "--edge",
        edge.target,
        "--central",
        central.target,
        "--agent-id",
        "ts-agent",
        "--tenant-id",
        TENANT,
        "--publish-policy",
        "--flush",
    )
    assert code == 0, json.dumps(summary, indent=2) + stderr
    assert summary["ok"] is True
    assert summary["gzip"] is True

    session = summary["edge"]["session"]
    assert session["matches"] is True
    assert session["read"] == session["written"]
    assert session["read"]["state"] == {
        "language": "typescript",
        "turn": 2,
        "tags": ["smoke", "grpc"],
        "nested": {"ok": True},
    }
    assert [m["content"] for m in session["read"]["messages"]] == [
        "Hello from the TypeScript client",
        "Hello, Node!",
    ]
    assert session["tenantId"] == TENANT
    assert len(session["checksum"]) == 64

    published = summary["central"]["publishedVersion"]
    assert published >= 1
    assert summary["central"]["bundle"]["version"] == published
    assert summary["central"]["bundle"]["policyIds"] == ["ts-smoke.cedar"]

    status = summary["edge"]["status"]
    assert status["agentId"] == "edge-ts"
    assert status["region"] == "eu-central-1"
    assert status["linkState"] == "ONLINE"
    assert status["policyVersion"] == published

    allowed, denied = summary["edge"]["authorize"]["allowed"], summary["edge"]["authorize"]["denied"]
    assert allowed["effect"] == "ALLOW"
    assert allowed["policyVersion"] == published
    assert allowed["decisionId"]
    assert allowed["offline"] is False
    assert denied["effect"] == "DENY"
    assert denied["policyVersion"] == published

    assert isinstance(summary["central"]["edges"], list)
    at_central = summary["central"]["session"]
    assert at_central["matches"] is True
    assert at_central["agentId"] == "edge-ts"
    assert summary["edge"]["flush"]["itemsAcked"] >= 1


def test_node_client_reports_failure_with_nonzero_exit(
    compiled: Path, pair: tuple[ServiceProcess, ServiceProcess]
) -> None:
    """A failing step gives a non-zero exit and names the step: here central is the edge's port."""
    _central, edge = pair
    code, summary, _stderr = _smoke(compiled, "--edge", edge.target, "--central", edge.target)
    assert code == 1
    assert summary["ok"] is False
    assert summary["step"].startswith("central.")
    assert summary["error"]["kind"] == "rpc"
    assert summary["error"]["code"] == "Unimplemented"
