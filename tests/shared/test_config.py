"""The config loader accepts the spec's YAML as written and names every bad key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from aeterna_shared.config import ConfigError, load_config

SPEC_EDGE = """
cache:
  backend: dragonfly
  layers:
    working:
      ttl: 5s
      maxSize: 1Gi
      evictionPolicy: lru
sync:
  enabled: true
  centralServer:
    url: "https://central.aeterna.example.com"
    port: 443
    timeout: 30s
    maxRetries: 3
  auth:
    method: "apiKey"
    existingSecret: "aeterna-sync-credentials"
  batch:
    maxSize: 100
    maxBytes: 10485760
    flushInterval: 60s
  memoryLayers:
    working:
      syncEnabled: false
    session:
      syncEnabled: true
      interval: 60s
      batchSize: 100
      compression: gzip
      onError: "queue"
    episodic:
      syncEnabled: true
      interval: 3600s
      batchSize: 1000
      compression: gzip
      mode: "eventual"
  network:
    compression: gzip
    encryption: tls12
    certificatePinning: true
    pinnedCertificates:
      - "sha256/AAAAAABBBBBBCCCCCCDDDDDDEEEEEEFFFFFFFFGGGGG="
  offline:
    mode: "queue"
    maxQueueSize: 10000
    queueTTL: 3600s
    fallbackCache: true
aeterna:
  offline:
    enabled: true
    fallbackMode: "cache"
    decisionQueueing: true
    maxQueueSize: 5000
    conflictResolution: "timestamp"
centralServer:
  healthCheck:
    interval: 30s
    timeout: 5s
    failureThreshold: 3
qdrant:
  cache:
    enabled: true
    size: 10000
    ttl: 86400s
    policy: "frequency"
"""


def test_the_spec_edge_yaml_loads_as_written(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(SPEC_EDGE)
    config = load_config(path, {})
    assert config.cache.layers.working.max_size == 1024**3
    assert config.sync.central_server.target == "central.aeterna.example.com:443"
    assert config.sync.central_server.uses_tls
    assert config.sync.offline.queue_ttl == timedelta(hours=1)
    assert config.central_server.health_check.failure_threshold == 3
    assert config.sync.session_interval == timedelta(seconds=60)


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(SPEC_EDGE)
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
