"""The client tests start a real central and edge the way the end-to-end tests do."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import start_central, start_edge
from tests.support.services import ServiceProcess

__all__ = [
    "ROOT",
    "SMOKE_STEPS",
    "StartPair",
    "assert_smoke_steps",
    "doc_snippets",
    "parse_smoke_output",
    "require_tools",
    "source_region",
    "start_central",
    "start_edge",
    "start_tenant_pair",
]

ROOT = Path(__file__).resolve().parents[2]

# The steps the Go and Java smoke programs print, in order, with --publish-policy.
SMOKE_STEPS = [
    "health",
    "publish",
    "watch",
    "edge-status",
    "put-session",
    "get-session",
    "authorize",
    "error-info",
    "done",
]

StartPair = Callable[[str, str], tuple[ServiceProcess, ServiceProcess]]


def _present(tool: str) -> bool:
    return Path(tool).exists() if tool.startswith("/") else shutil.which(tool) is not None


def require_tools(tools: dict[str, str], what: str) -> None:
    """Skip when a tool (a command, or an absolute path) is missing, naming the Debian package that
    provides it; fail instead when ``CI`` is set: CI must build and run every client, not skip it."""
    missing = [f"{tool} (Debian package {package})" for tool, package in tools.items() if not _present(tool)]
    if not missing:
        return
    message = f"{what} needs {', '.join(missing)}; scripts/bootstrap installs them"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so this does not skip: {message}")
    pytest.skip(message)


@pytest.fixture
def start_tenant_pair(
    database_url: str,
    start_central: Callable[..., ServiceProcess],
    start_edge: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> StartPair:
    """``start(edge_name, tenant)``: a central, and an edge named ``edge_name`` serving ``tenant``
    (so the client's tenant metadata is what lets it in).

    ``database_url`` comes first so that it is set up before the processes and torn down after
    them: an edge stopping while central's database is already gone spends 15 s on its final flush.
    """
    assert database_url

    def start(edge_name: str, tenant: str) -> tuple[ServiceProcess, ServiceProcess]:
        central = start_central()
        edge_section = {
            "agentId": edge_name,
            "region": "eu-central-1",
            "tenantId": tenant,
            "dataDir": str(tmp_path / edge_name / "data"),
            "listenPort": 0,
        }
        return central, start_edge(central, name=edge_name, region="eu-central-1", edge=edge_section)

    return start


def parse_smoke_output(stdout: str) -> dict[str, dict[str, str]]:
    """``OK <step> key=value ...`` lines as ``{step: {key: value}}``; any other line fails the test."""
    steps: dict[str, dict[str, str]] = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"OK (\S+)((?: \S+=\S*)*)", line)
        assert match, f"unexpected output line {line!r} in:\n{stdout}"
        steps[match[1]] = dict(pair.split("=", 1) for pair in match[2].split())
    return steps


def source_region(path: Path, name: str) -> str:
    """The lines of ``path`` between ``--8<-- [start:name]`` and ``--8<-- [end:name]``, dedented."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().endswith(f"--8<-- [start:{name}]"))
    end = next(i for i, line in enumerate(lines) if line.strip().endswith(f"--8<-- [end:{name}]"))
    body = lines[start + 1 : end]
    while body and not body[-1].strip():
        body.pop()
    indent = min((len(line) - len(line.lstrip()) for line in body if line.strip()), default=0)
    return "\n".join(line[indent:] for line in body)


def doc_snippets(doc: Path, source_prefix: str) -> dict[tuple[str, str], str]:
    """Code blocks of ``doc`` preceded by ``<!-- snippet: PATH#REGION -->`` with PATH under ``source_prefix``,
    as ``{(PATH, REGION): block text}``."""
    pattern = re.compile(r"<!-- snippet: (\S+)#(\S+) -->\n```[a-z]*\n(.*?)\n```", re.DOTALL)
    return {
        (match[1], match[2]): match[3]
        for match in pattern.finditer(doc.read_text())
        if match[1].startswith(source_prefix)
    }


def assert_smoke_steps(steps: dict[str, dict[str, str]], *, tenant: str, policy_id: str) -> None:
    """What the Go and Java smoke programs must have printed against a fresh pair with --publish-policy."""
    assert list(steps) == SMOKE_STEPS
    assert steps["health"] == {"edge": "SERVING", "central": "SERVING"}
    version = steps["publish"]["version"]
    assert int(version) >= 1
    assert steps["watch"] == {"version": version, "policies": policy_id}
    assert steps["edge-status"] == {"link": "LINK_STATE_ONLINE", "policy_version": version}
    written, read = steps["put-session"], steps["get-session"]
    assert re.fullmatch(r"[0-9a-f]{64}", written["checksum"]), written
    assert read == {"id": written["id"], "source": "SESSION_SOURCE_LOCAL", "messages": "2", "tenant": tenant}
    assert steps["authorize"] == {"allow": "ALLOW", "deny": "DENY", "policy_version": version}
    assert steps["error-info"] == {"code": "NOT_FOUND", "reason": "SESSION_NOT_FOUND", "domain": "aeterna.dev"}
