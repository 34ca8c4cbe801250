"""The config loader accepts the spec's YAML as written and names every bad key.

The spec's blocks are copied verbatim into tests/shared/spec/ (a fresh clone has no ../shared).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from aeterna_shared.config import AeternaConfig, ConfigError, load_config

SPEC_DIR = Path(__file__).parent / "spec"
"""The spec's YAML blocks, copied verbatim (each file names its section), so a fresh clone has them."""
SPEC_FILE = Path(__file__).resolve().parents[3] / "shared" / "spec" / "hybrid-mode.md"

# The spec's example pin is not a valid pin: a SHA-256 in base64 is 44 characters and the spec's has 53
# after "sha256/". This is the one substitution the tests make, and only where a block carries that pin.
SPEC_PIN = "sha256/AAAAAABBBBBBCCCCCCDDDDDDEEEEEEFFFFFFFFGGGGGGHHHHHHII="
VALID_PIN = "sha256/AAAAAABBBBBBCCCCCCDDDDDDEEEEEEFFFFFFFFGGGGG="

# Per spec block: one value the loaded configuration must carry, as the block sets it.
SPEC_BLOCKS: dict[str, tuple[Callable[[AeternaConfig], object], object]] = {
    "working-memory.yaml": (lambda c: c.cache.layers.working.max_size, 1024**3),
    "session-memory.yaml": (lambda c: c.sync.session_memory.interval, timedelta(seconds=60)),
    "episodic-memory.yaml": (lambda c: c.sync.episodic_memory.snapshot_interval, timedelta(days=1)),
    "offline-configuration.yaml": (lambda c: c.aeterna.offline.max_queue_size, 5000),
    "auth-api-key.yaml": (lambda c: c.sync.auth.method, "apiKey"),
    "auth-oauth2.yaml": (lambda c: c.sync.auth.method, "oauth2"),
    "auth-service-account.yaml": (lambda c: c.sync.auth.service_account.name, "aeterna-edge-sync"),
    "smart-caching.yaml": (lambda c: c.qdrant.cache.ttl, timedelta(days=1)),
}
# The edge's blocks that make one configuration together (the auth blocks are alternatives to each other).
EDGE_BLOCKS = (
    "working-memory.yaml",
    "session-memory.yaml",
    "episodic-memory.yaml",
    "core-sync-settings.yaml",
    "offline-configuration.yaml",
    "smart-caching.yaml",
)


def _spec_block(name: str) -> str:
    return (SPEC_DIR / name).read_text(encoding="utf-8")


def _merge(into: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    for key, value in document.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def _spec_edge(tmp_path: Path) -> Path:
    """The spec's edge blocks as one file, with the one pin substitution."""
    merged: dict[str, Any] = {}
    for name in EDGE_BLOCKS:
        _merge(merged, yaml.safe_load(_spec_block(name).replace(SPEC_PIN, VALID_PIN)))
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(merged))
    return path


@pytest.mark.parametrize("name", sorted(SPEC_BLOCKS))
def test_each_spec_block_loads_as_written(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(_spec_block(name))
    read, expected = SPEC_BLOCKS[name]
    assert read(load_config(path, {})) == expected


def test_the_spec_example_pin_is_not_a_valid_pin(tmp_path: Path) -> None:
    """Core Sync Settings as written: refused, naming the key and the pin (53 base64 characters, not 44)."""
    path = tmp_path / "core-sync-settings.yaml"
    path.write_text(_spec_block("core-sync-settings.yaml"))
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert "sync.network.pinnedCertificates" in str(raised.value)
    assert f"{SPEC_PIN!r} is not a pin of the form sha256/<44 base64 characters>" in str(raised.value)


def test_the_spec_core_sync_settings_load_with_a_valid_pin(tmp_path: Path) -> None:
    text = _spec_block("core-sync-settings.yaml")
    assert text.count(SPEC_PIN) == 1
    path = tmp_path / "core-sync-settings.yaml"
    path.write_text(text.replace(SPEC_PIN, VALID_PIN))
    config = load_config(path, {})
    assert config.sync.network.pinned_certificates == (VALID_PIN,)
    assert config.sync.auth.method == "serviceAccount"
    assert config.sync.batch.max_bytes == 10485760


def test_the_spec_edge_yaml_loads_as_written(tmp_path: Path) -> None:
    config = load_config(_spec_edge(tmp_path), {})
    assert config.cache.layers.working.max_size == 1024**3
    assert config.sync.central_server.target == "central.aeterna.example.com:443"
    assert config.sync.central_server.uses_tls
    assert config.sync.offline.queue_ttl == timedelta(hours=1)
    assert config.central_server.health_check.failure_threshold == 3
    assert config.sync.session_interval == timedelta(seconds=60)


@pytest.mark.skipif(not SPEC_FILE.exists(), reason="the shared spec is not checked out next to this repository")
def test_the_copied_blocks_are_the_spec_verbatim() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", SPEC_FILE.read_text(encoding="utf-8"), re.S)
    for path in sorted(SPEC_DIR.glob("*.yaml")):
        copied = path.read_text(encoding="utf-8").split("\n", 2)[2]  # after the two comment lines
        assert copied in blocks, f"{path.name} is no longer a block of {SPEC_FILE.name}"


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = _spec_edge(tmp_path)
    config = load_config(path, {"AETERNA_SYNC__BATCH__MAX_SIZE": "50", "AETERNA_SYNC__OFFLINE__QUEUE_TTL": "2h"})
    assert config.sync.batch.max_size == 50
    assert config.sync.offline.queue_ttl == timedelta(hours=2)


@pytest.mark.parametrize(
    ("document", "environ", "expected"),
    [
        ("sync:\n  batch:\n    maxSize: 0\n", {}, "sync.batch.maxSize: Input should be greater than or equal to 1"),
        ("sync:\n  batch:\n    flushIntervall: 3s\n", {}, "sync.batch.flushIntervall: unknown key"),
        ("centralServer:\n  healthCheck:\n    interval: soon\n", {}, "centralServer.healthCheck.interval"),
        ("sync:\n  memoryLayers:\n    working:\n      syncEnabled: true\n", {}, "never be synced"),
        ("sync:\n  rateLimit: fast\n", {}, "sync.rateLimit"),
        ("sync:\n  network:\n    certificatePinning: true\n", {}, "pinnedCertificates is empty"),
        ("", {"AETERNA_SYNC__BACH__MAX_SIZE": "5"}, "AETERNA_SYNC__BACH__MAX_SIZE"),
        ("- a list\n", {}, "mapping of keys at the top level"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, document: str, environ: dict[str, str], expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(document)
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ)
    assert expected in str(raised.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", {})
