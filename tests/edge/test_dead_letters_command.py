"""``aeterna dead-letters``: what overflowed is listed, and requeueing sends it again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge_svc.records import Channel
from edge_svc.store.outbox import ChannelLimits, SqliteOutbox
from tests.support.services import write_config


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aeterna_cli.main", "dead-letters", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_list_and_requeue_dead_letters(tmp_path: Path) -> None:
    data_dir = tmp_path / "edge"
    data_dir.mkdir()
    limits = {channel: ChannelLimits(max_items=3, ttl_seconds=3600) for channel in Channel}
    outbox = SqliteOutbox(data_dir / "outbox.sqlite3", limits)
    for index in range(5):
        outbox.enqueue(Channel.DECISIONS, [{"id": f"d{index}"}])
    assert sum(stats.pending_items for stats in outbox.stats()) == 3
    outbox.close()
    # Room for everything once an operator raises the limit, as the runbook says to.
    config = write_config(
        tmp_path / "edge.yaml",
        {"edge": {"dataDir": str(data_dir)}, "aeterna": {"offline": {"maxQueueSize": 100}}},
    )

    listed = _cli("list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "decisions" in listed.stdout
    assert "overflow" in listed.stdout
    assert "2 item(s)" in listed.stdout

    requeued = _cli("requeue", "--config", str(config), "--channel", "decisions")
    assert requeued.returncode == 0, requeued.stderr
    assert "requeued 2 item(s)" in requeued.stdout
    assert "no dead letters" in _cli("list", "--config", str(config)).stdout

    outbox = SqliteOutbox(data_dir / "outbox.sqlite3", limits)
    try:
        ids = [item["id"] for batch in outbox.pending(Channel.DECISIONS, 10) for item in batch.items]
    finally:
        outbox.close()
    assert sorted(ids) == [f"d{index}" for index in range(5)]


def test_a_folder_without_an_outbox_is_a_clear_error(tmp_path: Path) -> None:
    result = _cli("list", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "no outbox at" in result.stderr
