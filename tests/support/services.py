"""Real ``aeterna`` processes for tests, through the same launcher the demo uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aeterna_cli.processes import ServiceFactory, ServiceProcess, write_config

__all__ = ["ServiceFactory", "ServiceProcess", "services", "write_config"]


@pytest.fixture
def services(tmp_path: Path) -> Iterator[ServiceFactory]:
    """Start real ``aeterna`` processes; all are stopped at the end of the test."""
    factory = ServiceFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
