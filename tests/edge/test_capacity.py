"""The servers raise their own open-file limit: 10,000 edge connections do not fit in the usual 1,024.

A real ``aeterna edge`` started with a soft ``RLIMIT_NOFILE`` of 1,024 runs
with the soft limit raised toward the hard one (read back from
``/proc/<pid>/limits``, what the kernel enforces); where the hard limit is too
low to raise far enough, the process says so in one WARNING naming the fix.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aeterna_server.capacity import WANTED_OPEN_FILES
from tests.edge.conftest import closed_port, edge_document
from tests.support.services import ServiceFactory

pytestmark = pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs Linux /proc")


def _soft_open_files(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no 'Max open files' line in /proc/{pid}/limits")


@contextmanager
def _soft_limit(value: int) -> Iterator[None]:
    """Children started inside inherit a soft open-file limit of ``value``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (value, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_edge_raises_its_soft_open_file_limit(services: ServiceFactory, tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open-file limit here is {hard}: nothing to raise")
    expected = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(WANTED_OPEN_FILES, hard)
    edge = services.make("edge", "edge", edge_document(tmp_path / "edge", closed_port()))
    with _soft_limit(1024):
        edge.start()
    assert edge.process is not None
    assert _soft_open_files(edge.process.pid) == expected
    assert f"open-file limit raised from 1024 to {expected}" in edge.log_text()


def test_a_hard_limit_too_low_is_one_warning_naming_the_fix() -> None:
    code = (
        "import logging, resource, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='%(levelname)s %(message)s', level=logging.INFO)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (512, 2048))\n"
        "from aeterna_server.capacity import raise_open_file_limit\n"
        "limit = raise_open_file_limit()\n"
        "print('after', resource.getrlimit(resource.RLIMIT_NOFILE)[0], limit.streams())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = result.stdout.splitlines()
    assert "INFO open-file limit raised from 512 to 2048 (hard limit 2048)" in lines
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert warnings == [
        "WARNING the open-file limit 2048 leaves room for about 1792 connections (fewer than 10000); "
        "raise the hard limit (ulimit -Hn, or the container runtime's nofile ulimit)"
    ]
    assert lines[-1] == "after 2048 1792"
