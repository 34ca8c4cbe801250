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

from aeterna_shared.wire.canonical import session_checksum, sign_batch
from bench.suite import Env, Figure, Sample

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


def sizes(sessions: int, messages: int = 12) -> dict[str, int]:
    """Bytes on the wire of one batch in each encoding."""
    batch = realistic_batch(sessions, messages)
    proto = batch.SerializeToString()
    # gRPC's gzip uses zlib's default level, as Python's gzip at level 6 does.
    proto_gzip = gzip.compress(proto, compresslevel=6, mtime=0)
    raw_json = json_format.MessageToJson(batch, indent=None).encode()
    json_gzip = gzip.compress(raw_json, compresslevel=6, mtime=0)
    return {
        "raw JSON": _framed(len(raw_json)),
        "gzip JSON": _framed(len(json_gzip)),
        "protobuf": _framed(5 + len(proto)),
        "protobuf+gzip (gRPC)": _framed(5 + len(proto_gzip)),
    }


async def measure(env: Env, sessions: int) -> list[Sample]:
    """The wire figure for one batch of ``sessions`` sessions."""
    size = sizes(sessions)
    raw = size["raw JSON"]
    ours = size["protobuf+gzip (gRPC)"]
    return [
        Sample("protobuf+gzip bytes/session", ours / sessions, "B", "raw JSON B/session", raw / sessions,
               ours / raw, "<= 0.15", ours / raw <= GOAL,
               extra={"gzip_json_ratio": size["gzip JSON"] / raw, "protobuf_ratio": size["protobuf"] / raw}),
    ]  # fmt: skip


FIGURES = [
    Figure(
        "wire",
        "bytes per session on the wire: protobuf+gzip vs raw JSON and gzip JSON (12 messages per session)",
        measure,
        {"smoke": (10, 100, 1000), "quick": (10, 100, 1000), "full": (10, 100, 1000)},
        lambda n: f"{n}/batch",
        goal_note="conversation text is most of a session and is stored as UTF-8 in protobuf and JSON alike, "
        "so protobuf only saves field names and structure (~25% of JSON); gzip then does the rest and both "
        "end near the text's entropy (~5 bits/char for English-like text: gzip JSON is about the same size). "
        "Getting to 15% needs a better compressor for text (zstd with a trained dictionary, or gzip level 9 "
        "plus a shared dictionary per edge) or sending message deltas instead of whole sessions; not "
        "tuning the data.",
    )
]


def main() -> int:
    """Print the sizes and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--messages", type=int, default=12)
    args = parser.parse_args()
    rows = sizes(args.sessions, args.messages)
    baseline = rows["raw JSON"]
    print(f"batch: {args.sessions} sessions x {args.messages} messages")
    for name, size in rows.items():
        print(f"  {name:<22} {size:>10,} bytes  {size / baseline:6.1%} of raw JSON")
    ratio = rows["protobuf+gzip (gRPC)"] / baseline
    verdict = "meets" if ratio <= GOAL else "MISSES"
    print(f"protobuf+gzip is {ratio:.1%} of raw JSON: {verdict} the goal of <= {GOAL:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
