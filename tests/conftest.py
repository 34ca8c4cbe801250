"""Fixtures shared by every test layer. Each support module owns one real component."""

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.redis",
    "tests.support.tls",
    "tests.support.services",
]
