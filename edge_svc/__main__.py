"""``python -m edge_svc``: run an edge node (the same as ``aeterna edge``).

The wiring lives in two modules: ``edge_svc.deps`` opens what the edge needs
(``open_edge``: data-directory lock, caches and owned redis-servers, outbox
and its limits, vector shard, policy agent, the node) and closes it again;
``edge_svc.server`` builds the gRPC server and serves it until SIGTERM
(``main``, ``run``). This module only reads the command line.
"""

from __future__ import annotations

import argparse
import sys

from aeterna_security.production import DEVELOPMENT_HELP
from edge_svc.server import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m edge_svc", description="Run an Aeterna edge node.")
    parser.add_argument("--config")
    parser.add_argument("--ready-file")
    parser.add_argument("--development", action="store_true", help=DEVELOPMENT_HELP)
    arguments = parser.parse_args()
    sys.exit(main(arguments.config, arguments.ready_file, development=arguments.development))
