"""Fault suite fixtures: the summary lines are repeated at the end of the run."""

from __future__ import annotations

import pytest

from tests.fault.support import SUMMARIES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARIES:
        terminalreporter.section("fault/fuzz summaries")
        for line in SUMMARIES:
            terminalreporter.write_line(line)
