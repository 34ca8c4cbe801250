"""CI smoke run of the benchmark suite: tiny sizes, one run, every figure prints its ratio line.

No timing is asserted: the machines are shared and noisy. The test only checks
that the suite still runs end to end and reports every figure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.figures import FIGURES

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_prints_a_ratio_for_every_figure() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETERNA_")}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    ratio_lines = [line for line in result.stdout.splitlines() if line.startswith("RATIO ")]
    for figure in FIGURES:
        assert any(line.split()[1] == figure.name and " ratio " in line for line in ratio_lines), figure.name
