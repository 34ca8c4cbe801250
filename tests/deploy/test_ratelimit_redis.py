"""Central's shared rate limiter: one Redis for every replica's token buckets.

With N central replicas and buckets kept in process, an edge gets N x
``sync.rateLimit``. The chart renders a small limiter Redis for central
(``workloads.central.rateLimitRedis``) and points ``sync.rateLimitRedisUrl`` at
it. The evidence:

* values-central.yaml (several replicas, an HPA) renders the limiter's
  Deployment, Service, Secret and NetworkPolicy, all valid, and central's
  config - loaded by the project's loader, with the URL taken from the rendered
  Secret as the kubelet would - names that Service;
* the limiter container's args, unchanged except for the listener and the
  directory, start Debian's real ``redis-server``, and the project's
  ``RedisTokenBucketLimiter`` shares one bucket across two "replicas" on it;
* the switch (auto / true / false, sync.rateLimitRedisUrl, an external
  Secret) renders what it says. The fail guard, the unknown-key refusal and the
  option matrix live in test_production.py (FAILURES, UNKNOWN_KEYS,
  CENTRAL_OPTIONS).
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml

from aeterna_shared.config import AeternaConfig, load_config
from interceptors.ratelimit import RedisTokenBucketLimiter, TokenBucketLimiter, limiter_from_config
from tests.deploy.conftest import (
    CHART_DIR,
    NAMESPACE,
    Render,
    deep_merge,
    find,
    helm_python,
    render_chart,
    values_file,
)
from tests.deploy.test_chart import _validate
from tests.deploy.test_edge_cache import _groups, _last
from tests.support.redis import answers

LIMITER = "-ratelimit-redis"
ENV = "AETERNA_SYNC__RATE_LIMIT_REDIS_URL"
SINGLE = {"workloads": {"central": {"replicas": 1, "autoscaling": {"enabled": False}}}}


# --- reading the rendered objects ---------------------------------------------------


def _pod(documents: list[dict[str, Any]], name_suffix: str) -> dict[str, Any]:
    pod: dict[str, Any] = find(documents, "Deployment", name_suffix)["spec"]["template"]["spec"]
    return pod


def _secret_value(documents: list[dict[str, Any]], name: str, key: str) -> str | None:
    """A value of a Secret the chart renders (None: the Secret is not the chart's)."""
    for document in documents:
        if document["kind"] == "Secret" and document["metadata"]["name"] == name:
            return base64.b64decode(document["data"][key]).decode()
    return None


def _env(documents: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's env as the kubelet resolves it: the chart's own Secrets read, others replaced by stand-ins."""
    environ = {}
    for variable in container.get("env", []):
        if "value" in variable:
            environ[variable["name"]] = variable["value"]
            continue
        ref = variable["valueFrom"].get("secretKeyRef")
        value = _secret_value(documents, ref["name"], ref["key"]) if ref else None
        environ[variable["name"]] = value if value is not None else f"stand-in-for-{variable['name'].lower()}"
    return environ


def _central_config(documents: list[dict[str, Any]], tmp_path: Path) -> tuple[AeternaConfig, dict[str, str]]:
    """The config central's container loads: its mounted ConfigMap plus its resolved AETERNA_* env."""
    pod = _pod(documents, "-central")
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/aeterna/config.yaml")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = next(
        d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    )
    path = tmp_path / "central-config.yaml"
    path.write_text(config_map["data"][mount["subPath"]], encoding="utf-8")
    environ = {k: v for k, v in _env(documents, container).items() if k != "AETERNA_CONFIG"}
    return load_config(path, environ), environ


def _expand(args: list[str], environ: dict[str, str]) -> list[str]:
    """The kubelet's $(VAR) expansion of container args (unknown names stay as written)."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: environ.get(m[1], m[0]), arg) for arg in args]


# --- what values-central.yaml renders ------------------------------------------------


def test_central_values_render_a_shared_limiter(render: Render, tmp_path: Path) -> None:
    documents = render("values-central.yaml")
    for document in documents:
        _validate(document)
    central = values_file("values-central.yaml")["workloads"]["central"]
    assert central["autoscaling"]["enabled"]
    assert central["autoscaling"]["maxReplicas"] > 1

    deployment = find(documents, "Deployment", LIMITER)
    service = find(documents, "Service", LIMITER)
    secret = find(documents, "Secret", LIMITER)
    policy = find(documents, "NetworkPolicy", LIMITER)
    assert not [d for d in documents if d["kind"] == "HorizontalPodAutoscaler" and LIMITER in d["metadata"]["name"]]
    assert deployment["spec"]["replicas"] == 1

    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The image the chart already pins for the edge's session store, by full tag.
    store_image = values_file("values.yaml")["sessionStore"]["image"]
    assert container["image"] == f"{store_image['repository']}:{store_image['tag']}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", container["image"].rsplit(":", 1)[1])
    # Locked down like the other workloads; bounded.
    defaults = values_file("values.yaml")
    assert pod["securityContext"] == defaults["podSecurityContext"]
    assert container["securityContext"] == defaults["containerSecurityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["cpu"]
    # Nothing persistent: no claim, only an emptyDir for the working directory.
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    assert next(v for v in pod["volumes"] if v["name"] == "data")["emptyDir"]
    args = container["args"]
    assert _last(args, "--save") == [""]
    assert _last(args, "--appendonly") == ["no"]
    assert _last(args, "--maxmemory-policy") == ["volatile-ttl"]
    assert _last(args, "--maxmemory") == [str(64 * 1024 * 1024)]
    assert _last(args, "--requirepass") == ["$(LIMITER_PASSWORD)"]
    assert container["readinessProbe"]["exec"]
    assert container["livenessProbe"]["exec"]

    # The Service reaches the pod's port; only central's pods may connect.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == container["ports"][0]["name"]
    assert port["port"] == container["ports"][0]["containerPort"]
    assert _last(args, "--port") == [str(port["port"])]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = policy["spec"]["ingress"]
    central_labels = find(documents, "Deployment", "-central")["spec"]["template"]["metadata"]["labels"]
    assert [p["podSelector"]["matchLabels"].items() <= central_labels.items() for p in rule["from"]] == [True]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]

    # Central's config, as the project's loader reads it, names the Service (with the generated password).
    config, environ = _central_config(documents, tmp_path)
    url = urlsplit(config.sync.rate_limit_redis_url or "")
    name = service["metadata"]["name"]
    assert (url.scheme, url.hostname, url.port, url.path) == ("redis", f"{name}.{NAMESPACE}.svc", port["port"], "/0")
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) >= 32
    assert url.password == password
    assert environ[ENV] == config.sync.rate_limit_redis_url
    # The password never reaches a ConfigMap.
    for document in documents:
        if document["kind"] == "ConfigMap":
            assert password not in yaml.safe_dump(document)
            assert "rateLimitRedisUrl" not in yaml.safe_dump(document)
    # The migration Job (a pre-upgrade hook, before the Secret may exist) does not get it.
    job = find(documents, "Job", "-migrate")["spec"]["template"]["spec"]["containers"][0]
    assert ENV not in {v["name"] for v in job["env"]}


def test_the_limiter_password_is_kept_on_upgrade(tmp_path: Path) -> None:
    """The lookup's result is kept: a stand-in for the cluster's Secret replaces the lookup call."""
    copy = tmp_path / "aeterna"
    shutil.copytree(CHART_DIR, copy)
    template = copy / "templates" / "central" / "ratelimit-redis.yaml"
    text = template.read_text(encoding="utf-8")
    call = 'lookup "v1" "Secret" .Release.Namespace $name'
    assert call in text
    existing = base64.b64encode(b"kept-password").decode()
    template.write_text(text.replace(call, f'dict "data" (dict "password" "{existing}")'), encoding="utf-8")
    documents = render_chart(helm_python.Chart.load(str(copy)), values_file("values-central.yaml"))
    secret = find(documents, "Secret", LIMITER)
    assert base64.b64decode(secret["data"]["password"]) == b"kept-password"
    assert urlsplit(base64.b64decode(secret["data"]["url"]).decode()).password == "kept-password"


# --- the rendered server, run for real, with the project's limiter --------------------


def _run_args(args: list[str], sock: Path, directory: Path) -> list[str]:
    """The args with only the listener (a Unix socket, no TCP port) and the directory rewritten."""
    rewritten: list[str] = []
    replaced = {"--port": ["0"], "--dir": [str(directory)]}
    for flag, values in _groups(args):
        rewritten += [flag, *replaced.get(flag, values)]
    return [*rewritten, "--unixsocket", str(sock), "--unixsocketperm", "700"]


def test_rendered_limiter_shares_buckets_across_replicas(render: Render, tmp_path: Path, short_dir: Path) -> None:
    documents = render("values-central.yaml")
    container = _pod(documents, LIMITER)["containers"][0]
    config, _ = _central_config(documents, tmp_path)
    assert config.sync.rate_limit_redis_url
    password = urlsplit(config.sync.rate_limit_redis_url).password
    assert password

    # What the container runs: the kubelet expands $(LIMITER_PASSWORD) from the Secret.
    args = _expand(container["args"], _env(documents, container))
    assert _last(args, "--requirepass") == [password]
    sock = short_dir / "l.sock"
    run_args = _run_args(args, sock, tmp_path)
    assert [g for g in _groups(run_args) if g[0] not in {"--port", "--dir", "--unixsocket", "--unixsocketperm"}] == [
        g for g in _groups(args) if g[0] not in {"--port", "--dir"}
    ]
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    log = tmp_path / "redis.log"
    with log.open("ab") as out:
        process = subprocess.Popen([binary, *run_args], stdout=out, stderr=subprocess.STDOUT)
    # What central dials, moved to the test's socket: same scheme of auth (the password), same database.
    url = f"unix://:{password}@{sock}?db=0"
    try:
        assert answers(url, alive=lambda: process.poll() is None), log.read_text(errors="replace")[-2000:]
        client = redis.Redis.from_url(url, decode_responses=True)
        settings = {key: client.config_get(key)[key] for key in ("save", "appendonly", "maxmemory-policy", "maxmemory")}
        assert settings == {
            "save": "",
            "appendonly": "no",
            "maxmemory-policy": "volatile-ttl",
            "maxmemory": str(64 * 1024 * 1024),
        }
        # The server rewrites its process title: the expanded password does not show in ps.
        cmdline = Path(f"/proc/{process.pid}/cmdline")
        if cmdline.exists():
            assert password.encode() not in cmdline.read_bytes()
        # Without the password nothing gets in.
        anonymous = redis.Redis.from_url(f"unix://{sock}")
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()

        # The project's limiter, as central builds it from this config, is the shared (Redis) one.
        built = limiter_from_config(config.sync)
        assert isinstance(built, RedisTokenBucketLimiter)
        asyncio.run(built.close())

        async def calls() -> None:
            # Two replicas, one bucket: 0.1 token/s, burst 3 (small, so refill cannot blur the count).
            replica_a = RedisTokenBucketLimiter(url, 0.1, 3)
            replica_b = RedisTokenBucketLimiter(url, 0.1, 3)
            try:
                assert [await replica_a.acquire("tenant/edge-1") for _ in range(2)] == [0.0, 0.0]
                assert await replica_b.acquire("tenant/edge-1") == 0.0
                # The bucket is empty for both replicas: the limit is not multiplied.
                for replica in (replica_a, replica_b):
                    wait = await replica.acquire("tenant/edge-1")
                    assert 5.0 < wait <= 10.0
                # Another edge has its own bucket.
                assert await replica_b.acquire("tenant/edge-2") == 0.0
            finally:
                await replica_a.close()
                await replica_b.close()

        asyncio.run(calls())
        # The buckets live in this server (no fallback to a per-replica bucket), each with a TTL,
        # which is what lets volatile-ttl evict them.
        keys = sorted(client.keys("aeterna:ratelimit:*"))
        assert keys == ["aeterna:ratelimit:tenant/edge-1", "aeterna:ratelimit:tenant/edge-2"]
        for key in keys:
            assert 0 < client.pttl(key) <= 3 / 0.1 * 1000 + 1000
        client.close()
    finally:
        process.terminate()
        process.wait(30)


# --- the switch ----------------------------------------------------------------------


def _central(overrides: dict[str, Any]) -> dict[str, Any]:
    return deep_merge(values_file("values-central.yaml"), overrides)


def _limiter_objects(documents: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in documents if d["metadata"]["name"].endswith(LIMITER))


def _central_env(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return {v["name"]: v for v in _pod(documents, "-central")["containers"][0]["env"]}


def test_one_replica_needs_no_limiter(render: Render, tmp_path: Path) -> None:
    documents = render("values-central.yaml", SINGLE)
    assert _limiter_objects(documents) == []
    assert ENV not in _central_env(documents)
    config, _ = _central_config(documents, tmp_path)
    assert config.sync.rate_limit_redis_url is None
    assert isinstance(limiter_from_config(config.sync), TokenBucketLimiter)
    # ... unless asked for.
    forced = render(
        "values-central.yaml", deep_merge(SINGLE, {"workloads": {"central": {"rateLimitRedis": {"enabled": True}}}})
    )
    assert _limiter_objects(forced) == ["Deployment", "NetworkPolicy", "Secret", "Service"]
    assert ENV in _central_env(forced)


def test_an_autoscaled_central_gets_the_limiter_without_fixed_replicas(render: Render) -> None:
    documents = render("values-central.yaml", {"workloads": {"central": {"replicas": 1}}})
    assert "Deployment" in _limiter_objects(documents)


def test_a_limiter_of_your_own(render: Render, tmp_path: Path) -> None:
    own = "redis://limiter.shared.svc:6379/2"
    documents = render("values-central.yaml", {"sync": {"rateLimitRedisUrl": own}})
    assert _limiter_objects(documents) == []
    assert ENV not in _central_env(documents)
    config, _ = _central_config(documents, tmp_path)
    assert config.sync.rate_limit_redis_url == own

    from_secret = render(
        "values-central.yaml",
        {"workloads": {"central": {"rateLimitRedis": {"external": {"existingSecret": "limiter", "key": "uri"}}}}},
    )
    assert _limiter_objects(from_secret) == []
    assert _central_env(from_secret)[ENV]["valueFrom"]["secretKeyRef"] == {"name": "limiter", "key": "uri"}
    for document in from_secret:
        _validate(document)


def test_network_policy_follows_the_switch(render: Render) -> None:
    documents = render("values-central.yaml", {"networkPolicy": {"enabled": False}})
    assert _limiter_objects(documents) == ["Deployment", "Secret", "Service"]


def test_an_edge_only_release_renders_no_limiter(render: Render) -> None:
    assert _limiter_objects(render("values-hybrid.yaml")) == []


def test_the_guard_names_the_values(chart: Any) -> None:
    values = _central({"workloads": {"central": {"rateLimitRedis": {"enabled": False}}}})
    with pytest.raises(helm_python.HelmRenderError) as raised:
        chart.render(values, name="aeterna", namespace="aeterna")
    message = str(raised.value)
    for name in (
        "workloads.central.rateLimitRedis.enabled",
        "sync.rateLimitRedisUrl",
        "workloads.central.autoscaling.maxReplicas",
    ):
        assert name in message
    # One replica, or a Redis of one's own, satisfies it.
    chart.render(deep_merge(values, SINGLE), name="aeterna", namespace="aeterna")
    chart.render(deep_merge(values, {"sync": {"rateLimitRedisUrl": "redis://r:6379/0"}}), name="a", namespace="a")
