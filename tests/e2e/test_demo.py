"""The README's first command: ``aeterna demo`` runs the whole tour against real
processes and its report shows every step done and nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_tour_completes_with_nothing_lost(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aeterna_cli.main",
            "demo",
            "--fast",
            "--workdir",
            str(tmp_path / "work"),
            "--report",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(report_path.read_text())
    assert report["ok"]
    steps = {step["title"]: step for step in report["steps"]}
    assert len(steps) == 11
    assert all(step["ok"] for step in steps.values())

    assert steps["Session memory sync"]["at_central"] == 5
    assert steps["Session memory sync"]["gzip_bytes"] < steps["Session memory sync"]["json_bytes"]
    assert (
        steps["Read-through from another region"]["first"],
        steps["Read-through from another region"]["second"],
    ) == (
        "central",
        "local",
    )
    assert steps["Vector search with central fallback"]["first_central"] > 0
    assert steps["Vector search with central fallback"]["second_local"] > 0
    assert steps["Authorize at the edges, then change the policy"]["bob_after_v2"] == "ALLOW"
    assert steps["Central returns: replay and conflicts"]["conflicts"] == 1

    for layer, row in report["counts"].items():
        assert row["written"] > 0, layer
        assert row["at_central"] == row["written"], layer
        assert row["lost"] == 0, layer
    assert steps["Nothing lost"]["pending"] == 0
    assert steps["Nothing lost"]["dead_letters"] == 0
    assert "0 item(s) lost" in result.stdout
