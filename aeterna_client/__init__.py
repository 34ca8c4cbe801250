"""The one client stack: a channel to an Aeterna service with TLS, pins, credentials and deadlines.

The edge (to central), the ``aeterna`` CLI, the benchmarks and the tests all
open their channels here, so every client honours the same settings.
"""
