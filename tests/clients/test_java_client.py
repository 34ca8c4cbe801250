"""The Java client (clients/java): generated from protos/ with protoc's Java generator and Debian's
grpc_java_plugin into a temporary directory (never committed), compiled with javac against Debian
12's grpc-java 1.41 jars, and run against a real central and edge; docs/clients.md shows exactly
this program and script.

Needs the Debian packages scripts/bootstrap installs (default-jdk-headless, protobuf-compiler,
protobuf-compiler-grpc-java-plugin, libgrpc-java, libprotobuf-java, libnetty-java, libguava-java,
libperfmark-java, libgoogle-common-protos-java, libjctools-java, libgeronimo-annotation-1.3-spec-java, libgoogle-gson-java,
grpc-proto). google/rpc/error_details.proto (ErrorInfo) comes from the googleapis-common-protos wheel
in .venv. Without the packages the tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import subprocess

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

CLIENT = ROOT / "clients" / "java"
BUILD = CLIENT / "build.sh"
DOC = ROOT / "docs" / "clients.md"
TENANT = "acme"

TOOLS = {
    "java": "default-jdk-headless",
    "javac": "default-jdk-headless",
    "protoc": "protobuf-compiler",
    "/usr/bin/grpc_java_plugin": "protobuf-compiler-grpc-java-plugin",
    "/usr/share/grpc-proto/grpc/health/v1/health.proto": "grpc-proto",
    "/usr/share/java/grpc-netty.jar": "libgrpc-java",
    "/usr/share/java/protobuf.jar": "libprotobuf-java",
    "/usr/share/java/netty-codec-http2.jar": "libnetty-java",
    "/usr/share/java/guava.jar": "libguava-java",
    "/usr/share/java/perfmark-api.jar": "libperfmark-java",
    "/usr/share/java/proto-google-common-protos.jar": "libgoogle-common-protos-java",
    "/usr/share/java/jctools-core.jar": "libjctools-java",
    "/usr/share/java/geronimo-annotation-1.3-spec.jar": "libgeronimo-annotation-1.3-spec-java",
    "/usr/share/java/gson.jar": "libgoogle-gson-java",
}


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def java_smoke(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """clients/java/build.sh into a temporary directory: generate, then ``javac``; the command that runs it."""
    require_tools(TOOLS, "The Java client")
    out = tmp_path_factory.mktemp("java-client")
    result = _run(["sh", str(BUILD), str(out)], timeout=280)
    assert result.returncode == 0, f"clients/java/build.sh failed:\n{result.stdout}\n{result.stderr}"
    for generated in [
        "aeterna/edge/v1/Edge.java",
        "aeterna/edge/v1/EdgeServiceGrpc.java",
        "aeterna/policy/v1/PolicyServiceGrpc.java",
        "aeterna/sync/v1/SyncServiceGrpc.java",
        "io/grpc/health/v1/HealthGrpc.java",
        "com/google/rpc/ErrorInfo.java",
    ]:
        assert (out / "gen" / generated).is_file(), generated
    assert (out / "classes" / "aeterna" / "smoke" / "Smoke.class").is_file()
    return ["java", "-cp", (out / "classpath").read_text().strip(), "aeterna.smoke.Smoke"]


def test_docs_show_the_java_program_and_build_commands() -> None:
    """Every Java snippet in docs/clients.md is a region of the program or the build script, verbatim."""
    snippets = doc_snippets(DOC, "clients/java/")
    assert set(snippets) >= {
        ("clients/java/build.sh", "build"),
        ("clients/java/src/aeterna/smoke/Smoke.java", "channel"),
        ("clients/java/src/aeterna/smoke/Smoke.java", "stubs"),
        ("clients/java/src/aeterna/smoke/Smoke.java", "watch"),
        ("clients/java/src/aeterna/smoke/Smoke.java", "error-info"),
    }
    for (path, region), text in snippets.items():
        assert text == source_region(ROOT / path, region), f"docs/clients.md differs from {path}#{region}"


def test_java_client_against_live_edge_and_central(java_smoke: list[str], start_tenant_pair: StartPair) -> None:
    central, edge = start_tenant_pair("edge-java", TENANT)
    flags = ["--edge", edge.target, "--central", central.target, "--agent-id", "java-agent", "--tenant-id", TENANT]
    result = _run([*java_smoke, *flags, "--publish-policy"])
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert_smoke_steps(parse_smoke_output(result.stdout), tenant=TENANT, policy_id="java-smoke.cedar")


def test_java_client_exits_nonzero_on_failure(java_smoke: list[str]) -> None:
    """Nothing listens on the targets: the first step fails, is named, and the exit code is 1."""
    result = _run([*java_smoke, "--edge", "127.0.0.1:1", "--central", "127.0.0.1:1"], timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("FAIL health: "), result.stdout
    assert "UNAVAILABLE" in result.stdout
