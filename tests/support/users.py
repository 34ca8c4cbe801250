"""Running a command as another local user, to prove a local store refuses everybody but its owner."""

from __future__ import annotations

import os
import subprocess


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the local user nobody, with no supplementary groups (the tests run as root)."""
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"},
    )
