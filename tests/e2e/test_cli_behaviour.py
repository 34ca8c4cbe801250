"""What an operator sees from ``aeterna``: config errors, role mismatches, empty listings, --json, progress.

Every command runs as a subprocess, exactly as typed in a shell, and the
assertions are on its exit status, stdout and stderr.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.memory.v1 import memory_pb2

from aeterna_security.production import role_refusal
from aeterna_shared.config import load_config
from central_svc import snapshots
from edge_svc.records import Channel
from edge_svc.store.outbox import ChannelLimits, SqliteOutbox
from tests.support.cli import aeterna
from tests.support.postgres import TEST_VECTOR_DIMENSION
from tests.support.services import ServiceProcess, write_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def readme_config_error() -> tuple[str, str]:
    """The bad config the README describes, and the message it shows for it (file name, then one line a key)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"```\n(invalid configuration in (\S+):\n(?:  .*\n)+)```", readme)
    assert found, "README.md no longer shows the config-error example"
    return found.group(2), found.group(1)


README_BAD_CONFIG = "sync:\n  batch:\n    maxSize: 0\n    flushIntervall: 5s\n"
"""A file with exactly the two mistakes of the README's example."""

CONFIG_COMMANDS = [
    ["central"],
    ["central", "migrate"],
    ["edge"],
    ["snapshot", "create"],
    ["snapshot", "restore", "some-snapshot"],
    ["snapshot", "list"],
    ["dead-letters", "list"],
    ["dead-letters", "requeue"],
]


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
def test_a_bad_config_prints_the_readme_message_and_exits_2(command: list[str], tmp_path: Path) -> None:
    name, message = readme_config_error()
    (tmp_path / name).write_text(README_BAD_CONFIG)
    result = aeterna(*command, "--config", name, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == message
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "var").exists()  # nothing started, no data directory made


@pytest.mark.parametrize("command", [["edge"], ["central", "migrate"], ["dead-letters", "list"]], ids=" ".join)
def test_aeterna_config_is_the_default_config(command: list[str], tmp_path: Path) -> None:
    name, message = readme_config_error()
    config = tmp_path / "etc" / name
    config.parent.mkdir()
    config.write_text(README_BAD_CONFIG)
    result = aeterna(*command, cwd=tmp_path, env={"AETERNA_CONFIG": str(config)})
    assert result.returncode == 2, result.stderr
    assert result.stderr == message.replace(f" in {name}:", f" in {config}:")


def test_aeterna_config_names_the_edge_of_dead_letters(tmp_path: Path) -> None:
    data_dir = tmp_path / "edge"
    data_dir.mkdir()
    SqliteOutbox(
        data_dir / "outbox.sqlite3", {c: ChannelLimits(max_items=3, ttl_seconds=3600) for c in Channel}
    ).close()
    config = write_config(tmp_path / "edge.yaml", {"edge": {"dataDir": str(data_dir)}})
    by_env = aeterna("dead-letters", "list", env={"AETERNA_CONFIG": str(config)})
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == "no dead letters\n"
    # An explicit --config still wins over the environment.
    other = write_config(tmp_path / "other.yaml", {"edge": {"dataDir": str(tmp_path / "nowhere")}})
    explicit = aeterna("dead-letters", "list", "--config", str(other), env={"AETERNA_CONFIG": str(config)})
    assert explicit.returncode == 1
    assert "nowhere" in explicit.stderr


@pytest.mark.parametrize(
    ("command", "config", "mode"),
    [(["central", "--development"], "edge.yaml", "edge"), (["edge", "--development"], "central.yaml", "central")],
    ids=["central-with-edge-config", "edge-with-central-config"],
)
def test_a_config_for_the_other_role_is_refused_before_anything_starts(
    command: list[str], config: str, mode: str, tmp_path: Path
) -> None:
    copy = tmp_path / config
    copy.write_text((EXAMPLES / config).read_text())
    result = aeterna(*command, "--config", config, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{config} has deploymentMode: {mode}" in result.stderr
    assert not (tmp_path / "var").exists()  # no embedded PostgreSQL, no redis-server, no data directory


def test_hybrid_is_accepted_by_both_roles() -> None:
    hybrid = load_config(None, {"AETERNA_DEPLOYMENT_MODE": "hybrid"})
    assert role_refusal(hybrid, "central", None) is None
    assert role_refusal(hybrid, "edge", None) is None
    edge = load_config(EXAMPLES / "edge.yaml", {})
    assert role_refusal(edge, "edge", "edge.yaml") is None
    refused = role_refusal(edge, "central", "examples/edge.yaml")
    assert refused is not None
    assert "examples/edge.yaml has deploymentMode: edge" in refused


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_listings_say_when_empty_and_every_command_prints_json(
    start_central: Callable[..., ServiceProcess], start_edge: Callable[..., ServiceProcess]
) -> None:
    central = start_central()
    at_central = ("--target", central.target)

    # Nothing yet: each listing says so in words, and --json is an empty list under a stable key.
    assert aeterna("conflicts", "list", *at_central).stdout == "no conflicts waiting for review\n"
    assert aeterna("conflicts", "list", "--state", "all", *at_central).stdout == "no conflicts\n"
    assert aeterna("edges", "list", *at_central).stdout.startswith("no edges registered")
    assert aeterna("policy", "show", *at_central).stdout.startswith("no policy published yet")
    assert _json(aeterna("conflicts", "list", "--json", *at_central)) == {"state": "pending", "conflicts": []}
    assert _json(aeterna("edges", "list", "--json", *at_central)) == {"edges": []}
    assert _json(aeterna("policy", "show", "--json", *at_central)) == {"bundle": None}

    published = _json(aeterna("policy", "publish", str(EXAMPLES / "policies"), "--json", *at_central))
    assert published["bundle"]["version"] == "1"
    assert sorted(p["policyId"] for p in published["bundle"]["policies"]) == ["approve", "read"]
    shown = _json(aeterna("policy", "show", "--json", *at_central))
    assert shown["bundle"]["checksum"] == published["bundle"]["checksum"]
    assert {"version", "policies", "publishTime", "publisher", "checksum", "schemaJson"} <= set(shown["bundle"])
    table = aeterna("policy", "show", *at_central)
    assert table.returncode == 0, table.stderr
    assert "policy version 1" in table.stdout
    assert "approve" in table.stdout

    edge = start_edge(central)
    async with grpc.aio.insecure_channel(edge.target) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        await stub.PutSession(edge_pb2.PutSessionRequest(session=memory_pb2.Session(session_id="cli-1", user_id="u")))
        await stub.FlushSync(edge_pb2.FlushSyncRequest())

    edges = _json(aeterna("edges", "list", "--json", *at_central))["edges"]
    assert [e["agentId"] for e in edges] == ["edge-1"]
    assert {"region", "tenantId", "state", "lastSyncTime", "lastSeenTime", "incarnationId"} <= set(edges[0])
    assert "edge-1" in aeterna("edges", "list", *at_central).stdout
    assert _json(aeterna("status", "--json", "--target", edge.target))["role"] == "edge"
    assert _json(aeterna("status", "--json", *at_central))["role"] == "central"


def test_dead_letters_json_and_requeue_progress(tmp_path: Path) -> None:
    data_dir = tmp_path / "edge"
    data_dir.mkdir()
    limits = {channel: ChannelLimits(max_items=2, ttl_seconds=3600) for channel in Channel}
    outbox = SqliteOutbox(data_dir / "outbox.sqlite3", limits)
    for index in range(4):
        outbox.enqueue(Channel.DECISIONS, [{"id": f"d{index}"}])
        outbox.enqueue(Channel.SESSIONS, [{"id": f"s{index}"}])
    outbox.close()
    config = str(write_config(tmp_path / "edge.yaml", {"edge": {"dataDir": str(data_dir)}}))

    listed = _json(aeterna("dead-letters", "list", "--json", "--config", config))
    assert sorted((row["channel"], row["items"]) for row in listed["deadLetters"]) == [
        ("decisions", 2),
        ("sessions", 2),
    ]
    assert all(set(row) == {"channel", "cause", "items"} for row in listed["deadLetters"])

    requeued = aeterna("dead-letters", "requeue", "--config", config)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout == "requeued 4 item(s); they go out with the next sync\n"
    # Progress on stderr, beside the outbox's own log lines.
    progress = [line for line in requeued.stderr.splitlines() if not line.startswith("outbox:")]
    assert progress[0] == "requeueing 4 dead-lettered item(s) in 2 channel(s)"
    assert progress[1:] == ["  [1/2] decisions: requeued 2 item(s)", "  [2/2] sessions: requeued 2 item(s)"]

    assert _json(aeterna("dead-letters", "list", "--json", "--config", config)) == {"deadLetters": []}
    again = _json(aeterna("dead-letters", "requeue", "--json", "--config", config))
    assert again == {"requeued": 0, "channels": {}}


class _Rows:
    """A snapshot source holding a few episodes, to write a snapshot file without a database."""

    def __init__(self, count: int) -> None:
        occur = datetime(2026, 1, 1, tzinfo=UTC)
        self.rows = [
            (f"ep-{i}", "default", "sess-1", "agent-7", f"episode {i}", None, occur, b"") for i in range(count)
        ]

    async def export(self) -> AsyncIterator[snapshots.SnapshotRow]:
        for row in self.rows:
            yield row

    async def import_rows(self, rows: list[snapshots.SnapshotRow]) -> int:
        raise NotImplementedError


async def test_snapshot_commands_report_progress_and_print_json(database_url: str, tmp_path: Path) -> None:
    config = str(
        write_config(
            tmp_path / "central.yaml",
            {
                "deploymentMode": "central",
                "postgresql": {"url": database_url},
                "vectorDatabase": {"dimension": TEST_VECTOR_DIMENSION},
                "central": {"dataDir": str(tmp_path / "central"), "snapshotDir": str(tmp_path / "snapshots")},
            },
        )
    )
    assert aeterna("snapshot", "list", "--config", config).stdout.startswith("no snapshots in ")
    written = await snapshots.create(_Rows(3), tmp_path / "incoming")

    restored = aeterna("snapshot", "restore", str(written.path), "--config", config)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == f"restored 3 of 3 episodes from {written.path}\n"
    assert restored.stderr.splitlines() == [
        f"restoring 3 episodes from {written.path} (existing ones are kept)",
        "  3 of 3 episodes read, 3 new",
    ]
    again = _json(aeterna("snapshot", "restore", str(written.path), "--config", config, "--json"))
    assert again["inserted"] == 0
    assert again["snapshot"]["episodes"] == 3

    created = aeterna("snapshot", "create", "--config", config, "--json")
    document = _json(created)["snapshot"]
    assert document["episodes"] == 3
    assert set(document) == {"path", "episodes", "sha256", "created"}
    assert created.stderr.startswith(f"writing a snapshot of every episode under {tmp_path / 'snapshots'}")

    listed = _json(aeterna("snapshot", "list", "--config", config, "--json"))
    assert [s["path"] for s in listed["snapshots"]] == [document["path"]]
    assert "3 episodes" in aeterna("snapshot", "list", "--config", config).stdout


def test_certs_commands_print_json(tmp_path: Path) -> None:
    folder = str(tmp_path / "certs")
    ca = _json(aeterna("certs", "init-ca", "--dir", folder, "--json"))
    assert set(ca) == {"certificate", "key", "pin"}
    server = _json(aeterna("certs", "server", "--dir", folder, "--json"))
    assert server["pin"].startswith("sha256/")
    edge = _json(aeterna("certs", "edge", "--dir", folder, "--agent-id", "edge-eu-1", "--json"))
    assert edge["agentId"] == "edge-eu-1"
    pins = _json(aeterna("certs", "pin", server["certificate"], "--json"))
    assert pins == {"pins": [{"file": server["certificate"], "pin": server["pin"]}]}
