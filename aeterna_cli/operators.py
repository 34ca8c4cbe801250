"""Central's operator commands: ``aeterna policy publish``, ``conflicts list|resolve``, ``edges list``.

The calls themselves are in ``aeterna_cli.api.operators`` (imported when a
command runs, so ``aeterna --help`` stays fast).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aeterna_shared.errors import AeternaError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_TARGET = "127.0.0.1:8081"


def add_commands(subparsers: Subparsers) -> None:
    """Register the operator commands on the ``aeterna`` parser."""
    policy = subparsers.add_parser("policy", help="manage Cedar policies at central", description="Cedar policies.")
    policy_commands = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    publish_parser = policy_commands.add_parser(
        "publish",
        help="publish every *.cedar file of a folder as the next policy version",
        description="Publish all *.cedar files of DIR (policy id = file name without .cedar) as one bundle. "
        "schema.json and entities.json in DIR are sent along when present.",
    )
    publish_parser.add_argument("directory", metavar="DIR", help="folder holding *.cedar files")
    _add_target(publish_parser)
    publish_parser.add_argument(
        "--expected-version", type=int, default=0, help="refuse unless this is the current version"
    )
    publish_parser.set_defaults(handler=_command("publish"))

    conflicts = subparsers.add_parser("conflicts", help="review decision conflicts", description="Manual review.")
    conflict_commands = conflicts.add_subparsers(dest="conflicts_command", metavar="ACTION", required=True)
    listing = conflict_commands.add_parser("list", help="list conflicts", description="List decision conflicts.")
    listing.add_argument("--state", choices=["pending", "resolved", "all"], default="pending", help="which ones")
    _add_target(listing)
    listing.set_defaults(handler=_command("list_conflicts"))
    resolve = conflict_commands.add_parser("resolve", help="resolve one conflict", description="Settle a conflict.")
    resolve.add_argument("conflict_id", metavar="ID", help="conflict id from 'aeterna conflicts list'")
    resolve.add_argument("--keep", choices=["edge", "central"], required=True, help="which decision stays effective")
    resolve.add_argument("--note", default="", help="free-text note kept with the resolution")
    _add_target(resolve)
    resolve.set_defaults(handler=_command("resolve_conflict"))

    edges = subparsers.add_parser("edges", help="the edge registry", description="Edges known to central.")
    edge_commands = edges.add_subparsers(dest="edges_command", metavar="ACTION", required=True)
    edge_list = edge_commands.add_parser("list", help="list edges and their state", description="List edges.")
    _add_target(edge_list)
    edge_list.set_defaults(handler=_command("list_edges"))


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"central's host:port (default {DEFAULT_TARGET})")
    parser.add_argument("--agent-id", default="operator", help="identity to call as (development auth)")
    parser.add_argument("--tenant-id", default="default", help="tenant to act in (development auth)")


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """A handler running ``aeterna_cli.api.operators.<name>(args)``; a failure is one line on stderr (exit 1)."""

    def handler(args: argparse.Namespace) -> int:
        from aeterna_cli.api import operators  # noqa: PLC0415 - keeps `aeterna --help` fast

        action: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = getattr(operators, name)
        try:
            result = asyncio.run(action(args))
        except (AeternaError, OSError, ValueError, operators.RpcFailure) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return result

    return handler
