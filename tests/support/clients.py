"""Stubs for a running edge or central process, shared by the process-level suites."""

from __future__ import annotations

from typing import Any

from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import policy_pb2, policy_pb2_grpc
from aeterna.sync.v1 import sync_pb2_grpc

from aeterna_client.channel import ClientSettings, open_channel


class Client:
    """Stubs of one process (edge or central) on a plaintext channel naming ``agent`` (development auth)."""

    def __init__(self, target: str, agent: str = "operator") -> None:
        self.channel = open_channel(target, ClientSettings(agent_id=agent))
        self.metadata = (("x-aeterna-agent-id", agent),)
        """The identity header, for callers that pass metadata explicitly (the channel adds it too)."""
        self.edge = edge_pb2_grpc.EdgeServiceStub(self.channel)
        self.sync = sync_pb2_grpc.SyncServiceStub(self.channel)
        self.policy = policy_pb2_grpc.PolicyServiceStub(self.channel)

    async def status(self) -> edge_pb2.GetEdgeStatusResponse:
        return await self.edge.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest(), timeout=5)

    async def pending(self, channel: int) -> int:
        return next(q.pending_items for q in (await self.status()).queues if q.channel == channel)

    async def authorize(self, **context: Any) -> edge_pb2.AuthorizeResponse:
        request = edge_pb2.AuthorizeRequest(principal='User::"alice"', action='Action::"approve"', resource='Doc::"d"')
        request.context.update(context)
        return await self.edge.Authorize(request)

    async def publish(self, text: str) -> int:
        reply = await self.policy.PublishPolicies(
            policy_pb2.PublishPoliciesRequest(policies=[policy_pb2.CedarPolicy(policy_id="main.cedar", text=text)]),
        )
        return int(reply.bundle.version)

    async def close(self) -> None:
        await self.channel.close()


def make_session(session_id: str, text: str) -> memory_pb2.Session:
    """A one-message session."""
    return memory_pb2.Session(
        session_id=session_id, user_id="u", messages=[memory_pb2.SessionMessage(role="user", content=text)]
    )
