"""Central's operator commands: ``aeterna policy publish|show``, ``conflicts list|resolve``, ``edges list``.

Each takes the shared connection options (``aeterna_cli.connection``), so the
same command reaches a laptop's development central and a deployment with
TLS, client certificates and API keys or tokens. The calls themselves are in
``aeterna_cli.api.operators`` (imported when a command runs, so ``aeterna
--help`` stays fast). A failed call is one line on stderr and exit status 1;
options or files that cannot work are one line and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aeterna_cli.connection import EXIT_FAILED, EXIT_USAGE, UsageError, add_connection_options
from aeterna_cli.output import add_json
from aeterna_shared.config.loader import ConfigError
from aeterna_shared.errors import AeternaError

if TYPE_CHECKING:
    from aeterna_cli.connection import Connection

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

CALL_TIMEOUT = 30.0
"""Default deadline (seconds) of an operator call."""

PUBLISH_DESCRIPTION = (
    "Publish all *.cedar files of DIR (policy id = file name without .cedar) as the next policy version; "
    "schema.json and entities.json in DIR are sent along when present. A published bundle is always whole: "
    "--replace (the default) makes DIR's policies and entities the entire bundle, so policies and entities "
    "published earlier and absent from DIR are gone; --merge reads the current bundle first, adds or replaces "
    "policies by id and entities by uid (schema.json, when present, replaces the schema) and publishes the "
    "result only if nobody published in between (otherwise ABORTED, nothing changed; run it again). "
    "The command prints which of the two happened."
)


def add_commands(subparsers: Subparsers) -> None:
    """Register the operator commands on the ``aeterna`` parser."""
    policy = subparsers.add_parser("policy", help="manage Cedar policies at central", description="Cedar policies.")
    policy_commands = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    publish_parser = policy_commands.add_parser(
        "publish",
        help="publish every *.cedar file of a folder as the next policy version (--replace or --merge)",
        description=PUBLISH_DESCRIPTION,
    )
    publish_parser.add_argument("directory", metavar="DIR", help="folder holding *.cedar files")
    mode = publish_parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--replace",
        dest="mode",
        action="store_const",
        const="replace",
        help="DIR becomes the whole bundle: earlier policies and entities not in DIR are removed (default)",
    )
    mode.add_argument(
        "--merge",
        dest="mode",
        action="store_const",
        const="merge",
        help="add or replace DIR's policies (by id) and entities (by uid) in the current bundle, keep the rest",
    )
    publish_parser.set_defaults(mode="replace")
    publish_parser.add_argument(
        "--expected-version",
        type=int,
        default=0,
        help="refuse (ABORTED) unless this is the current version; --merge sets it to the version it read",
    )
    add_json(publish_parser)
    add_connection_options(publish_parser, peer="central", timeout=CALL_TIMEOUT)
    publish_parser.set_defaults(handler=_command("publish"))
    show = policy_commands.add_parser(
        "show",
        help="show the current policy bundle (or one version)",
        description="Show a policy bundle at central: version, publisher, checksum and its policy ids.",
    )
    show.add_argument("--version", type=int, default=0, help="bundle version (default 0: the current one)")
    add_json(show)
    add_connection_options(show, peer="central", timeout=CALL_TIMEOUT)
    show.set_defaults(handler=_command("show_policy"))

    conflicts = subparsers.add_parser("conflicts", help="review decision conflicts", description="Manual review.")
    conflict_commands = conflicts.add_subparsers(dest="conflicts_command", metavar="ACTION", required=True)
    listing = conflict_commands.add_parser(
        "list", help="list conflicts", description="List decision conflicts of the caller's tenant, oldest first."
    )
    listing.add_argument("--state", choices=["pending", "resolved", "all"], default="pending", help="which ones")
    add_json(listing)
    add_connection_options(listing, peer="central", timeout=CALL_TIMEOUT)
    listing.set_defaults(handler=_command("list_conflicts"))
    resolve = conflict_commands.add_parser("resolve", help="resolve one conflict", description="Settle a conflict.")
    resolve.add_argument("conflict_id", metavar="ID", help="conflict id from 'aeterna conflicts list'")
    resolve.add_argument("--keep", choices=["edge", "central"], required=True, help="which decision stays effective")
    resolve.add_argument("--note", default="", help="free-text note kept with the resolution")
    add_json(resolve)
    add_connection_options(resolve, peer="central", timeout=CALL_TIMEOUT)
    resolve.set_defaults(handler=_command("resolve_conflict"))

    edges = subparsers.add_parser("edges", help="the edge registry", description="Edges known to central.")
    edge_commands = edges.add_subparsers(dest="edges_command", metavar="ACTION", required=True)
    edge_list = edge_commands.add_parser(
        "list",
        help="list edges and their state",
        description="List the edges registered at central (an identity with the admin scope sees every tenant).",
    )
    add_json(edge_list)
    add_connection_options(edge_list, peer="central", timeout=CALL_TIMEOUT)
    edge_list.set_defaults(handler=_command("list_edges"))


Action = Callable[[argparse.Namespace, "Connection"], Coroutine[Any, Any, int]]


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """A handler running ``aeterna_cli.api.operators.<name>(args, connection)``.

    Bad options or local files: one line, exit 2. A failed call: one line
    (status, message, reason), exit 1. Never a traceback.
    """

    def handler(args: argparse.Namespace) -> int:
        from aeterna_cli.api import operators  # noqa: PLC0415 - keeps `aeterna --help` fast
        from aeterna_cli.connection import describe, resolve  # noqa: PLC0415

        action: Action = getattr(operators, name)
        try:
            connection = resolve(args)
            return asyncio.run(action(args, connection))
        except ConfigError:
            raise  # main prints it exactly as the README shows (exit 2)
        except AeternaError as error:  # a local setting the client stack refused before sending anything
            print(f"error: {error.message} [{error.reason}]", file=sys.stderr)
            return EXIT_USAGE
        except (UsageError, OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except operators.RpcFailure as failure:
            print(f"error: {failure.prefix}{describe(failure.error, connection)}", file=sys.stderr)
            return EXIT_FAILED

    return handler
