"""``aeterna status``: how an edge or central is doing, for an operator at 3 a.m.

The command asks the target for the edge status first; a central answers that
with UNIMPLEMENTED, and is then asked for its own view (edge registry, policy
version, pending reviews). So one command works against either process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import grpc

from aeterna_cli.api.clients import CentralClient
from edge_svc.api.status_client import fetch_status
from edge_svc.cli import render_status


def central_status(target: str) -> dict[str, Any]:
    """Central's view: policy version, pending conflicts and the edge registry."""
    client = CentralClient(target, operator="aeterna-status")
    try:
        edges = client.edges()
        return {
            "role": "central",
            "target": target,
            "policyVersion": client.policy_version(),
            "pendingConflicts": len(client.conflicts()),
            "edges": [{"agentId": a, "region": r, "state": s} for a, r, s in edges],
        }
    finally:
        client.close()


def render_central(status: dict[str, Any]) -> str:
    """Central's status as a readable table."""
    edges = status["edges"]
    online = sum(1 for edge in edges if edge["state"] == "online")
    lines = [
        f"central         {status['target']}",
        f"policy version  {status['policyVersion']}",
        f"manual review   {status['pendingConflicts']} pending conflict(s)  (aeterna conflicts list)",
        f"edges           {online} online of {len(edges)} registered",
    ]
    if edges:
        lines += ["", f"{'agent id':<24} {'region':<16} state"]
        lines += [f"{e['agentId']:<24} {e['region']:<16} {e['state']}" for e in edges]
    return "\n".join(lines)


def _show(args: argparse.Namespace) -> int:
    try:
        try:
            status = asyncio.run(fetch_status(args.target, args.timeout))
            status["role"] = "edge"
            text = render_status(status)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            status = central_status(args.target)
            text = render_central(status)
    except grpc.RpcError as error:
        print(f"cannot get the status of {args.target}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else text)
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``aeterna status``."""
    parser = subparsers.add_parser(
        "status",
        help="show how an edge or central is doing",
        description=(
            "Against an edge: online/offline, outbox depth and dead letters per channel, last successful "
            "sync per layer, and the policy version in force. Against central: the policy version, "
            "pending manual reviews and every registered edge with its state."
        ),
    )
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of an edge or central (%(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.set_defaults(handler=_show)
