"""The Go client (clients/go): generated from protos/ with protoc and Debian's protoc-gen-go /
protoc-gen-go-grpc into a temporary GOPATH (never committed), built against Debian 12's grpc-go,
and run against a real central and edge; docs/clients.md shows exactly this program and script.

Needs the Debian packages scripts/bootstrap installs (golang-go, protobuf-compiler, protoc-gen-go,
protoc-gen-go-grpc, golang-google-grpc-dev, golang-google-protobuf-dev,
golang-github-golang-protobuf-1-5-dev). Without them the tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.clients.conftest import (
    ROOT,
    StartPair,
    assert_smoke_steps,
    doc_snippets,
    parse_smoke_output,
    require_tools,
    source_region,
)

CLIENT = ROOT / "clients" / "go"
BUILD = CLIENT / "build.sh"
DOC = ROOT / "docs" / "clients.md"
TENANT = "acme"

TOOLS = {
    "go": "golang-go",
    "protoc": "protobuf-compiler",
    "protoc-gen-go": "protoc-gen-go",
    "protoc-gen-go-grpc": "protoc-gen-go-grpc",
    "/usr/share/gocode/src/google.golang.org/grpc/clientconn.go": "golang-google-grpc-dev",
    "/usr/share/gocode/src/google.golang.org/protobuf/proto/proto.go": "golang-google-protobuf-dev",
    "/usr/share/gocode/src/google.golang.org/genproto/googleapis/rpc/errdetails": "golang-google-genproto-dev",
    # 1.3 (apt's default) compiles but panics on the first message; 1.4+ has registry.go.
    "/usr/share/gocode/src/github.com/golang/protobuf/proto/registry.go": "golang-github-golang-protobuf-1-5-dev",
}


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def go_smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/go/build.sh into a temporary GOPATH: generate, then ``go build`` (GOPATH mode, offline)."""
    require_tools(TOOLS, "The Go client")
    out = tmp_path_factory.mktemp("go-client")
    result = _run(["sh", str(BUILD), str(out)], timeout=280)
    assert result.returncode == 0, f"clients/go/build.sh failed:\n{result.stdout}\n{result.stderr}"
    gen = out / "src" / "aeterna.dev" / "gen"
    generated = sorted(p.relative_to(out / "src").as_posix() for p in gen.rglob("*.go"))
    assert generated == [
        "aeterna.dev/gen/aeterna/edge/v1/edge.pb.go",
        "aeterna.dev/gen/aeterna/edge/v1/edge_grpc.pb.go",
        "aeterna.dev/gen/aeterna/memory/v1/memory.pb.go",
        "aeterna.dev/gen/aeterna/policy/v1/decision.pb.go",
        "aeterna.dev/gen/aeterna/policy/v1/policy.pb.go",
        "aeterna.dev/gen/aeterna/policy/v1/policy_grpc.pb.go",
        "aeterna.dev/gen/aeterna/sync/v1/sync.pb.go",
        "aeterna.dev/gen/aeterna/sync/v1/sync_grpc.pb.go",
    ]
    return out / "bin" / "aeterna-go-smoke"


def test_docs_show_the_go_program_and_build_commands() -> None:
    """Every Go snippet in docs/clients.md is a region of the program or the build script, verbatim."""
    snippets = doc_snippets(DOC, "clients/go/")
    assert {key for key in snippets} >= {
        ("clients/go/build.sh", "build"),
        ("clients/go/smoke/main.go", "dial"),
        ("clients/go/smoke/main.go", "watch"),
        ("clients/go/smoke/main.go", "error-info"),
    }
    for (path, region), text in snippets.items():
        assert text == source_region(ROOT / path, region), f"docs/clients.md differs from {path}#{region}"
    assert "grpc.NewClient" not in DOC.read_text(), "Debian's grpc-go 1.33 has no grpc.NewClient"


def test_go_client_against_live_edge_and_central(go_smoke: Path, start_tenant_pair: StartPair) -> None:
    central, edge = start_tenant_pair("edge-go", TENANT)
    flags = ["-edge", edge.target, "-central", central.target, "-agent-id", "go-agent", "-tenant-id", TENANT]
    result = _run([str(go_smoke), *flags, "-publish-policy"])
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert_smoke_steps(parse_smoke_output(result.stdout), tenant=TENANT, policy_id="go-smoke.cedar")


def test_go_client_exits_nonzero_on_failure(go_smoke: Path) -> None:
    """Nothing listens on the targets: the first step fails, is named, and the exit code is 1."""
    result = _run([str(go_smoke), "-edge", "127.0.0.1:1", "-central", "127.0.0.1:1"], timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("FAIL health: "), result.stdout
    assert "Unavailable" in result.stdout
