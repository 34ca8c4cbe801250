"""Bytes on the wire for a realistic session batch: protobuf+gzip vs raw JSON vs gzip JSON.

    python -m bench.wire_bench [--sessions 100] [--messages 12]

The batch is what the edge sends on ``SyncSessions``: signed header, sessions
with conversation messages (English-like text drawn from a fixed vocabulary,
seeded so runs compare), agent state and timestamps. gRPC compresses each
message with gzip, so "protobuf+gzip" is the gzip of the serialized message
plus gRPC's 5-byte message prefix; HTTP/2 frame headers (9 bytes per frame)
are added for both, as a JSON-over-HTTP sync would pay them too. The goal from
the issue is protobuf+gzip <= 15% of raw JSON.
"""

from __future__ import annotations

import argparse
import gzip
import random
import uuid
from datetime import UTC, datetime, timedelta

from aeterna.sync.v1 import sync_pb2
from google.protobuf import json_format

from interceptors.canonical import session_checksum, sign_batch

GOAL = 0.15
FRAME = 16_384  # default HTTP/2 max frame size
WORDS = (
    "the",
    "agent",
    "user",
    "asked",
    "about",
    "order",
    "invoice",
    "shipping",
    "refund",
    "policy",
    "account",
    "password",
    "reset",
    "customer",
    "support",
    "ticket",
    "status",
    "update",
    "please",
    "thanks",
    "could",
    "you",
    "check",
    "my",
    "latest",
    "payment",
    "failed",
    "retry",
    "later",
    "summary",
    "of",
    "previous",
    "conversation",
    "context",
    "memory",
    "preference",
    "language",
    "english",
    "delivery",
    "address",
    "warehouse",
    "tracking",
    "number",
    "estimated",
    "arrival",
    "tomorrow",
    "morning",
    "afternoon",
    "evening",
    "escalate",
    "manager",
)


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))).capitalize() + "."


def realistic_batch(sessions: int, messages: int, seed: int = 7) -> sync_pb2.SyncSessionsRequest:
    """A signed batch of ``sessions`` sessions with ``messages`` messages each."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    request = sync_pb2.SyncSessionsRequest(
        header=sync_pb2.BatchHeader(
            batch_id=str(uuid.UUID(int=rng.getrandbits(128))), sequence=42, agent_id="edge-eu-1", region="eu-west-1"
        )
    )
    request.header.sent_time.FromDatetime(start)
    for index in range(sessions):
        session = request.sessions.add(
            session_id=str(uuid.UUID(int=rng.getrandbits(128))), user_id=f"user-{index % 37}"
        )
        for turn in range(messages):
            message = session.messages.add(
                role="user" if turn % 2 == 0 else "assistant",
                content=" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))),
            )
            message.create_time.FromDatetime(start + timedelta(seconds=index * 60 + turn * 7))
        session.state.update(
            {"language": "en", "intent": rng.choice(WORDS), "turns": messages, "escalated": rng.random() < 0.1}
        )
        session.last_activity_time.FromDatetime(start + timedelta(seconds=index * 60 + messages * 7))
        session.checksum = session_checksum(session)
    sign_batch(request, b"bench-key")
    return request


def _framed(payload: int) -> int:
    return payload + 9 * max(1, -(-payload // FRAME))


def main() -> int:
    """Print the sizes and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--messages", type=int, default=12)
    args = parser.parse_args()
    batch = realistic_batch(args.sessions, args.messages)
    proto = batch.SerializeToString()
    # gRPC's gzip uses zlib's default level, as Python's gzip at level 6 does.
    proto_gzip = gzip.compress(proto, compresslevel=6, mtime=0)
    raw_json = json_format.MessageToJson(batch, indent=None).encode()
    json_gzip = gzip.compress(raw_json, compresslevel=6, mtime=0)
    rows = [
        ("raw JSON", _framed(len(raw_json))),
        ("gzip JSON", _framed(len(json_gzip))),
        ("protobuf", _framed(5 + len(proto))),
        ("protobuf+gzip (gRPC)", _framed(5 + len(proto_gzip))),
    ]
    baseline = rows[0][1]
    print(f"batch: {args.sessions} sessions x {args.messages} messages")
    for name, size in rows:
        print(f"  {name:<22} {size:>10,} bytes  {size / baseline:6.1%} of raw JSON")
    ratio = rows[-1][1] / baseline
    verdict = "meets" if ratio <= GOAL else "MISSES"
    print(f"protobuf+gzip is {ratio:.1%} of raw JSON: {verdict} the goal of <= {GOAL:.0%}")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
