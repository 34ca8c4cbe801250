"""The ``aeterna`` command as a user runs it: a subprocess, without the test runner's AETERNA_* variables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def aeterna(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``aeterna ARGS`` (``python -m aeterna_cli.main``); ``env`` adds variables to ours minus AETERNA_*."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AETERNA_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "aeterna_cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=environ,
    )
