"""Central's operator calls (``aeterna policy publish``, ``conflicts``, ``edges``), through ``open_channel``.

The settings are a local development client (plaintext, development identity
headers naming ``--agent-id`` and ``--tenant-id``), as these commands have
always been.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
from aeterna.policy.v1 import policy_pb2, policy_pb2_grpc
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc

from aeterna_client.channel import ClientSettings, open_channel


class RpcFailure(Exception):
    """A call failed; the message is the server's status and text."""


def settings_of(args: argparse.Namespace) -> ClientSettings:
    """The client settings of an operator command (plaintext, development identity)."""
    return ClientSettings(agent_id=args.agent_id, tenant_id=args.tenant_id)


def _failure(error: grpc.aio.AioRpcError) -> RpcFailure:
    return RpcFailure(f"{error.code().name}: {error.details()}")


def read_policy_folder(directory: Path) -> policy_pb2.PublishPoliciesRequest:
    """Every ``*.cedar`` file (id = stem), plus schema.json / entities.json when present."""
    files = sorted(directory.glob("*.cedar"))
    if not files:
        raise ValueError(f"{directory} holds no *.cedar files")
    request = policy_pb2.PublishPoliciesRequest(
        policies=[policy_pb2.CedarPolicy(policy_id=f.stem, text=f.read_text(encoding="utf-8")) for f in files]
    )
    for name, field in (("schema.json", "schema_json"), ("entities.json", "entities_json")):
        if (directory / name).exists():
            setattr(request, field, (directory / name).read_text(encoding="utf-8"))
    return request


async def publish(args: argparse.Namespace) -> int:
    """Publish a folder; print the new version."""
    request = read_policy_folder(Path(args.directory))
    request.expected_current_version = args.expected_version
    async with open_channel(args.target, settings_of(args)) as channel:
        try:
            response = await policy_pb2_grpc.PolicyServiceStub(channel).PublishPolicies(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            raise _failure(error) from None
    bundle = response.bundle
    print(
        f"published policy version {bundle.version} ({len(bundle.policies)} policies, checksum {bundle.checksum[:12]})"
    )
    return 0


async def list_conflicts(args: argparse.Namespace) -> int:
    """Print conflicts, one per line."""
    state = {
        "pending": sync_pb2.CONFLICT_STATE_PENDING,
        "resolved": sync_pb2.CONFLICT_STATE_RESOLVED,
        "all": sync_pb2.CONFLICT_STATE_UNSPECIFIED,
    }[args.state]
    token = ""
    async with open_channel(args.target, settings_of(args)) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        while True:
            try:
                page = await stub.ListConflicts(
                    sync_pb2.ListConflictsRequest(state=state, page_token=token),
                    timeout=30,
                )
            except grpc.aio.AioRpcError as error:
                raise _failure(error) from None
            for c in page.conflicts:
                print(
                    f"{c.conflict_id}  {sync_pb2.ConflictState.Name(c.state)}  resource={c.edge_decision.resource}  "
                    f"edge={c.edge_decision.decision_id}@{c.edge_decision.decide_time.ToJsonString()}  "
                    f"central={c.central_decision.decision_id}@{c.central_decision.decide_time.ToJsonString()}"
                    + (f"  resolved_by={c.resolved_by}" if c.resolved_by else "")
                )
            token = page.next_page_token
            if not token:
                return 0


async def resolve_conflict(args: argparse.Namespace) -> int:
    """Resolve one conflict."""
    resolution = sync_pb2.RESOLUTION_KEEP_EDGE if args.keep == "edge" else sync_pb2.RESOLUTION_KEEP_CENTRAL
    async with open_channel(args.target, settings_of(args)) as channel:
        try:
            response = await sync_pb2_grpc.SyncServiceStub(channel).ResolveConflict(
                sync_pb2.ResolveConflictRequest(conflict_id=args.conflict_id, resolution=resolution, note=args.note),
                timeout=30,
            )
        except grpc.aio.AioRpcError as error:
            raise _failure(error) from None
    print(f"conflict {response.conflict.conflict_id} resolved ({args.keep}) by {response.conflict.resolved_by}")
    return 0


async def list_edges(args: argparse.Namespace) -> int:
    """Print the registry."""
    token = ""
    async with open_channel(args.target, settings_of(args)) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        while True:
            try:
                page = await stub.ListEdges(sync_pb2.ListEdgesRequest(page_token=token), timeout=30)
            except grpc.aio.AioRpcError as error:
                raise _failure(error) from None
            for e in page.edges:
                last = e.last_sync_time.ToJsonString() if e.HasField("last_sync_time") else "never"
                # More than one incarnation: the edge was re-provisioned (a new data directory) at least once.
                incarnation = f"  incarnation={e.incarnation_id or '(none)'}"
                if e.incarnation_count > 1:
                    incarnation += f" (re-provisioned: {e.incarnation_count} incarnations)"
                print(
                    f"{e.agent_id}  {sync_pb2.EdgeState.Name(e.state)}  region={e.region}  "
                    f"tenant={e.tenant_id}  last_sync={last}{incarnation}"
                )
            token = page.next_page_token
            if not token:
                return 0
