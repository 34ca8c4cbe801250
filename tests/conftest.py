"""Fixtures shared by every test layer. Each support module owns one real component."""

import pytest

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.redis",
    "tests.support.tls",
    "tests.support.services",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--soak``: the fault and fuzz suites run their long mode (more trials, more inputs)."""
    parser.addoption("--soak", action="store_true", default=False, help="run the fault/fuzz suites in soak mode")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ci_slow: slow but part of CI (fault/fuzz suites, tens of seconds each)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``soak`` run only with ``--soak``."""
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak mode only (--soak)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
