"""The chart's production options (issue 14), rendered and validated, and every production check failing loudly.

* each new option is rendered on top of each values file it applies to, and
  every manifest goes through the same validation as test_chart.py (built-in
  kinds: kubernetes-validate, strict; CRDs: crd_schemas.py);
* each ``fail`` guard is triggered once, and its message must name the value to set;
* the values schema refuses an unknown key at several depths, including the
  new backup / pooler / gateway / alerts blocks.
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import CHART_DIR, Render, deep_merge, find, helm_python, kinds, render_chart, values_file
from tests.deploy.test_chart import EDGE_MINIMUM, KUBE_VERSION, _validate

# --- option sets ----------------------------------------------------------------------

BARMAN = {
    "postgresql": {
        "cloudnativepg": {
            "cluster": {
                "backup": {
                    "barmanObjectStore": {
                        "destinationPath": "s3://aeterna-backups/central",
                        "s3Credentials": {
                            "accessKeyId": {"name": "aeterna-backup-s3", "key": "ACCESS_KEY_ID"},
                            "secretAccessKey": {"name": "aeterna-backup-s3", "key": "SECRET_ACCESS_KEY"},
                        },
                        "wal": {"compression": "zstd", "maxParallel": 4},
                        "data": {"compression": "gzip", "jobs": 2},
                    },
                    "retentionPolicy": "14d",
                    "schedule": "0 0 3 * * *",
                }
            }
        }
    }
}
VOLUME_SNAPSHOT = {
    "postgresql": {
        "cloudnativepg": {
            "cluster": {
                "backup": {
                    "volumeSnapshot": {"className": "csi-snapclass", "online": True},
                    "schedule": "0 30 2 * * 0",
                    "target": "prefer-standby",
                }
            }
        }
    }
}
NO_POOLER = {"postgresql": {"cloudnativepg": {"pooler": {"enabled": False}}}}
SNAPSHOT_PVC = {"workloads": {"central": {"snapshots": {"persistence": {"enabled": True, "storageClassName": "efs"}}}}}
SNAPSHOT_CLAIM = {"workloads": {"central": {"snapshots": {"persistence": {"enabled": True, "existingClaim": "s3-pv"}}}}}
SNAPSHOT_CSI = {
    "workloads": {
        "central": {
            "snapshots": {
                "volume": {
                    "csi": {"driver": "gcsfuse.csi.storage.gke.io", "volumeAttributes": {"bucketName": "snapshots"}}
                }
            }
        }
    }
}
GATEWAY_PASSTHROUGH = {"gateway": {"enabled": True, "create": {"gatewayClassName": "istio"}}}
GATEWAY_PARENT = {
    "gateway": {"enabled": True, "parentRefs": [{"name": "edge-gateway", "namespace": "infra", "sectionName": "tls"}]}
}
GATEWAY_TERMINATE = {
    "tls": {"enabled": False},
    "gateway": {
        "enabled": True,
        "mode": "terminate",
        "hostnames": ["central.aeterna.example.com"],
        "create": {"gatewayClassName": "eg", "certificateSecret": "central-gateway-tls"},
    },
}
ISTIO = {"mesh": {"istio": {"enabled": True}}}
ISTIO_INGRESS = {
    "mesh": {"istio": {"enabled": True, "gateway": {"enabled": True}}},
    "workloads": {"central": {"service": {"type": "ClusterIP"}}},
}
ALERTS = {"alerts": {"enabled": True, "labels": {"release": "prometheus"}}}
GENERATED_KEYS = {
    "workloads": {
        "central": {"secrets": {"signingKeys": {"existingSecret": None, "generate": {"agents": ["edge-eu-1"]}}}}
    }
}
RATE_LIMIT_EXTERNAL = {
    "workloads": {"central": {"rateLimitRedis": {"external": {"existingSecret": "aeterna-ratelimit-url"}}}}
}
ALL_IN_ONE = {
    "deploymentMode": "hybrid",
    "workloads": {
        "edge": {"enabled": True},
        "central": {"enabled": True, "secrets": {"signingKeys": {"existingSecret": None}}},
    },
    "sync": {"auth": {"existingSecret": "aeterna-sync-credentials"}},
}

CENTRAL_OPTIONS: dict[str, dict[str, Any]] = {
    "barman-backup": BARMAN,
    "volume-snapshot-backup": VOLUME_SNAPSHOT,
    "no-pooler": NO_POOLER,
    "snapshot-pvc": SNAPSHOT_PVC,
    "snapshot-existing-claim": SNAPSHOT_CLAIM,
    "snapshot-csi-volume": SNAPSHOT_CSI,
    "gateway-passthrough": GATEWAY_PASSTHROUGH,
    "gateway-parent-refs": GATEWAY_PARENT,
    "gateway-terminate": GATEWAY_TERMINATE,
    "istio-loadbalancer": ISTIO,
    "istio-gateway": deep_merge(ISTIO, GATEWAY_PASSTHROUGH),
    "istio-ingress-gateway": ISTIO_INGRESS,
    "alerts": ALERTS,
    "generated-signing-keys": GENERATED_KEYS,
    "rate-limit-external-redis": RATE_LIMIT_EXTERNAL,
}
EDGE_OPTIONS: dict[str, dict[str, Any]] = {
    "alerts": ALERTS,
    "istio": ISTIO,
    "development": {"development": True},
}
BASES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "defaults": (None, EDGE_MINIMUM),
    "hybrid": ("values-hybrid.yaml", {}),
    "central": ("values-central.yaml", {}),
    "all-in-one": ("values-central.yaml", ALL_IN_ONE),
}
MATRIX = [
    *((base, option) for base in ("central", "all-in-one") for option in CENTRAL_OPTIONS),
    *((base, option) for base in BASES for option in EDGE_OPTIONS),
]


def _options(option: str) -> dict[str, Any]:
    return CENTRAL_OPTIONS.get(option) or EDGE_OPTIONS[option]


def _render(render: Render, base: str, option: str | None = None) -> list[dict[str, Any]]:
    file, overrides = BASES[base]
    return render(file, deep_merge(overrides, _options(option)) if option else overrides)


@pytest.mark.parametrize(("base", "option"), MATRIX, ids=[f"{b}+{o}" for b, o in MATRIX])
def test_every_option_renders_valid_manifests(render: Render, base: str, option: str) -> None:
    documents = _render(render, base, option)
    assert documents
    for document in documents:
        _validate(document)


@pytest.mark.parametrize("option", sorted(CENTRAL_OPTIONS))
def test_lint_is_clean_with_every_option(option: str) -> None:
    values = deep_merge(deep_merge(values_file("values-central.yaml"), ALL_IN_ONE), CENTRAL_OPTIONS[option])
    report = helm_python.lint(str(CHART_DIR), values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# --- what each option renders ----------------------------------------------------------


def _central_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = find(documents, "Deployment", "-central")["spec"]["template"]["spec"]["containers"][0]
    return container


def _config(documents: list[dict[str, Any]], component: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(find(documents, "ConfigMap", f"-{component}-config")["data"]["config.yaml"])
    return config


def test_development_is_rendered_only_when_asked(render: Render) -> None:
    for base in BASES:
        documents = _render(render, base)
        for document in documents:
            if document["kind"] == "ConfigMap":
                assert "development" not in yaml.safe_load(document["data"]["config.yaml"])
    documents = render(None, {"development": True, "sync": {"auth": {"method": "none"}}})
    assert _config(documents, "edge")["development"] is True


def test_the_default_auth_method_is_service_account(render: Render) -> None:
    documents = render(None, EDGE_MINIMUM)
    assert _config(documents, "edge")["sync"]["auth"]["method"] == "serviceAccount"
    pod = find(documents, "StatefulSet", "-edge")["spec"]["template"]["spec"]
    token = next(v for v in pod["volumes"] if v["name"] == "sync-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "aeterna-central"
    env = {v["name"]: v for v in pod["containers"][0]["env"]}
    # The signing key is required (no `optional`): a missing key stops the pod.
    assert env["AETERNA_SYNC__SIGNING__KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "edge-signing-key",
        "key": "signingKey",
    }


def test_generated_signing_keys_are_kept_and_mounted(render: Render) -> None:
    documents = _render(render, "central", "generated-signing-keys")
    secret = find(documents, "Secret", "-signing-keys")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    keys = yaml.safe_load(base64.b64decode(secret["data"]["signingKeys.yaml"]))
    assert set(keys) == {"edge-eu-1"}
    assert len(keys["edge-eu-1"]) == 64
    assert base64.b64decode(secret["data"]["edge-eu-1.key"]).decode() == keys["edge-eu-1"]
    assert _config(documents, "central")["sync"]["signing"]["keysFile"] == (
        "/etc/aeterna/secrets/signing-keys/signingKeys.yaml"
    )
    pod = find(documents, "Deployment", "-central")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "signing-keys")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]


def test_an_edge_of_the_same_release_gets_its_generated_key(render: Render) -> None:
    documents = _render(render, "all-in-one")
    secret = find(documents, "Secret", "-signing-keys")
    agent = values_file("values-central.yaml").get("edge", {}).get("agentId", "edge-agent-1")
    assert f"{agent}.key" in secret["data"]
    pod = find(documents, "StatefulSet", "-edge")["spec"]["template"]["spec"]
    env = {v["name"]: v for v in pod["containers"][0]["env"]}
    assert env["AETERNA_SYNC__SIGNING__KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": f"{agent}.key",
    }


def test_generated_keys_are_reused_on_upgrade(tmp_path: Path) -> None:
    """The lookup's result is kept: a stand-in for the cluster's Secret replaces the lookup call."""
    copy = tmp_path / "aeterna"
    shutil.copytree(CHART_DIR, copy)
    template = copy / "templates" / "central" / "signing-keys-secret.yaml"
    text = template.read_text(encoding="utf-8")
    call = 'lookup "v1" "Secret" .Release.Namespace $name'
    assert call in text
    existing = base64.b64encode(b"edge-eu-1: kept-key-of-edge-eu-1\nedge-gone: revoked\n").decode()
    template.write_text(text.replace(call, f'dict "data" (dict "signingKeys.yaml" "{existing}")'), encoding="utf-8")
    values = deep_merge(values_file("values-central.yaml"), GENERATED_KEYS)
    values["workloads"]["central"]["secrets"]["signingKeys"]["generate"]["agents"] = ["edge-eu-1", "edge-eu-2"]
    documents = render_chart(helm_python.Chart.load(str(copy)), values)
    keys = yaml.safe_load(base64.b64decode(find(documents, "Secret", "-signing-keys")["data"]["signingKeys.yaml"]))
    assert keys["edge-eu-1"] == "kept-key-of-edge-eu-1"
    assert len(keys["edge-eu-2"]) == 64
    assert "edge-gone" not in keys


def test_embedded_database_runs_one_replica_without_hpa(render: Render) -> None:
    documents = render(
        None,
        {
            "deploymentMode": "central",
            "sync": {"auth": {"method": "apiKey"}},
            "workloads": {
                "central": {
                    "replicas": 1,
                    "autoscaling": {"enabled": False},
                    "secrets": {
                        "apiKeys": {"existingSecret": "keys"},
                        "signingKeys": {"existingSecret": "signing"},
                    },
                }
            },
        },
    )
    assert not {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Cluster", "Pooler"} & kinds(documents)
    deployment = find(documents, "Deployment", "-central")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    for document in documents:
        _validate(document)


def test_pooler_and_direct_listen_connection(render: Render) -> None:
    documents = render("values-central.yaml")
    pooler = find(documents, "Pooler")
    assert pooler["spec"]["pgbouncer"]["poolMode"] == "transaction"
    assert pooler["spec"]["cluster"]["name"] == find(documents, "Cluster")["metadata"]["name"]
    env = {v["name"]: v for v in _central_container(documents)["env"]}
    assert env["AETERNA_POSTGRESQL__URL"]["value"].startswith(f"postgresql://{pooler['metadata']['name']}.")
    assert env["AETERNA_POSTGRESQL__DIRECT_URL"]["valueFrom"]["secretKeyRef"]["key"] == "uri"
    # The migration Job goes to the primary directly, never through PgBouncer.
    job = find(documents, "Job", "-migrate")["spec"]["template"]["spec"]["containers"][0]
    job_env = {v["name"]: v for v in job["env"]}
    assert job_env["AETERNA_POSTGRESQL__URL"]["valueFrom"]["secretKeyRef"]["key"] == "uri"
    assert "AETERNA_POSTGRESQL__DIRECT_URL" not in job_env
    # Without the pooler, one direct URL serves both.
    direct = {v["name"]: v for v in _central_container(_render(render, "central", "no-pooler"))["env"]}
    assert direct["AETERNA_POSTGRESQL__URL"]["valueFrom"]["secretKeyRef"]["key"] == "uri"
    assert "AETERNA_POSTGRESQL__DIRECT_URL" not in direct


def test_pool_size_fits_the_budget(render: Render) -> None:
    # No pooler: 12 replicas x (poolSize + 3) <= 200 - 3 - 10 -> poolSize 12 would fit; 10 is the default cap.
    assert _config(_render(render, "central", "no-pooler"), "central")["postgresql"]["poolSize"] == 10
    tight = deep_merge(
        NO_POOLER,
        {"postgresql": {"cloudnativepg": {"cluster": {"postgresql": {"parameters": {"max_connections": "100"}}}}}},
    )
    # (100 - 13) // 12 - 3 = 4
    assert _config(render("values-central.yaml", tight), "central")["postgresql"]["poolSize"] == 4


def test_backup_reaches_the_cluster_and_a_scheduled_backup(render: Render) -> None:
    documents = _render(render, "central", "barman-backup")
    backup = find(documents, "Cluster")["spec"]["backup"]
    assert backup["barmanObjectStore"]["destinationPath"] == "s3://aeterna-backups/central"
    assert backup["retentionPolicy"] == "14d"
    scheduled = find(documents, "ScheduledBackup")
    assert scheduled["spec"]["schedule"] == "0 0 3 * * *"
    assert scheduled["spec"]["method"] == "barmanObjectStore"
    snapshot = find(_render(render, "central", "volume-snapshot-backup"), "ScheduledBackup")
    assert snapshot["spec"]["method"] == "volumeSnapshot"
    assert "ScheduledBackup" not in kinds(render("values-central.yaml"))


def test_postgresql_image_is_pinned(render: Render) -> None:
    image = find(render("values-central.yaml"), "Cluster")["spec"]["imageName"]
    assert image.startswith("ghcr.io/cloudnative-pg/postgresql:16.")
    assert "@sha256:" in image


def test_snapshots_on_durable_storage(render: Render) -> None:
    documents = _render(render, "central", "snapshot-pvc")
    claim = find(documents, "PersistentVolumeClaim", "-central-snapshots")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "efs"
    pod = find(documents, "Deployment", "-central")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "snapshots")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "snapshots")
    assert _config(documents, "central")["central"]["snapshotDir"] == mount["mountPath"]
    existing = _render(render, "central", "snapshot-existing-claim")
    assert "PersistentVolumeClaim" not in kinds(existing)
    pod = find(existing, "Deployment", "-central")["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "snapshots")["persistentVolumeClaim"]["claimName"] == "s3-pv"
    csi = find(_render(render, "central", "snapshot-csi-volume"), "Deployment", "-central")["spec"]["template"]["spec"]
    assert next(v for v in csi["volumes"] if v["name"] == "snapshots")["csi"]["driver"] == "gcsfuse.csi.storage.gke.io"


def test_metrics_stay_off_the_public_service(render: Render) -> None:
    documents = render("values-central.yaml")
    public = find(documents, "Service", "-central")
    assert public["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in public["spec"]["ports"]] == ["grpc"]
    metrics = find(documents, "Service", "-central-metrics")
    assert metrics["spec"]["type"] == "ClusterIP"
    assert [p["name"] for p in metrics["spec"]["ports"]] == ["metrics"]
    monitor = find(documents, "ServiceMonitor", "-central")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics["metadata"]["labels"].items()
    assert not selector.items() <= public["metadata"]["labels"].items()


def test_istio_admits_edges_outside_the_mesh(render: Render) -> None:
    documents = _render(render, "central", "istio-loadbalancer")
    peer = find(documents, "PeerAuthentication", "-central")
    assert peer["spec"]["mtls"]["mode"] == "STRICT"
    assert peer["spec"]["portLevelMtls"]["8081"]["mode"] == "PERMISSIVE"
    internal = render(
        "values-central.yaml", deep_merge(ISTIO, {"workloads": {"central": {"service": {"type": "ClusterIP"}}}})
    )
    assert "8081" not in find(internal, "PeerAuthentication", "-central")["spec"].get("portLevelMtls", {})


def test_istio_ingress_gateway_passes_tls_through(render: Render) -> None:
    documents = _render(render, "central", "istio-ingress-gateway")
    gateway = next(d for d in documents if d["kind"] == "Gateway" and d["apiVersion"].startswith("networking.istio"))
    server = gateway["spec"]["servers"][0]
    assert (server["port"]["protocol"], server["tls"]["mode"]) == ("TLS", "PASSTHROUGH")
    assert server["hosts"] == ["central.aeterna.example.com"]
    route = find(documents, "VirtualService", "-edges")["spec"]
    assert route["gateways"] == [gateway["metadata"]["name"]]
    assert route["tls"][0]["match"][0]["sniHosts"] == ["central.aeterna.example.com"]
    # The ingress gateway is in the mesh: central's port stays STRICT (ClusterIP Service).
    assert "8081" not in find(documents, "PeerAuthentication", "-central")["spec"].get("portLevelMtls", {})


def test_gateway_routes(render: Render) -> None:
    passthrough = _render(render, "central", "gateway-passthrough")
    gateway = find(passthrough, "Gateway")
    listener = gateway["spec"]["listeners"][0]
    assert (listener["protocol"], listener["tls"]["mode"]) == ("TLS", "Passthrough")
    assert listener["hostname"] == "central.aeterna.example.com"
    route = find(passthrough, "TLSRoute")
    assert route["spec"]["parentRefs"] == [{"name": gateway["metadata"]["name"]}]
    assert route["spec"]["rules"][0]["backendRefs"][0]["port"] == 443
    parent = _render(render, "central", "gateway-parent-refs")
    assert "Gateway" not in kinds(parent)
    assert find(parent, "TLSRoute")["spec"]["parentRefs"][0]["name"] == "edge-gateway"
    terminate = _render(render, "central", "gateway-terminate")
    listener = find(terminate, "Gateway")["spec"]["listeners"][0]
    assert listener["tls"] == {
        "mode": "Terminate",
        "certificateRefs": [{"kind": "Secret", "name": "central-gateway-tls"}],
    }
    assert "GRPCRoute" in kinds(terminate)


def test_alerts_use_the_real_metric_names(render: Render) -> None:
    rules = {
        rule["alert"]: rule["expr"]
        for group in find(_render(render, "all-in-one", "alerts"), "PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
    }
    assert "aeterna_edges{" in rules["AeternaEdgeOffline"]
    assert "aeterna_edge_online{" in rules["AeternaEdgeLinkDown"]
    assert "aeterna_outbox_depth{" in rules["AeternaOutboxDepthHigh"]
    assert "aeterna_dead_letters_total{" in rules["AeternaDeadLetters"]
    assert "aeterna_sync_lag_seconds{" in rules["AeternaSyncLag"]
    assert "aeterna_central_ingest_busy_total{" in rules["AeternaCentralIngestBusy"]
    assert "AeternaReplayConflictsAwaitingReview" in rules
    # An edge-only release gets only the edge's alerts.
    edge_only = find(_render(render, "hybrid", "alerts"), "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert {"AeternaEdgeOffline", "AeternaCentralIngestBusy"}.isdisjoint({r["alert"] for r in edge_only})


# --- every production check fails, naming the value ----------------------------------


def _central(**overrides: Any) -> dict[str, Any]:
    return deep_merge(values_file("values-central.yaml"), overrides)


FAILURES: dict[str, tuple[dict[str, Any], str]] = {
    "auth-none-edge": ({"sync": {"auth": {"method": "none"}}, **EDGE_MINIMUM}, r"sync\.auth\.method is none"),
    "auth-none-central": (
        _central(sync={"auth": {"method": "none"}}),
        r"sync\.auth\.method is none.*development: true",
    ),
    "central-api-keys": (
        _central(workloads={"central": {"secrets": {"apiKeys": {"existingSecret": None}}}}),
        r"workloads\.central\.secrets\.apiKeys\.existingSecret",
    ),
    "central-jwks": (
        _central(sync={"auth": {"method": "serviceAccount"}}),
        r"workloads\.central\.secrets\.jwks\.existingSecret",
    ),
    "central-mtls": (_central(sync={"auth": {"method": "mtls"}}), r"tls\.requireClientCert"),
    "no-signing-keys": (
        _central(
            workloads={
                "central": {"secrets": {"signingKeys": {"existingSecret": None, "generate": {"enabled": False}}}}
            }
        ),
        r"workloads\.central\.secrets\.signingKeys\.existingSecret",
    ),
    "generate-without-agents": (
        _central(workloads={"central": {"secrets": {"signingKeys": {"existingSecret": None}}}}),
        r"signingKeys\.generate\.agents is empty",
    ),
    "bad-agent-id": (
        _central(
            workloads={
                "central": {"secrets": {"signingKeys": {"existingSecret": None, "generate": {"agents": ["a/b"]}}}}
            }
        ),
        r"generate\.agents: \"a/b\"",
    ),
    "edge-credentials": ({"sync": {"auth": {"method": "apiKey"}}, **EDGE_MINIMUM}, r"sync\.auth\.existingSecret"),
    "edge-signing-key": ({}, r"workloads\.edge\.signingKey\.existingSecret"),
    "embedded-replicas": (
        {
            "deploymentMode": "central",
            "development": True,
            "workloads": {"central": {"autoscaling": {"enabled": False}}},
        },
        r"workloads\.central\.replicas: 1",
    ),
    "embedded-autoscaling": (
        {"deploymentMode": "central", "development": True, "workloads": {"central": {"replicas": 1}}},
        r"workloads\.central\.autoscaling\.enabled: false",
    ),
    "floating-image": (
        _central(postgresql={"cloudnativepg": {"cluster": {"imageName": "ghcr.io/cloudnative-pg/postgresql:16"}}}),
        r"postgresql\.cloudnativepg\.cluster\.imageName .* is not pinned",
    ),
    "image-major": (
        _central(postgresql={"cloudnativepg": {"cluster": {"postgresql": {"version": 17}}}}),
        r"postgresql\.cloudnativepg\.cluster\.postgresql\.version",
    ),
    "schedule-without-target": (
        _central(postgresql={"cloudnativepg": {"cluster": {"backup": {"schedule": "0 0 3 * * *"}}}}),
        r"backup\.barmanObjectStore or backup\.volumeSnapshot",
    ),
    "five-field-schedule": (
        deep_merge(
            _central(),
            deep_merge(
                VOLUME_SNAPSHOT, {"postgresql": {"cloudnativepg": {"cluster": {"backup": {"schedule": "0 3 * * *"}}}}}
            ),
        ),
        r"backup\.schedule .*six fields",
    ),
    "method-not-configured": (
        deep_merge(
            _central(),
            deep_merge(
                VOLUME_SNAPSHOT,
                {"postgresql": {"cloudnativepg": {"cluster": {"backup": {"method": "barmanObjectStore"}}}}},
            ),
        ),
        r"backup\.method is barmanObjectStore but backup\.barmanObjectStore is not configured",
    ),
    "budget-direct": (
        deep_merge(_central(), deep_merge(NO_POOLER, {"postgresql": {"poolSize": 20}})),
        r"postgresql\.poolSize 20 .* exceed postgresql\.cloudnativepg\.cluster\.postgresql\.parameters\."
        r"max_connections",
    ),
    "budget-pooler-server": (
        _central(postgresql={"cloudnativepg": {"pooler": {"instances": 4, "defaultPoolSize": 50}}}),
        r"postgresql\.cloudnativepg\.pooler\.defaultPoolSize",
    ),
    "budget-pooler-clients": (
        _central(postgresql={"poolSize": 100, "cloudnativepg": {"pooler": {"maxClientConn": 500}}}),
        r"postgresql\.cloudnativepg\.pooler\.maxClientConn",
    ),
    "pooler-managed-parameter": (
        _central(postgresql={"cloudnativepg": {"pooler": {"parameters": {"default_pool_size": "90"}}}}),
        r"pooler\.parameters\.default_pool_size",
    ),
    "pooler-session-mode": (
        _central(postgresql={"cloudnativepg": {"pooler": {"poolMode": "session"}}}),
        r"pooler\.poolMode",
    ),
    "gateway-passthrough-plaintext": (
        deep_merge(_central(tls={"enabled": False}), GATEWAY_PASSTHROUGH),
        r"gateway\.mode passthrough .* tls\.enabled",
    ),
    "gateway-terminate-tls": (
        deep_merge(_central(), deep_merge(GATEWAY_TERMINATE, {"tls": {"enabled": True}})),
        r"gateway\.mode terminate",
    ),
    "gateway-class": (deep_merge(_central(), {"gateway": {"enabled": True}}), r"gateway\.create\.gatewayClassName"),
    "gateway-hostnames": (
        deep_merge(_central(tls={"certManager": {"dnsNames": [], "includeServiceNames": True}}), GATEWAY_PASSTHROUGH),
        r"gateway\.hostnames",
    ),
    "istio-gateway-plaintext": (
        deep_merge(_central(tls={"enabled": False}), ISTIO_INGRESS),
        r"mesh\.istio\.gateway .*tls\.enabled",
    ),
    "per-replica-rate-limit": (
        _central(workloads={"central": {"rateLimitRedis": {"enabled": False}}}),
        r"workloads\.central\.rateLimitRedis\.enabled is false and sync\.rateLimitRedisUrl is not set.*"
        r"12 x sync\.rateLimit",
    ),
    "rate-limit-two-limiters": (
        _central(
            workloads={"central": {"rateLimitRedis": {"enabled": True}}}, sync={"rateLimitRedisUrl": "redis://r:6379/0"}
        ),
        r"workloads\.central\.rateLimitRedis\.enabled is true while sync\.rateLimitRedisUrl",
    ),
    "rate-limit-url-and-secret": (
        deep_merge(_central(sync={"rateLimitRedisUrl": "redis://r:6379/0"}), RATE_LIMIT_EXTERNAL),
        r"either sync\.rateLimitRedisUrl or workloads\.central\.rateLimitRedis\.external\.existingSecret",
    ),
    "rate-limit-enabled-value": (
        _central(workloads={"central": {"rateLimitRedis": {"enabled": "yes"}}}),
        r"workloads\.central\.rateLimitRedis\.enabled: yes is none of auto, true, false",
    ),
    "grpc-port-mtls": (
        _central(mesh={"istio": {"enabled": True, "grpcPortMtls": "OFF"}}),
        r"mesh\.istio\.grpcPortMtls",
    ),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_production_check_fails_naming_the_value(chart: Any, case: str) -> None:
    values, message = FAILURES[case]
    with pytest.raises(helm_python.HelmRenderError, match=message):
        chart.render(values, name="aeterna", namespace="aeterna")


def test_development_lifts_the_security_checks(render: Render) -> None:
    documents = render(None, {"development": True, "sync": {"auth": {"method": "none"}}})
    env = {
        v["name"]: v
        for v in find(documents, "StatefulSet", "-edge")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "AETERNA_SYNC__SIGNING__KEY" not in env


# --- the values schema refuses unknown keys everywhere ---------------------------------


UNKNOWN_KEYS: dict[str, dict[str, Any]] = {
    "top-level": {"replicaz": 3},
    "backup": {"postgresql": {"cloudnativepg": {"cluster": {"backup": {"scheduel": "0 0 3 * * *"}}}}},
    "barman-object-store": {
        "postgresql": {
            "cloudnativepg": {
                "cluster": {"backup": {"barmanObjectStore": {"destinationPath": "s3://b", "destinationPth": "x"}}}
            }
        }
    },
    "barman-wal": {
        "postgresql": {
            "cloudnativepg": {
                "cluster": {
                    "backup": {"barmanObjectStore": {"destinationPath": "s3://b", "wal": {"compresion": "gzip"}}}
                }
            }
        }
    },
    "volume-snapshot": {"postgresql": {"cloudnativepg": {"cluster": {"backup": {"volumeSnapshot": {"class": "x"}}}}}},
    "cluster": {"postgresql": {"cloudnativepg": {"cluster": {"instancez": 3}}}},
    "pooler": {"postgresql": {"cloudnativepg": {"pooler": {"poolSize": 3}}}},
    "connection-budget": {"postgresql": {"cloudnativepg": {"connectionBudget": {"reserve": 3}}}},
    "gateway": {"gateway": {"create": {"className": "istio"}}},
    "alerts": {"alerts": {"syncLag": {"threshold": 5}}},
    "snapshots": {"workloads": {"central": {"snapshots": {"persistence": {"claim": "x"}}}}},
    "signing-keys": {"workloads": {"central": {"secrets": {"signingKeys": {"generate": {"agent": ["a"]}}}}}},
    "cert-manager": {"tls": {"certManager": {"isuer": "x"}}},
    "qdrant": {"vectorDatabase": {"qdrant": {"replica": 2}}},
    "istio": {"mesh": {"istio": {"grpcMtls": "STRICT"}}},
    "istio-gateway": {"mesh": {"istio": {"gateway": {"host": ["x"]}}}},
    "rate-limit-redis": {"workloads": {"central": {"rateLimitRedis": {"maxmemory": "64Mi"}}}},
    "rate-limit-redis-external": {"workloads": {"central": {"rateLimitRedis": {"external": {"secret": "x"}}}}},
}


@pytest.mark.parametrize("case", sorted(UNKNOWN_KEYS))
def test_unknown_values_key_is_refused(chart: Any, case: str) -> None:
    values = UNKNOWN_KEYS[case]
    key = _deepest_key(values)
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(key)):
        chart.render(values, name="aeterna", namespace="aeterna")


def _deepest_key(values: dict[str, Any]) -> str:
    """The misspelt key of an UNKNOWN_KEYS case: the last key of its last branch."""
    key, value = list(values.items())[-1]
    return _deepest_key(value) if isinstance(value, dict) and value else key


def test_backup_field_types_are_checked(chart: Any) -> None:
    bad: dict[str, Any] = {"postgresql": {"cloudnativepg": {"cluster": {"backup": {"retentionPolicy": "30 days"}}}}}
    with pytest.raises(helm_python.HelmValuesError, match="retentionPolicy"):
        chart.render(bad, name="aeterna", namespace="aeterna")
    bad = {
        "postgresql": {"cloudnativepg": {"cluster": {"backup": {"barmanObjectStore": {"wal": {"compression": "rar"}}}}}}
    }
    with pytest.raises(helm_python.HelmValuesError, match="compression"):
        chart.render(bad, name="aeterna", namespace="aeterna")
