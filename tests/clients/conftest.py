"""The client tests start a real central and edge the way the end-to-end tests do."""

from tests.e2e.conftest import start_central, start_edge

__all__ = ["start_central", "start_edge"]
