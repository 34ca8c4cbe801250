"""``aeterna``: run central or an edge, operate them, try the demo.

Each package contributes its subcommands through ``add_commands(subparsers)``;
this module only assembles them, so that the CLI never grows a second copy of
any service's wiring.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from aeterna_cli import certs as certs_cli
from aeterna_cli import health as health_cli
from aeterna_cli import operators as operators_cli
from aeterna_cli import status as status_cli
from aeterna_shared.config.loader import ConfigError
from central_svc import cli as central_cli
from edge_svc import cli as edge_cli

Command = Callable[[argparse.Namespace], int]

EXIT_USAGE = 2
"""Exit status of a command refused on its configuration (bad key or value, wrong deploymentMode)."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render the CLI reference)."""
    parser = argparse.ArgumentParser(
        prog="aeterna",
        description=(
            "Aeterna Hybrid: AI-agent memory and Cedar authorization at the edge, "
            "with one central service as the source of truth."
        ),
        epilog="Run 'aeterna demo' for a guided tour, or 'aeterna COMMAND --help' for one command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    central_cli.add_commands(subparsers)
    operators_cli.add_commands(subparsers)
    edge_cli.add_commands(subparsers)
    status_cli.add_commands(subparsers)
    certs_cli.add_commands(subparsers)
    health_cli.add_commands(subparsers)
    _add_optional(subparsers, "aeterna_cli.demo")
    _add_optional(subparsers, "bench.cli")
    return parser


def _add_optional(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], module: str) -> None:
    """Register commands from a module that may not be installed (bench lives beside the packages)."""
    try:
        imported = __import__(module, fromlist=["add_commands"])
    except ModuleNotFoundError as error:
        if error.name and module.startswith(error.name):
            return
        raise
    imported.add_commands(subparsers)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Command = args.handler
    # Every --config defaults to $AETERNA_CONFIG (the Docker image sets /etc/aeterna/config.yaml).
    if getattr(args, "config", "") is None:
        args.config = os.environ.get("AETERNA_CONFIG") or None
    try:
        return handler(args)
    except ConfigError as error:  # the README's message: the file, then one line per bad key; no traceback
        print(error.message, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
