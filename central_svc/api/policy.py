"""``aeterna.policy.v1.PolicyService``: translation between the wire and the policy authority."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aeterna.policy.v1 import policy_pb2, policy_pb2_grpc
from grpc import aio

from aeterna_security.identity import current_identity
from aeterna_shared.errors import NotFound
from central_svc.api.convert import to_timestamp
from central_svc.policies import Bundle, PolicyAuthority, PolicyContent

Context = aio.ServicerContext[Any, Any]


def bundle_message(bundle: Bundle) -> policy_pb2.PolicyBundle:
    """The wire form of a bundle."""
    return policy_pb2.PolicyBundle(
        version=bundle.version,
        policies=[policy_pb2.CedarPolicy(policy_id=pid, text=text) for pid, text in bundle.content.policies],
        schema_json=bundle.content.schema_json,
        entities_json=bundle.content.entities_json,
        publish_time=to_timestamp(bundle.published_at),
        publisher=bundle.publisher,
        checksum=bundle.checksum,
    )


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    """Publish, read and watch Cedar bundles."""

    def __init__(self, authority: PolicyAuthority) -> None:
        self._authority = authority

    async def WatchPolicies(
        self, request: policy_pb2.WatchPoliciesRequest, context: Context
    ) -> AsyncIterator[policy_pb2.WatchPoliciesResponse]:
        """Current bundle if newer than known, then every new version."""
        current_identity()
        async for bundle in self._authority.hub.watch(request.known_version):
            yield policy_pb2.WatchPoliciesResponse(bundle=bundle_message(bundle))

    async def PublishPolicies(
        self, request: policy_pb2.PublishPoliciesRequest, context: Context
    ) -> policy_pb2.PublishPoliciesResponse:
        """Validate and publish the next version."""
        identity = current_identity()
        identity.require_scope("admin")
        content = PolicyContent(
            policies=tuple((p.policy_id, p.text) for p in request.policies),
            schema_json=request.schema_json,
            entities_json=request.entities_json,
        )
        bundle = await self._authority.publish(
            content, identity.agent_id or "anonymous", request.expected_current_version
        )
        return policy_pb2.PublishPoliciesResponse(bundle=bundle_message(bundle))

    async def GetPolicyBundle(
        self, request: policy_pb2.GetPolicyBundleRequest, context: Context
    ) -> policy_pb2.GetPolicyBundleResponse:
        """One version, or the newest for version 0."""
        current_identity()
        bundle = await self._authority.get(request.version)
        if bundle is None:
            raise NotFound(f"no policy bundle version {request.version}", reason="POLICY_BUNDLE_NOT_FOUND")
        return policy_pb2.GetPolicyBundleResponse(bundle=bundle_message(bundle))
