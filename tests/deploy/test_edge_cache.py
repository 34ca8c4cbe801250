"""The edge pod's caches, as the chart renders them, keep the durability guarantee.

The session store (``cache.url``) must never evict and must log every write to
its volume; only working memory (``cache.workingUrl``) may be evicted. The
evidence is not a look at the flags alone: the session-store container's args
are taken from the rendered StatefulSet and handed, unchanged except for where
the server listens and which directory it writes, to Debian's real
``redis-server``, which is then filled past its bound. Dragonfly (working
memory) cannot run here, so its flags are checked against the rendered config.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import redis

from aeterna_shared.config import AeternaConfig, load_config
from tests.deploy.conftest import Render, helm_python

SESSION_MAX = "4Mi"
SESSION_MAX_BYTES = 4 * 1024 * 1024
WORKING_MAX = "512Mi"
VALUE = b"s" * 4096
OVERRIDES = {"cache": {"layers": {"session": {"maxSize": SESSION_MAX}, "working": {"maxSize": WORKING_MAX}}}}


# --- reading the rendered pod ------------------------------------------------------


def _edge_statefulset(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-edge"))


def _edge_pod(documents: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = _edge_statefulset(documents)["spec"]["template"]["spec"]
    return pod


def _claims(documents: list[dict[str, Any]]) -> set[str]:
    """Names of the edge's persistent volumes (its volumeClaimTemplates)."""
    return {c["metadata"]["name"] for c in _edge_statefulset(documents)["spec"]["volumeClaimTemplates"]}


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    return next(c for c in containers if c["name"] == name)


def _names(pod: dict[str, Any]) -> list[str]:
    return [c["name"] for c in (*pod.get("initContainers", []), *pod["containers"])]


def _edge_config(documents: list[dict[str, Any]], pod: dict[str, Any], tmp_path: Path) -> AeternaConfig:
    """The config the edge container loads: its mounted ConfigMap plus its AETERNA_* env (stand-ins for secrets)."""
    edge = _container(pod, "edge")
    mount = next(m for m in edge["volumeMounts"] if m["mountPath"] == "/etc/aeterna/config.yaml")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = next(
        d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    )
    path = tmp_path / "edge-config.yaml"
    path.write_text(config_map["data"][mount["subPath"]], encoding="utf-8")
    environ = {}
    for variable in edge.get("env", []):
        if variable["name"] == "AETERNA_CONFIG":
            continue
        environ[variable["name"]] = variable.get("value", f"stand-in-for-{variable['name'].lower()}")
    return load_config(path, environ)


def _groups(args: list[str]) -> list[tuple[str, list[str]]]:
    """Redis-style command line ``--flag value...`` as (flag, values) in order."""
    groups: list[tuple[str, list[str]]] = []
    for arg in args:
        if arg.startswith("--"):
            groups.append((arg, []))
        else:
            assert groups, f"value {arg!r} before any flag"
            groups[-1][1].append(arg)
    return groups


def _last(args: list[str], flag: str) -> list[str] | None:
    """The values the server ends up with for ``flag`` (the last occurrence wins)."""
    found = [values for name, values in _groups(args) if name == flag]
    return found[-1] if found else None


def _dragonfly_flags(args: list[str]) -> dict[str, str]:
    flags = {}
    for arg in args:
        assert arg.startswith("--"), arg
        name, _, value = arg.partition("=")
        flags[name] = value
    return flags


# --- running the rendered session store ---------------------------------------------


def _run_args(args: list[str], sock: Path, directory: Path) -> list[str]:
    """The rendered args, with only the listener (a Unix socket, no TCP port) and the directory rewritten."""
    rewritten: list[str] = []
    replaced = {"--port": ["0"], "--dir": [str(directory)]}
    for flag, values in _groups(args):
        rewritten += [flag, *replaced.get(flag, values)]
    return [*rewritten, "--unixsocket", str(sock), "--unixsocketperm", "700"]


class _Server:
    """Debian's redis-server started with the given args; stopped (or killed) by the test."""

    def __init__(self, args: list[str], sock: Path, log: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        sock.unlink(missing_ok=True)
        self.url = f"unix://{sock}"
        self._log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen([binary, *args], stdout=out, stderr=subprocess.STDOUT)
        self.client = self._connect()

    def _connect(self) -> redis.Redis:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self._log.read_text(errors='replace')[-2000:]}")
            client = redis.Redis.from_url(self.url)
            try:
                if client.ping():
                    return client
            except (redis.ConnectionError, redis.BusyLoadingError, OSError):
                pass
            client.close()
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(30)


# --- the tests ----------------------------------------------------------------------


def test_session_store_refuses_writes_when_full_and_evicts_nothing(
    render: Render, tmp_path: Path, short_dir: Path
) -> None:
    documents = render("values-hybrid.yaml", OVERRIDES)
    pod = _edge_pod(documents)
    config = _edge_config(documents, pod, tmp_path)

    # The edge is pointed at both caches and keeps its own guard on.
    assert config.cache.url
    assert config.cache.working_url
    assert config.cache.url != config.cache.working_url
    assert config.cache.allow_unsafe_cache is False
    assert config.cache.layers.session.max_size == SESSION_MAX_BYTES

    store = _container(pod, "session-store")
    assert store.get("restartPolicy") == "Always"  # a native sidecar: up before the edge, down after it
    args = store["args"]
    assert "command" not in store  # the image's entrypoint runs the server with these args
    # It listens where cache.url points, and on loopback only.
    url = urlsplit(config.cache.url)
    assert url.scheme == "redis"
    assert url.hostname == "127.0.0.1"
    assert _last(args, "--port") == [str(url.port)]
    bind = _last(args, "--bind")
    assert bind
    assert all(address in {"127.0.0.1", "::1", "-::1"} for address in bind)
    # Its directory is the edge's persistent volume (the claim the edge's data dir uses), in its own subPath.
    dir_value = _last(args, "--dir")
    assert dir_value
    mount = next(m for m in store["volumeMounts"] if m["mountPath"] == dir_value[0])
    assert mount["name"] in _claims(documents)
    assert mount.get("subPath")
    assert not mount.get("readOnly", False)
    edge_mount = next(m for m in _container(pod, "edge")["volumeMounts"] if m["name"] == mount["name"])
    assert edge_mount["mountPath"] == config.edge.data_dir
    assert "subPath" not in edge_mount

    sock = short_dir / "s.sock"
    data = tmp_path / "volume" / mount["subPath"]
    data.mkdir(parents=True)
    run_args = _run_args(args, sock, data)
    # Nothing but the listener and the directory differs from what the pod runs.
    assert [g for g in _groups(run_args) if g[0] not in {"--port", "--dir", "--unixsocket", "--unixsocketperm"}] == [
        g for g in _groups(args) if g[0] not in {"--port", "--dir"}
    ]

    server = _Server(run_args, sock, tmp_path / "redis.log")
    try:
        client = server.client
        settings = {
            key: client.config_get(key)[key]
            for key in ("appendonly", "appendfsync", "maxmemory-policy", "maxmemory", "save")
        }
        assert settings == {
            "appendonly": "yes",
            "appendfsync": "always",
            "maxmemory-policy": "volatile-lru",
            "maxmemory": str(SESSION_MAX_BYTES),
            "save": "",
        }

        # Synced copies carry a TTL (central holds them): the only keys the store may evict.
        synced = 100
        for index in range(synced):
            client.set(f"synced:{index}", VALUE, ex=86_400)
        # Fill it with unsynced sessions (no TTL) under memory pressure until it refuses a write.
        written = 0
        refused: redis.OutOfMemoryError | None = None
        for index in range(SESSION_MAX_BYTES // 64):
            try:
                client.set(f"session:{index}", VALUE)
            except redis.OutOfMemoryError as error:
                refused = error
                break
            written += 1
        assert refused is not None, "the store took more than its bound without refusing"
        assert "OOM" in str(refused) or "maxmemory" in str(refused)
        assert written > 0
        # Every synced copy went before the store refused; no unsynced session went.
        assert int(client.info("stats")["evicted_keys"]) == synced
        keys_before = client.dbsize()
        assert keys_before == written

        # Further writes, of every shape, are refused too; nothing already written is evicted.
        for attempt in range(50):
            with pytest.raises(redis.OutOfMemoryError):
                client.set(f"late:{attempt}", VALUE)
        with pytest.raises(redis.OutOfMemoryError):
            client.hset("late:hash", "field", VALUE)
        with pytest.raises(redis.OutOfMemoryError):
            client.rpush("late:list", VALUE)
        assert client.dbsize() == keys_before
        assert int(client.info("stats")["evicted_keys"]) == synced
        assert client.mget([f"session:{i}" for i in range(written)]) == [VALUE] * written

        # Every acknowledged write is in the append-only file, in the mounted directory.
        aof_files = [p for p in data.rglob("*") if p.is_file() and ".aof" in p.name]
        assert aof_files, sorted(p.name for p in data.rglob("*"))
        assert sum(p.stat().st_size for p in aof_files) > written * len(VALUE)
    finally:
        server.stop(signal.SIGKILL)

    # Killed without a chance to save: the file alone brings every key back.
    restarted = _Server(run_args, sock, tmp_path / "redis.log")
    try:
        assert restarted.client.dbsize() == written
        assert restarted.client.get(f"session:{written - 1}") == VALUE
    finally:
        restarted.stop()


def test_working_memory_cache_evicts_within_the_working_bound(render: Render, tmp_path: Path) -> None:
    documents = render("values-hybrid.yaml", OVERRIDES)
    pod = _edge_pod(documents)
    config = _edge_config(documents, pod, tmp_path)
    working = _container(pod, "dragonfly")
    assert working["image"].split("/")[-1].startswith("dragonfly:")
    assert not working["image"].endswith(":latest")
    flags = _dragonfly_flags(working["args"])

    # Dragonfly cannot run here: its flags are the evidence. Cache mode evicts when the bound is reached.
    assert flags["--cache_mode"] == "true"
    assert flags["--maxmemory"] == str(config.cache.layers.working.max_size)
    assert config.cache.layers.working.max_size == 512 * 1024 * 1024
    # It is what cache.workingUrl names, on loopback, and never snapshots (nothing in it must survive).
    url = urlsplit(config.cache.working_url or "")
    assert (url.hostname, url.port) == ("127.0.0.1", int(flags["--port"]))
    assert flags["--bind"] == "127.0.0.1"
    assert flags["--dbfilename"] == ""
    assert "--snapshot_cron" not in flags
    # Not on the persistent volume.
    assert all(m["name"] not in _claims(documents) for m in working.get("volumeMounts", []))

    # Working memory told not to evict: Dragonfly leaves cache mode.
    never = render("values-hybrid.yaml", {"cache": {"layers": {"working": {"evictionPolicy": "noeviction"}}}})
    assert "--cache_mode=true" not in _container(_edge_pod(never), "dragonfly")["args"]


def test_images_are_pinned(render: Render) -> None:
    pod = _edge_pod(render("values-hybrid.yaml"))
    for name in ("session-store", "dragonfly"):
        image = _container(pod, name)["image"]
        tag = image.rsplit(":", 1)[-1]
        assert tag not in {"", "latest"}, image
        assert "/" not in tag, image


def test_unbounded_session_store_has_no_maxmemory(render: Render) -> None:
    pod = _edge_pod(render(None, {"workloads": {"edge": {"signingKey": {"existingSecret": "edge-signing-key"}}}}))
    args = _container(pod, "session-store")["args"]
    assert _last(args, "--maxmemory") is None
    assert _last(args, "--maxmemory-policy") == ["volatile-lru"]
    assert _last(args, "--appendonly") == ["yes"]
    assert _last(args, "--appendfsync") == ["always"]
    assert _last(args, "--save") == [""]


def test_extra_args_cannot_weaken_the_session_store(render: Render) -> None:
    extra = ["--maxmemory-policy", "allkeys-lru", "--appendfsync", "everysec", "--appendonly", "no"]
    pod = _edge_pod(render("values-hybrid.yaml", {"sessionStore": {"extraArgs": extra}}))
    args = _container(pod, "session-store")["args"]
    assert _last(args, "--maxmemory-policy") == ["volatile-lru"]
    assert _last(args, "--appendfsync") == ["always"]
    assert _last(args, "--appendonly") == ["yes"]


def _validate(documents: list[dict[str, Any]]) -> None:
    version = kubernetes_validate.latest_version()
    for document in documents:
        if document["apiVersion"] in {"v1", "apps/v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1"}:
            kubernetes_validate.validate(document, version, strict=True)


def test_external_session_store_from_values(render: Render, tmp_path: Path) -> None:
    external = "redis://sessions.cache.svc:6379/0"
    documents = render("values-hybrid.yaml", {"sessionStore": {"mode": "external"}, "cache": {"url": external}})
    _validate(documents)
    pod = _edge_pod(documents)
    assert "session-store" not in _names(pod)
    assert "dragonfly" in _names(pod)
    config = _edge_config(documents, pod, tmp_path)
    assert config.cache.url == external
    assert config.cache.working_url == "redis://127.0.0.1:6380/0"
    assert config.cache.allow_unsafe_cache is False


def test_external_session_store_from_a_secret(render: Render, tmp_path: Path) -> None:
    documents = render(
        "values-hybrid.yaml",
        {"sessionStore": {"mode": "external", "external": {"existingSecret": "edge-session-store"}}},
    )
    _validate(documents)
    pod = _edge_pod(documents)
    assert "session-store" not in _names(pod)
    env = {v["name"]: v for v in _container(pod, "edge")["env"]}
    assert env["AETERNA_CACHE__URL"]["valueFrom"]["secretKeyRef"] == {"name": "edge-session-store", "key": "url"}
    config_map = next(
        d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-edge-config")
    )
    assert "url: redis" not in config_map["data"]["config.yaml"].replace("workingUrl", "")
    config = _edge_config(documents, pod, tmp_path)
    assert config.cache.url == "stand-in-for-aeterna_cache__url"


def test_ambiguous_cache_settings_fail(chart: Any) -> None:
    def render(values: dict[str, Any]) -> None:
        chart.render(values, name="a", namespace="a")

    with pytest.raises(helm_python.HelmRenderError, match=r"sessionStore\.mode: external"):
        render({"cache": {"url": "redis://elsewhere:6379/0"}})
    with pytest.raises(helm_python.HelmRenderError, match="needs the store's URL"):
        render({"sessionStore": {"mode": "external"}})
    with pytest.raises(helm_python.HelmRenderError, match=r"dragonfly\.enabled: false"):
        render({"cache": {"workingUrl": "redis://elsewhere:6379/0"}})
    with pytest.raises(helm_python.HelmRenderError, match="must differ"):
        render({"dragonfly": {"port": 6379}})
    with pytest.raises(helm_python.HelmRenderError, match="neither sidecar nor external"):
        render({"sessionStore": {"mode": "dragonfly"}})
    with pytest.raises(helm_python.HelmValuesError, match="persistance"):
        render({"sessionStore": {"persistance": True}})
