"""The contract checks CI runs (scripts/check-contracts) pass on the repository and
fail when they should: a lint violation, a breaking change, stale generated code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "check-contracts"
SYNC_PROTO = Path("protos/aeterna/sync/v1/sync.proto")


def _copy_contracts(destination: Path) -> Path:
    destination.mkdir(parents=True)
    for name in ("buf.yaml", "buf.gen.yaml"):
        shutil.copy(ROOT / name, destination / name)
    for folder in ("protos", "generated", "tools"):
        shutil.copytree(ROOT / folder, destination / folder)
    return destination


def _run_check(workspace: Path, against: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if against is not None:
        env["AETERNA_BREAKING_AGAINST"] = str(against)
    return subprocess.run(
        ["bash", str(CHECK), str(workspace)], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_contracts(tmp_path_factory.mktemp("contracts") / "pristine")


def test_unchanged_contracts_pass(pristine: Path) -> None:
    result = _run_check(pristine, against=pristine)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "contracts: ok" in result.stdout


def test_missing_comment_fails_lint(tmp_path: Path) -> None:
    workspace = _copy_contracts(tmp_path / "w")
    proto = workspace / SYNC_PROTO
    text = proto.read_text()
    text = text.replace("// BatchHeader identifies and authenticates one batch of any channel.\n", "")
    proto.write_text(text)
    result = _run_check(workspace)
    assert result.returncode != 0
    assert "BatchHeader" in result.stdout + result.stderr
    assert "comment" in (result.stdout + result.stderr).lower()


def test_removed_field_fails_breaking_check(tmp_path: Path, pristine: Path) -> None:
    workspace = _copy_contracts(tmp_path / "w")
    proto = workspace / SYNC_PROTO
    text = proto.read_text()
    # Delete BatchAck.checkpoint (field 8) with its comment lines.
    text, count = re.subn(r"\n(  //[^\n]*\n)+  uint64 checkpoint = 8;", "", text)
    assert count == 1
    proto.write_text(text)
    result = _run_check(workspace, against=pristine)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "checkpoint" in output
    assert "breaking" in output.lower() or "deleted" in output.lower()


def test_hand_edited_generated_code_fails(tmp_path: Path) -> None:
    workspace = _copy_contracts(tmp_path / "w")
    generated = workspace / "generated/aeterna/sync/v1/sync_pb2.pyi"
    generated.write_text(generated.read_text() + "\n# hand edit\n")
    result = _run_check(workspace, against=workspace)
    assert result.returncode != 0
    assert "generated/ differs" in result.stderr
