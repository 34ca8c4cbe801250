"""The Helm chart: rendered with the real Helm v4 engine, every manifest validated.

Built-in kinds go through kubernetes-validate in strict mode (unknown fields
fail) for the newest Kubernetes it knows; CRD kinds (CloudNativePG,
cert-manager, ServiceMonitor, Istio) through the structural schemas in
crd_schemas.py, because kubernetes-validate has no schemas for them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import CHART_DIR, ROOT, Render, deep_merge, helm_python, kinds, render_chart, values_file
from tests.deploy.crd_schemas import CRD_SCHEMAS

KUBE_VERSION = kubernetes_validate.latest_version()

# The least a production edge needs on top of the defaults: its batch-signing key.
EDGE_MINIMUM: dict[str, Any] = {"workloads": {"edge": {"signingKey": {"existingSecret": "edge-signing-key"}}}}

VARIANTS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "defaults": (None, EDGE_MINIMUM),
    "hybrid": ("values-hybrid.yaml", {}),
    "central": ("values-central.yaml", {}),
    "central-istio-linkerd": (
        "values-central.yaml",
        {"mesh": {"istio": {"enabled": True}, "linkerd": {"enabled": True}}},
    ),
    "central-plaintext-istio": (
        "values-central.yaml",
        {"tls": {"enabled": False, "certManager": {"enabled": False}}, "mesh": {"istio": {"enabled": True}}},
    ),
    "hybrid-istio": ("values-hybrid.yaml", {"mesh": {"istio": {"enabled": True}}}),
    "hybrid-oauth2": ("values-hybrid.yaml", {"sync": {"auth": {"method": "oauth2"}}}),
    "hybrid-serviceaccount": (
        "values-hybrid.yaml",
        {"sync": {"auth": {"method": "serviceAccount", "serviceAccount": {"name": "aeterna-edge-sync"}}}},
    ),
    "all-in-one": (
        "values-central.yaml",
        {
            "workloads": {"edge": {"enabled": True}, "central": {"enabled": True}},
            "deploymentMode": "hybrid",
            "sync": {"auth": {"existingSecret": "aeterna-sync-credentials"}},
        },
    ),
}

BUILTIN_GROUPS = (
    "v1",
    "apps/v1",
    "batch/v1",
    "policy/v1",
    "autoscaling/v2",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
)


def _validate(document: dict[str, Any]) -> None:
    key = (document["apiVersion"], document["kind"])
    if key in CRD_SCHEMAS:
        jsonschema.validate(document, CRD_SCHEMAS[key])
    else:
        assert document["apiVersion"] in BUILTIN_GROUPS, f"no schema for {key}"
        kubernetes_validate.validate(document, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_is_valid(render: Render, variant: str) -> None:
    file, overrides = VARIANTS[variant]
    documents = render(file, overrides)
    assert documents
    for document in documents:
        _validate(document)


def test_central_objects(render: Render) -> None:
    documents = render("values-central.yaml")
    assert {
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
        "NetworkPolicy",
        "Cluster",
        "Job",
        "Certificate",
        "StatefulSet",
    } <= kinds(documents)
    assert "StatefulSet" in kinds(documents)  # the Qdrant server
    service = next(d for d in documents if d["kind"] == "Service" and d["metadata"]["name"].endswith("-central"))
    assert service["spec"]["ports"][0]["appProtocol"] == "grpc"
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["central", "--config", "/etc/aeterna/config.yaml"]
    # TLS is on: the kubelet probes the plaintext health-only port; liveness
    # asks for the aeterna.liveness service, readiness for the whole server ("").
    assert container["livenessProbe"]["grpc"] == {"port": 8082, "service": "aeterna.liveness"}
    assert container["startupProbe"]["grpc"] == {"port": 8082, "service": "aeterna.liveness"}
    assert container["readinessProbe"]["grpc"] == {"port": 8082}
    cluster = next(d for d in documents if d["kind"] == "Cluster")
    assert cluster["spec"]["instances"] == 5
    assert cluster["spec"]["storage"]["size"] == "500Gi"
    assert "CREATE EXTENSION IF NOT EXISTS vector" in cluster["spec"]["bootstrap"]["initdb"]["postInitApplicationSQL"]
    assert "shared_preload_libraries" not in cluster["spec"].get("postgresql", {}).get("parameters", {})
    job = next(d for d in documents if d["kind"] == "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["central", "migrate"]
    certificate = next(d for d in documents if d["kind"] == "Certificate")
    assert certificate["spec"]["issuerRef"]["name"] == "letsencrypt-prod"


def test_plaintext_central_probes_the_sync_port(render: Render) -> None:
    documents = render("values-central.yaml", {"tls": {"enabled": False}})
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["grpc"] == {"port": 8081, "service": "aeterna.liveness"}
    assert container["readinessProbe"]["grpc"] == {"port": 8081}


def test_edge_objects(render: Render) -> None:
    documents = render("values-hybrid.yaml")
    statefulset = next(d for d in documents if d["kind"] == "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    sidecar = pod["initContainers"][0]
    assert sidecar["name"] == "dragonfly"
    assert sidecar["restartPolicy"] == "Always"
    assert "--maxmemory=1073741824" in sidecar["args"]
    edge = pod["containers"][0]
    assert edge["args"] == ["edge", "--config", "/etc/aeterna/config.yaml"]
    assert edge["livenessProbe"]["grpc"] == {"port": 50051, "service": "aeterna.liveness"}
    assert edge["readinessProbe"]["grpc"] == {"port": 50051}
    mounts = {m["name"]: m["mountPath"] for m in edge["volumeMounts"]}
    assert mounts["data"] == "/var/lib/aeterna/edge"
    assert mounts["sync-credentials"] == "/etc/aeterna/secrets/sync"
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    secret_volume = next(v for v in pod["volumes"] if v["name"] == "sync-credentials")
    assert secret_volume["secret"]["secretName"] == "aeterna-sync-credentials"


def test_mesh_switches(render: Render) -> None:
    plain = kinds(render("values-central.yaml"))
    assert not {"PeerAuthentication", "DestinationRule", "VirtualService"} & plain
    meshed = render(
        "values-central.yaml",
        {"tls": {"enabled": False}, "mesh": {"istio": {"enabled": True}, "linkerd": {"enabled": True}}},
    )
    assert {"PeerAuthentication", "DestinationRule", "VirtualService"} <= kinds(meshed)
    peer = next(d for d in meshed if d["kind"] == "PeerAuthentication")
    assert peer["spec"]["mtls"]["mode"] == "STRICT"
    rule = next(d for d in meshed if d["kind"] == "DestinationRule")
    assert rule["spec"]["trafficPolicy"]["loadBalancer"]["simple"] == "LEAST_REQUEST"
    assert rule["spec"]["trafficPolicy"]["outlierDetection"]["consecutiveGatewayErrors"] == 3
    route = next(d for d in meshed if d["kind"] == "VirtualService")["spec"]["http"][0]
    assert route["retries"]["attempts"] == 3
    assert "resource-exhausted" not in route["retries"]["retryOn"]
    deployment = next(d for d in meshed if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["metadata"]["annotations"]["linkerd.io/inject"] == "enabled"
    assert deployment["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
    # With its own TLS, central's port is opaque TLS to Istio and no L7 retries are rendered.
    tls_meshed = render("values-central.yaml", {"mesh": {"istio": {"enabled": True}}})
    assert "VirtualService" not in kinds(tls_meshed)
    service = next(d for d in tls_meshed if d["kind"] == "Service" and d["metadata"]["name"].endswith("-central"))
    assert service["spec"]["ports"][0]["appProtocol"] == "tls"


@pytest.mark.parametrize("file", ["values.yaml", "values-central.yaml", "values-hybrid.yaml"])
def test_lint_is_clean(file: str) -> None:
    values = values_file(file)
    if file == "values.yaml":  # the defaults need the edge's signing key (test_production.py)
        values = deep_merge(values, EDGE_MINIMUM)
    report = helm_python.lint(str(CHART_DIR), values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_kubernetes_validate_cli_strict(chart: Any, tmp_path: Path) -> None:
    """The command CI users know, on the built-in kinds of both values files."""
    files = []
    for file in ("values-central.yaml", "values-hybrid.yaml"):
        for index, document in enumerate(render_chart(chart, values_file(file))):
            if (document["apiVersion"], document["kind"]) not in CRD_SCHEMAS:
                path = tmp_path / f"{file}-{index}.yaml"
                path.write_text(yaml.safe_dump(document), encoding="utf-8")
                files.append(str(path))
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "kubernetes-validate"),
            "--strict",
            "--quiet",
            "-k",
            f"{KUBE_VERSION}.0",
            *files,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- failures must fail -----------------------------------------------------------


def test_unknown_values_key_fails(chart: Any) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="maxSzie"):
        chart.render({"sync": {"batch": {"maxSzie": 10}}}, name="a", namespace="a")
    with pytest.raises(helm_python.HelmValuesError, match="replica"):
        chart.render({"workloads": {"central": {"replica": 3}}}, name="a", namespace="a")


def test_broken_template_fails(tmp_path: Path) -> None:
    copy = tmp_path / "aeterna"
    shutil.copytree(CHART_DIR, copy)
    (copy / "templates" / "broken.yaml").write_text("kind: {{ .Values.sync.auth.method | nosuchfunc }}\n")
    with pytest.raises((helm_python.HelmRenderError, helm_python.HelmChartLoadError, helm_python.HelmError)):
        helm_python.Chart.load(str(copy)).render({}, name="a", namespace="a")


def test_unknown_manifest_field_fails(tmp_path: Path) -> None:
    copy = tmp_path / "aeterna"
    shutil.copytree(CHART_DIR, copy)
    pdb = copy / "templates" / "central" / "pdb.yaml"
    pdb.write_text(pdb.read_text().replace("  minAvailable:", "  minAvailabel: 1\n  minAvailable:"))
    documents = render_chart(helm_python.Chart.load(str(copy)), values_file("values-central.yaml"))
    bad = next(d for d in documents if d["kind"] == "PodDisruptionBudget")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)


def test_crd_typo_fails(render: Render) -> None:
    documents = render("values-central.yaml")
    cluster = next(d for d in documents if d["kind"] == "Cluster")
    cluster["spec"]["instancez"] = 3
    with pytest.raises(jsonschema.ValidationError):
        _validate(cluster)


def test_required_settings_fail_loudly(chart: Any) -> None:
    values = values_file("values-central.yaml")
    values["tls"]["certManager"]["issuer"] = None
    with pytest.raises(helm_python.HelmRenderError, match="issuer"):
        chart.render(values, name="a", namespace="a")
    with pytest.raises(helm_python.HelmRenderError, match="identity"):
        chart.render(deep_merge(EDGE_MINIMUM, {"workloads": {"edge": {"replicas": 2}}}), name="a", namespace="a")


# --- generated files are fresh -------------------------------------------------------


@pytest.mark.parametrize("tool", ["gen_values_schema.py", "gen_dashboard.py"])
def test_generated_files_are_fresh(tool: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "tools" / tool), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_dashboard_covers_the_sync_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy" / "dashboards" / "aeterna-sync.json").read_text())
    expressions = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "aeterna_sync_batches_total",
        "aeterna_sync_items_total",
        "aeterna_outbox_depth",
        "aeterna_sync_lag_seconds",
        "aeterna_last_sync_timestamp_seconds",
        "aeterna_edges_online",
        "aeterna_dead_letters_total",
        "aeterna_rpc_rate_limited_total",
        "aeterna_rpc_auth_failures_total",
        "grpc_server_handled_total",
        'grpc_code!="OK"',
        "grpc_server_handling_seconds_bucket",
        "grpc_server_msg_received_total",
    ):
        assert metric in expressions
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for metric in ("aeterna_sync_batches_total", "aeterna_outbox_depth", "aeterna_edges_online"):
        assert metric in docs
