"""Central's operator calls (``aeterna policy publish``, ``conflicts``, ``edges``), through ``open_channel``.

Every call goes through the command's ``Connection`` (``aeterna_cli.connection``):
TLS, client certificate, pins and credential as the operator configured them,
development identity headers only when no credential is configured. A failed
call becomes ``RpcFailure``, which the command prints as one line.

Publishing: ``PublishPolicies`` stores a whole bundle (the next version is
exactly what was sent). ``--replace`` sends DIR as the bundle; ``--merge``
reads the current bundle, merges DIR into it (policies by id, entities by uid)
and sends the result with ``expected_current_version`` set to the version it
read, so a publish that happened in between makes the server refuse with
ABORTED instead of silently dropping it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aeterna.policy.v1 import policy_pb2, policy_pb2_grpc
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from aeterna_cli.connection import Connection
from aeterna_cli.output import print_json
from aeterna_client.channel import open_channel


class RpcFailure(Exception):
    """A call failed; ``error`` is the call (status, message, details), ``prefix`` what was being done."""

    def __init__(self, error: grpc.RpcError, prefix: str = "") -> None:
        super().__init__(f"{error.code().name}: {error.details()}")
        self.error = error
        self.prefix = prefix


def document_of(message: Message, *absent: str) -> dict[str, Any]:
    """``message`` as the proto3 JSON mapping (camelCase), every field present: an unset message field
    (a timestamp never set, ...) named in ``absent`` is null, so the keys never depend on the data."""
    document: dict[str, Any] = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    for key in absent:
        document.setdefault(key, None)
    return document


_BUNDLE_ABSENT = ("publishTime",)
_DECISION_ABSENT = ("decideTime",)
_CONFLICT_ABSENT = ("resolveTime", "createTime")
_EDGE_ABSENT = ("lastSyncTime", "lastSeenTime", "incarnationStartTime")


def _bundle_document(bundle: policy_pb2.PolicyBundle) -> dict[str, Any]:
    return document_of(bundle, *_BUNDLE_ABSENT)


def _conflict_document(conflict: sync_pb2.Conflict) -> dict[str, Any]:
    document = document_of(conflict, *_CONFLICT_ABSENT)
    for side in ("edgeDecision", "centralDecision"):
        decision = getattr(conflict, "edge_decision" if side == "edgeDecision" else "central_decision")
        document[side] = document_of(decision, *_DECISION_ABSENT) if document.get(side) is not None else None
    return document


def read_policy_folder(directory: Path) -> policy_pb2.PublishPoliciesRequest:
    """Every ``*.cedar`` file (id = stem), plus schema.json / entities.json when present."""
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a folder")
    files = sorted(directory.glob("*.cedar"))
    if not files:
        raise ValueError(f"{directory} holds no *.cedar files")
    request = policy_pb2.PublishPoliciesRequest(
        policies=[policy_pb2.CedarPolicy(policy_id=f.stem, text=f.read_text(encoding="utf-8")) for f in files]
    )
    for name, field in (("schema.json", "schema_json"), ("entities.json", "entities_json")):
        if (directory / name).exists():
            setattr(request, field, (directory / name).read_text(encoding="utf-8"))
    if request.entities_json:
        parse_entities(request.entities_json, str(directory / "entities.json"))  # a usage error before any call
    return request


def parse_entities(text: str, source: str) -> list[dict[str, Any]]:
    """A Cedar JSON entity list (empty text: none); ``ValueError`` naming ``source`` when it is not one."""
    try:
        entities = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as error:
        raise ValueError(f"{source} is not valid JSON: {error}") from None
    if not isinstance(entities, list) or not all(isinstance(e, dict) for e in entities):
        raise ValueError(f"{source} must be a JSON list of entities")
    for index, entity in enumerate(entities):
        entity_uid(entity, index, source)
    return entities


def entity_uid(entity: dict[str, Any], index: int, source: str) -> str:
    """The entity's uid as Cedar writes it (``Type::"id"``); accepts the ``__entity`` escape form."""
    uid = entity.get("uid")
    if isinstance(uid, dict) and isinstance(uid.get("__entity"), dict):
        uid = uid["__entity"]
    if not (isinstance(uid, dict) and isinstance(uid.get("type"), str) and isinstance(uid.get("id"), str)):
        raise ValueError(f'{source}: entity {index} has no uid {{"type": ..., "id": ...}}')
    return f"{uid['type']}::{json.dumps(uid['id'])}"


@dataclass(frozen=True)
class Changes:
    """What a merge did to one kind of item (policy ids or entity uids)."""

    added: tuple[str, ...]
    """In DIR, not in the current bundle."""
    replaced: tuple[str, ...]
    """In both: DIR's version is published."""
    kept: tuple[str, ...]
    """Only in the current bundle: kept as it was."""

    @property
    def total(self) -> int:
        """Items in the merged bundle."""
        return len(self.added) + len(self.replaced) + len(self.kept)

    def document(self) -> dict[str, list[str]]:
        """For ``--json``."""
        return {"added": list(self.added), "replaced": list(self.replaced), "kept": list(self.kept)}

    def summary(self, singular: str, plural: str) -> str:
        """``3 policies (1 added, 1 replaced, 1 kept)``."""
        noun = singular if self.total == 1 else plural
        return f"{self.total} {noun} ({len(self.added)} added, {len(self.replaced)} replaced, {len(self.kept)} kept)"


def _merge_items(
    current: list[tuple[str, Any]], incoming: list[tuple[str, Any]]
) -> tuple[list[tuple[str, Any]], Changes]:
    """Current items in their order (DIR's version where DIR has one), then DIR's new ones."""
    given = dict(incoming)
    present = {key for key, _ in current}
    merged = [(key, given.get(key, value)) for key, value in current]
    merged += [(key, value) for key, value in incoming if key not in present]
    changes = Changes(
        added=tuple(key for key, _ in incoming if key not in present),
        replaced=tuple(key for key, _ in current if key in given),
        kept=tuple(key for key, _ in current if key not in given),
    )
    return merged, changes


def merge_bundle(
    current: policy_pb2.PolicyBundle, request: policy_pb2.PublishPoliciesRequest, directory: str
) -> tuple[policy_pb2.PublishPoliciesRequest, Changes, Changes]:
    """``request`` (read from ``directory``) merged into ``current``: policies by id, entities by uid.

    A schema.json in the folder replaces the schema; without one the current schema stays.
    """
    policies, policy_changes = _merge_items(
        [(p.policy_id, p.text) for p in current.policies], [(p.policy_id, p.text) for p in request.policies]
    )
    now = parse_entities(current.entities_json, f"policy version {current.version}'s entities")
    given = parse_entities(request.entities_json, f"{directory}/entities.json")
    entities, entity_changes = _merge_items(
        [(entity_uid(e, i, "current"), e) for i, e in enumerate(now)],
        [(entity_uid(e, i, "given"), e) for i, e in enumerate(given)],
    )
    merged = policy_pb2.PublishPoliciesRequest(
        policies=[policy_pb2.CedarPolicy(policy_id=pid, text=text) for pid, text in policies],
        schema_json=request.schema_json or current.schema_json,
        entities_json=json.dumps([entity for _, entity in entities], indent=2) if entities else "",
    )
    return merged, policy_changes, entity_changes


def _count(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


def _entity_count(entities_json: str) -> int:
    """How many entities a bundle holds (for display only: central validated them when they were published)."""
    try:
        entities = json.loads(entities_json) if entities_json.strip() else []
    except json.JSONDecodeError:
        return 0
    return len(entities) if isinstance(entities, list) else 0


@dataclass(frozen=True)
class PublishPlan:
    """What ``aeterna policy publish`` is about to send, and how it came about."""

    request: policy_pb2.PublishPoliciesRequest
    """The whole bundle to publish, with ``expected_current_version`` set."""
    mode: str
    """``replace`` or ``merge``."""
    merged_into: int | None = None
    """The version a merge read (None: replace, or nothing was published yet)."""
    changes: tuple[Changes, Changes] | None = None
    """Policy and entity changes of a merge."""


async def plan_publish(
    stub: policy_pb2_grpc.PolicyServiceAsyncStub, directory: Path, mode: str, expected_version: int = 0
) -> PublishPlan:
    """The request for ``--replace`` (DIR as is) or ``--merge`` (DIR merged into the current bundle).

    A merge expects the version it read (unless ``expected_version`` names
    another), so a publish in between makes ``send_publish`` fail with ABORTED.
    """
    request = read_policy_folder(directory)
    if mode != "merge":
        request.expected_current_version = expected_version
        return PublishPlan(request, mode)
    try:
        current = (await stub.GetPolicyBundle(policy_pb2.GetPolicyBundleRequest(version=0))).bundle
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise RpcFailure(error) from None
        request.expected_current_version = expected_version
        return PublishPlan(request, mode)
    merged, policy_changes, entity_changes = merge_bundle(current, request, str(directory))
    merged.expected_current_version = expected_version or current.version
    return PublishPlan(merged, mode, current.version, (policy_changes, entity_changes))


async def send_publish(stub: policy_pb2_grpc.PolicyServiceAsyncStub, plan: PublishPlan) -> policy_pb2.PolicyBundle:
    """Publish the plan's bundle; a merge overtaken by another publish fails with a prefix saying so."""
    try:
        response = await stub.PublishPolicies(plan.request)
    except grpc.aio.AioRpcError as error:
        prefix = ""
        if error.code() == grpc.StatusCode.ABORTED and plan.request.expected_current_version == plan.merged_into:
            prefix = (
                f"another publish came after version {plan.merged_into} was read, so nothing was published "
                "(run the command again to merge into the new version): "
            )
        raise RpcFailure(error, prefix) from None
    return response.bundle


def publish_summary(plan: PublishPlan, bundle: policy_pb2.PolicyBundle) -> str:
    """``published policy version N (replaced the bundle: ...)`` or ``(merged into version M: ...)``."""
    entities = _entity_count(bundle.entities_json)
    contents = f"{_count(len(bundle.policies), 'policy', 'policies')}, {_count(entities, 'entity', 'entities')}"
    if plan.changes is not None:
        policies, entity_changes = plan.changes
        what = (
            f"merged into version {plan.merged_into}: {policies.summary('policy', 'policies')}, "
            f"{entity_changes.summary('entity', 'entities')}"
        )
    elif plan.mode == "merge":
        what = f"merged into nothing, no bundle was published yet: {contents}"
    else:
        what = f"replaced the bundle: {contents}"
    return f"published policy version {bundle.version} ({what}; checksum {bundle.checksum[:12]})"


async def publish(args: argparse.Namespace, connection: Connection) -> int:
    """Publish a folder as the whole bundle (``--replace``) or merged into the current one (``--merge``)."""
    async with open_channel(connection.target, connection.settings) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        plan = await plan_publish(stub, Path(args.directory), args.mode, args.expected_version)
        bundle = await send_publish(stub, plan)
    if args.json:
        changes = plan.changes
        print_json(
            {
                "mode": plan.mode,
                "mergedInto": plan.merged_into,
                "changes": None
                if changes is None
                else {"policies": changes[0].document(), "entities": changes[1].document()},
                "bundle": _bundle_document(bundle),
            }
        )
        return 0
    print(publish_summary(plan, bundle))
    return 0


async def show_policy(args: argparse.Namespace, connection: Connection) -> int:
    """Print the current policy bundle (or one version): version, publisher, checksum and its policies."""
    async with open_channel(connection.target, connection.settings) as channel:
        try:
            response = await policy_pb2_grpc.PolicyServiceStub(channel).GetPolicyBundle(
                policy_pb2.GetPolicyBundleRequest(version=args.version)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND or args.version:
                raise RpcFailure(error) from None
            if args.json:
                print_json({"bundle": None})
            else:
                print("no policy published yet (aeterna policy publish DIR)")
            return 0
    bundle = response.bundle
    if args.json:
        print_json({"bundle": _bundle_document(bundle)})
        return 0
    published = bundle.publish_time.ToJsonString() if bundle.HasField("publish_time") else "-"
    print(f"policy version {bundle.version}  published {published} by {bundle.publisher or '-'}")
    print(f"checksum        {bundle.checksum}")
    entities = _entity_count(bundle.entities_json)
    extras = ["schema"] if bundle.schema_json else []
    if entities:
        extras.append(_count(entities, "entity", "entities"))
    print(f"with            {', '.join(extras) or 'no schema, no entities'}")
    for policy in bundle.policies:
        print(f"  {policy.policy_id}  ({len(policy.text)} characters)")
    if not bundle.policies:
        print("  (no policies: this version permits nothing)")
    return 0


async def list_conflicts(args: argparse.Namespace, connection: Connection) -> int:
    """Print conflicts, one per line (or one JSON document); say so when there are none."""
    state = {
        "pending": sync_pb2.CONFLICT_STATE_PENDING,
        "resolved": sync_pb2.CONFLICT_STATE_RESOLVED,
        "all": sync_pb2.CONFLICT_STATE_UNSPECIFIED,
    }[args.state]
    conflicts: list[sync_pb2.Conflict] = []
    token = ""
    async with open_channel(connection.target, connection.settings) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        while True:
            try:
                page = await stub.ListConflicts(sync_pb2.ListConflictsRequest(state=state, page_token=token))
            except grpc.aio.AioRpcError as error:
                raise RpcFailure(error) from None
            conflicts += page.conflicts
            token = page.next_page_token
            if not token:
                break
    if args.json:
        print_json({"state": args.state, "conflicts": [_conflict_document(c) for c in conflicts]})
        return 0
    if not conflicts:
        print(NO_CONFLICTS[args.state])
    for c in conflicts:
        print(
            f"{c.conflict_id}  {sync_pb2.ConflictState.Name(c.state)}  resource={c.edge_decision.resource}  "
            f"edge={c.edge_decision.decision_id}@{c.edge_decision.decide_time.ToJsonString()}  "
            f"central={c.central_decision.decision_id}@{c.central_decision.decide_time.ToJsonString()}"
            + (f"  resolved_by={c.resolved_by}" if c.resolved_by else "")
        )
    return 0


NO_CONFLICTS = {
    "pending": "no conflicts waiting for review",
    "resolved": "no resolved conflicts",
    "all": "no conflicts",
}
"""What ``aeterna conflicts list --state STATE`` prints when there is nothing to list."""

NO_EDGES = "no edges registered (an edge registers on its first sync)"
"""What ``aeterna edges list`` prints when no edge has synced with central yet."""


async def resolve_conflict(args: argparse.Namespace, connection: Connection) -> int:
    """Resolve one conflict."""
    resolution = sync_pb2.RESOLUTION_KEEP_EDGE if args.keep == "edge" else sync_pb2.RESOLUTION_KEEP_CENTRAL
    async with open_channel(connection.target, connection.settings) as channel:
        try:
            response = await sync_pb2_grpc.SyncServiceStub(channel).ResolveConflict(
                sync_pb2.ResolveConflictRequest(conflict_id=args.conflict_id, resolution=resolution, note=args.note)
            )
        except grpc.aio.AioRpcError as error:
            raise RpcFailure(error) from None
    if args.json:
        print_json({"conflict": _conflict_document(response.conflict)})
        return 0
    print(f"conflict {response.conflict.conflict_id} resolved ({args.keep}) by {response.conflict.resolved_by}")
    return 0


async def list_edges(args: argparse.Namespace, connection: Connection) -> int:
    """Print the registry, one edge per line (or one JSON document); say so when it is empty."""
    edges: list[sync_pb2.EdgeInfo] = []
    token = ""
    async with open_channel(connection.target, connection.settings) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        while True:
            try:
                page = await stub.ListEdges(sync_pb2.ListEdgesRequest(page_token=token))
            except grpc.aio.AioRpcError as error:
                raise RpcFailure(error) from None
            edges += page.edges
            token = page.next_page_token
            if not token:
                break
    if args.json:
        print_json({"edges": [document_of(e, *_EDGE_ABSENT) for e in edges]})
        return 0
    if not edges:
        print(NO_EDGES)
    for e in edges:
        last = e.last_sync_time.ToJsonString() if e.HasField("last_sync_time") else "never"
        # More than one incarnation: the edge was re-provisioned (a new data directory) at least once.
        incarnation = f"  incarnation={e.incarnation_id or '(none)'}"
        if e.incarnation_count > 1:
            incarnation += f" (re-provisioned: {e.incarnation_count} incarnations)"
        print(
            f"{e.agent_id}  {sync_pb2.EdgeState.Name(e.state)}  region={e.region}  "
            f"tenant={e.tenant_id}  last_sync={last}{incarnation}"
        )
    return 0
