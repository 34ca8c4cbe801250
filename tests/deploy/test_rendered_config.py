"""The config.yaml each pod gets, loaded by the real config loader.

The chart's values must reach the process: render a values file, take the
ConfigMap the pod mounts and the env overrides the pod sets (secret values
replaced by stand-ins), and load them with aeterna_shared.config.load_config.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from aeterna_shared.config import AeternaConfig, load_config
from tests.deploy.conftest import ROOT, Render, values_file


def _pod(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    workload = next(d for d in documents if d["kind"] == kind and d["metadata"]["name"].endswith(("-central", "-edge")))
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _pod_config(documents: list[dict[str, Any]], kind: str, tmp_path: Path) -> tuple[AeternaConfig, dict[str, Any]]:
    """Load the config the pod of ``kind`` sees: its mounted ConfigMap plus its AETERNA_* env."""
    pod = _pod(documents, kind)
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/aeterna/config.yaml")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = next(
        d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    )
    path = tmp_path / f"{kind}.yaml"
    path.write_text(config_map["data"][mount["subPath"]], encoding="utf-8")
    environ = {}
    for variable in container.get("env", []):
        if variable["name"] == "AETERNA_CONFIG":
            assert variable["value"] == "/etc/aeterna/config.yaml"
        elif "value" in variable:
            environ[variable["name"]] = variable["value"]
        elif variable["name"].startswith("AETERNA_"):  # from a Secret or the downward API: a stand-in value
            environ[variable["name"]] = f"stand-in-for-{variable['name'].lower()}"
    return load_config(path, environ), pod


def _mounted(pod: dict[str, Any], path: str) -> bool:
    """Whether ``path`` lies under a volume mount of the main container."""
    return any(path.startswith(m["mountPath"].rstrip("/") + "/") for m in pod["containers"][0]["volumeMounts"])


def test_hybrid_values_reach_the_edge_config(render: Render, tmp_path: Path) -> None:
    config, pod = _pod_config(render("values-hybrid.yaml"), "StatefulSet", tmp_path)
    assert config.deployment_mode == "hybrid"
    sync = config.sync
    assert sync.central_server.url == "https://central.aeterna.example.com"
    assert sync.central_server.port == 443
    assert sync.central_server.target == "central.aeterna.example.com:443"
    assert sync.central_server.uses_tls
    assert sync.network.certificate_pinning
    pins = values_file("values-hybrid.yaml")["sync"]["network"]["pinnedCertificates"]
    assert list(sync.network.pinned_certificates) == pins
    assert sync.session_memory.interval == timedelta(seconds=60)
    assert sync.memory_layers.episodic.interval == timedelta(hours=1)
    assert sync.episodic_memory.vector_sync.interval == timedelta(hours=1)
    assert sync.batch.max_bytes == 10485760
    assert sync.offline.max_queue_size == 10000
    assert sync.offline.queue_ttl == timedelta(hours=1)
    assert config.aeterna.offline.max_queue_size == 5000
    assert config.central_server.health_check.failure_threshold == 3
    assert config.qdrant.cache.size == 10000
    assert config.cache.layers.working.max_size == 1024**3
    # What the pod layout decides.
    assert config.cache.url == "redis://127.0.0.1:6379/0"
    assert config.edge.listen_host == "0.0.0.0"
    assert config.edge.data_dir == "/var/lib/aeterna/edge"
    assert config.edge.agent_id == "edge-us-west-2-a"
    assert _mounted(pod, config.edge.data_dir + "/")
    # Credentials: from the Secret, mounted and as env overrides, never in the ConfigMap.
    assert sync.auth.method == "apiKey"
    assert sync.auth.existing_secret == "aeterna-sync-credentials"
    assert sync.auth.secret_dir == "/etc/aeterna/secrets/sync"
    assert _mounted(pod, sync.auth.secret_dir + "/apiKey")
    assert sync.auth.api_key == "stand-in-for-aeterna_sync__auth__api_key"
    assert sync.signing.key == "stand-in-for-aeterna_sync__signing__key"


def test_central_values_reach_the_central_config(render: Render, tmp_path: Path) -> None:
    config, pod = _pod_config(render("values-central.yaml"), "Deployment", tmp_path)
    assert config.deployment_mode == "central"
    assert config.sync.listen_port == 8081
    assert config.sync.max_edges == 1000
    assert config.sync.rate_limit == "100/sec"
    assert config.sync.rate_per_second == 100
    assert config.sync.offline_after == timedelta(minutes=5)
    assert config.sync.episodic_memory.snapshot_interval == timedelta(days=1)
    assert config.central.listen_host == "0.0.0.0"
    assert config.vector_database.backend == "qdrant"
    assert config.vector_database.qdrant_url == "http://aeterna-qdrant:6333"
    assert config.tls.enabled
    assert config.tls.cert_file == "/etc/aeterna/tls/tls.crt"
    assert _mounted(pod, config.tls.cert_file)
    assert config.telemetry.health_port == 8082
    assert config.telemetry.metrics_port == 8080
    # The request pool goes through the PgBouncer Pooler (credentials from libpq's
    # PGUSER/PGPASSWORD, out of CloudNativePG's app Secret); LISTEN/NOTIFY, the
    # snapshot lock and readiness go directly to the -rw service (the app Secret's URI).
    assert config.postgresql.url == "postgresql://aeterna-pg-pooler.aeterna.svc:5432/aeterna"
    env = {v["name"]: v for v in pod["containers"][0]["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "aeterna-pg-app", "key": "password"}
    assert env["AETERNA_POSTGRESQL__DIRECT_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "aeterna-pg-app",
        "key": "uri",
    }
    assert config.postgresql.direct_url == "stand-in-for-aeterna_postgresql__direct_url"
    # 12 replicas at most: 2 poolers x 20 + 12 x 3 direct = 76 <= 200 - 13 reserved.
    assert config.postgresql.pool_size == 10
    assert config.sync.auth.api_keys_file == "/etc/aeterna/secrets/api-keys/apiKeys.yaml"
    assert _mounted(pod, config.sync.auth.api_keys_file)
    assert config.sync.signing.keys_file == "/etc/aeterna/secrets/signing-keys/signingKeys.yaml"
    assert _mounted(pod, config.sync.signing.keys_file)


def test_migration_job_gets_the_same_config(render: Render, tmp_path: Path) -> None:
    documents = render("values-central.yaml")
    maps = {d["metadata"]["name"]: d["data"]["config.yaml"] for d in documents if d["kind"] == "ConfigMap"}
    assert maps["aeterna-migrate-config"] == maps["aeterna-central-config"]


@pytest.mark.parametrize(
    ("method", "variables"),
    [
        (
            "oauth2",
            {"AETERNA_SYNC__AUTH__CLIENT_ID", "AETERNA_SYNC__AUTH__CLIENT_SECRET", "AETERNA_SYNC__AUTH__TOKEN_URL"},
        ),
        ("apiKey", {"AETERNA_SYNC__AUTH__API_KEY"}),
    ],
)
def test_secret_keys_map_to_env_overrides(render: Render, tmp_path: Path, method: str, variables: set[str]) -> None:
    documents = render("values-hybrid.yaml", {"sync": {"auth": {"method": method}}})
    config, pod = _pod_config(documents, "StatefulSet", tmp_path)
    env = {v["name"]: v for v in pod["containers"][0]["env"]}
    assert variables | {"AETERNA_SYNC__SIGNING__KEY"} <= set(env)
    for name in variables:
        reference = env[name]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "aeterna-sync-credentials"
        assert reference["optional"] is True
    if method == "oauth2":
        assert config.sync.auth.client_secret == "stand-in-for-aeterna_sync__auth__client_secret"


def test_service_account_method_mounts_a_projected_token(render: Render, tmp_path: Path) -> None:
    documents = render("values-hybrid.yaml", {"sync": {"auth": {"method": "serviceAccount"}}})
    config, pod = _pod_config(documents, "StatefulSet", tmp_path)
    assert pod["serviceAccountName"] == config.sync.auth.service_account.name
    assert _mounted(pod, config.sync.auth.service_account.token_path)
    token = next(v for v in pod["volumes"] if v["name"] == "sync-token")["projected"]["sources"][0]
    assert token["serviceAccountToken"]["audience"] == config.sync.auth.service_account.audience


def test_no_secret_is_rendered_into_a_config_map(render: Render) -> None:
    oauth2 = {
        "sync": {"auth": {"method": "oauth2"}},
        "workloads": {"central": {"secrets": {"jwks": {"existingSecret": "aeterna-central-jwks"}}}},
    }
    for file in ("values-hybrid.yaml", "values-central.yaml"):
        for document in render(file, oauth2):
            if document["kind"] == "ConfigMap":
                text = document["data"]["config.yaml"]
                for key in ("apiKey:", "clientSecret:", "clientId:", "key:", "url: postgresql", "rateLimitRedisUrl:"):
                    assert key not in text, f"{key} in {document['metadata']['name']}"
            # The only Secret the chart renders holds what it generates itself: the password of
            # central's rate-limiter Redis (test_ratelimit_redis.py). Credentials come from elsewhere.
            if document["kind"] == "Secret":
                assert document["metadata"]["name"].endswith("-ratelimit-redis")
                assert set(document["data"]) == {"password", "url"}


def test_the_spec_secret_examples_match_the_chart(render: Render) -> None:
    """Every `kubectl create secret` in docs/deploy.md names a Secret and keys the chart reads."""
    documents = render("values-hybrid.yaml", {"sync": {"auth": {"method": "oauth2"}}})
    pod = _pod(documents, "StatefulSet")
    env_keys = {
        v["valueFrom"]["secretKeyRef"]["key"]
        for v in pod["containers"][0]["env"]
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    read_keys = env_keys | {"apiKey"}  # apiKey: mapped when method is apiKey (tested above)
    docs = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    commands = re.findall(r"kubectl create secret generic aeterna-sync-credentials((?:.*\\\n)*.*)", docs)
    assert len(commands) >= 2
    for command in commands:
        keys = set(re.findall(r"--from-literal=(\w+)=", command))
        assert keys, command
        assert keys <= read_keys, keys - read_keys
    secret_volume = next(v for v in pod["volumes"] if v["name"] == "sync-credentials")
    assert secret_volume["secret"]["secretName"] == "aeterna-sync-credentials"
