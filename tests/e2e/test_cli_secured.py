"""Every ``aeterna`` command that talks to a server, against a secured deployment.

A real central and a real edge run in production mode (no ``--development``):
TLS on both, client certificates required by both (mTLS), and API keys
(``sync.auth.method: apiKey`` with a keys file of SHA-256 hashes) at both; the
edge reaches central over the same TLS + mTLS + API key. Each command runs as a
subprocess, exactly as typed in a shell, with the shared connection options
(``aeterna_cli.connection``), with and without ``--json``; the assertions are on
what an operator sees: exit status, stdout, stderr. The same commands without
the client certificate or with a wrong API key fail with one line naming the
gRPC status and the reason, exit status 1, and no traceback.

The edge's own certificate serves its agents and identifies it to central, so
it carries both the serverAuth and the clientAuth usage (BoringSSL refuses a
serverAuth-only certificate as a client's).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import decision_pb2, policy_pb2_grpc
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aeterna_cli.api.operators import RpcFailure, plan_publish, send_publish
from aeterna_cli.connection import describe
from aeterna_client.channel import ClientSettings, open_channel
from aeterna_security.certs import Issued, create_client_cert
from aeterna_shared.config.model import AuthConfig
from aeterna_shared.wire.canonical import sign_batch
from interceptors.authenticators import hash_api_key
from tests.support.cli import aeterna
from tests.support.services import ServiceFactory, ServiceProcess, write_config
from tests.support.tls import TlsMaterial

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "examples" / "policies"

# Test credentials, not secrets.
OPERATOR_KEY = "sk-cli-operator-5b0e7c1d9a2f4e68"
EDGE_KEY = "sk-cli-edge-1-83a1f0c2d4e6b7a9"
REPLAYER_KEY = "sk-cli-edge-2-0c9d8e7f6a5b4c3d"
WRONG_KEY = "sk-cli-nobody-ffffffffffffffff"
SIGNING = {"edge-1": "hmac-cli-edge-1-5e4d3c2b1a09f8e7", "edge-2": "hmac-cli-edge-2-7f6e5d4c3b2a1908"}


@dataclass(frozen=True)
class Deployment:
    """The running central and edge, and the files an operator holds."""

    central: ServiceProcess
    edge: ServiceProcess
    ca: Path
    operator_cert: Path
    operator_key: Path
    untrusted_cert: Path
    untrusted_key: Path
    api_key_file: Path
    home: Path
    server_pin: str
    """SPKI pin of central's certificate."""
    other_pin: str
    """SPKI pin of another certificate of the same CA (an impostor central would present)."""

    def tls(self) -> list[str]:
        """CA and the operator's client certificate."""
        return ["--ca-file", str(self.ca), "--cert-file", str(self.operator_cert), "--key-file", str(self.operator_key)]

    def at_central(self, *extra: str) -> list[str]:
        """The full set of flags for central: target, TLS, mTLS, API key (from a file)."""
        return ["--target", self.central.target, *self.tls(), "--api-key-file", str(self.api_key_file), *extra]

    def at_edge(self, *extra: str) -> list[str]:
        """The same for the edge's agent API."""
        return ["--target", self.edge.target, *self.tls(), "--api-key-file", str(self.api_key_file), *extra]

    def settings(self, key: str) -> ClientSettings:
        """The project's own client settings with ``key`` (for setting the scene, not under test)."""
        return ClientSettings(
            tls=True,
            ca_file=str(self.ca),
            cert_file=str(self.operator_cert),
            key_file=str(self.operator_key),
            auth=AuthConfig(method="apiKey", api_key=key),
        )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """stdout of a command that must have succeeded."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document a ``--json`` command printed."""
    return json.loads(ok(result))


def failure_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a command that must have failed on its call (exit 1, nothing on stdout)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def dual_use_certificate(ca: Issued, agent_id: str, directory: Path) -> tuple[Path, Path]:
    """A certificate for an edge: its server certificate (localhost, 127.0.0.1) and its client identity."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, agent_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "default"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    issued = Issued(
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return issued.write(directory, agent_id)


@pytest.fixture
def deployment(services: ServiceFactory, database_url: str, tls_material: TlsMaterial, tmp_path: Path) -> Deployment:
    """Central and an edge with TLS, required client certificates and API keys; production mode."""
    home = tmp_path / "operator"
    ca = Issued(tls_material.ca.cert_pem, tls_material.ca.key_pem)
    operator_cert, operator_key = create_client_cert(ca, "operator").write(home, "operator")
    edge_cert, edge_key = dual_use_certificate(ca, "edge-1", tmp_path / "edge-pki")
    api_key_file = home / "api-key"
    api_key_file.write_text(OPERATOR_KEY + "\n")

    central_keys = write_config(
        tmp_path / "central-api-keys.yaml",
        {
            "keys": [
                {"sha256": hash_api_key(OPERATOR_KEY), "agentId": "operator", "scopes": ["admin", "sync"]},
                {"sha256": hash_api_key(EDGE_KEY), "agentId": "edge-1"},
                {"sha256": hash_api_key(REPLAYER_KEY), "agentId": "edge-2"},
            ]
        },
    )
    signing_keys = write_config(tmp_path / "signing-keys.yaml", SIGNING)
    server_tls = {
        "enabled": True,
        "caFile": str(tls_material.ca.cert),
        "requireClientCert": True,
    }
    central = services.make(
        "central",
        "central",
        {
            "deploymentMode": "central",
            "postgresql": {"url": database_url},
            "central": {"dataDir": str(tmp_path / "central" / "data")},
            "sync": {
                "listenPort": 0,
                "auth": {"method": "apiKey", "apiKeysFile": str(central_keys)},
                "signing": {"keysFile": str(signing_keys)},
            },
            "tls": {**server_tls, "certFile": str(tls_material.server.cert), "keyFile": str(tls_material.server.key)},
            "aeterna": {"offline": {"conflictResolutionByAction": {'Action::"approve"': "manual"}}},
            "telemetry": {"metricsPort": 0, "logFormat": "text"},
        },
        development=False,
    ).start()
    central.keep_port()  # so that `--config central.yaml` names the port it listens on

    # The edge's agents: the operator's key (agent scope) is the only one it accepts.
    edge_keys = write_config(
        tmp_path / "edge-api-keys.yaml",
        {"keys": [{"sha256": hash_api_key(OPERATOR_KEY), "agentId": "operator", "scopes": ["agent"]}]},
    )
    edge = services.make(
        "edge",
        "edge-1",
        {
            "deploymentMode": "edge",
            "sync": {
                "centralServer": {"url": "https://127.0.0.1", "port": central.port, "timeout": "5s"},
                "auth": {"method": "apiKey", "apiKey": EDGE_KEY, "apiKeysFile": str(edge_keys)},
                "signing": {"key": SIGNING["edge-1"]},
                "memoryLayers": {"session": {"interval": "1h"}},
            },
            "centralServer": {"healthCheck": {"interval": "300ms", "timeout": "1s", "failureThreshold": 3}},
            "tls": {**server_tls, "certFile": str(edge_cert), "keyFile": str(edge_key)},
            "edge": {
                "agentId": "edge-1",
                "region": "us-west-2",
                "dataDir": str(tmp_path / "edge-1" / "data"),
                "listenPort": 0,
            },
            "telemetry": {"metricsPort": 0, "logFormat": "text"},
        },
        development=False,
    ).start()
    edge.keep_port()
    return Deployment(
        central=central,
        edge=edge,
        ca=tls_material.ca.cert,
        operator_cert=operator_cert,
        operator_key=operator_key,
        untrusted_cert=tls_material.wrong_ca_edge.cert,
        untrusted_key=tls_material.wrong_ca_edge.key,
        api_key_file=api_key_file,
        home=home,
        server_pin=tls_material.server.pin,
        other_pin=tls_material.other_server.pin,
    )


async def _register_edge(deployment: Deployment) -> None:
    """An agent writes a session at the edge and flushes it: the edge syncs (and registers) at central."""
    async with open_channel(deployment.edge.target, deployment.settings(OPERATOR_KEY)) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        await stub.PutSession(edge_pb2.PutSessionRequest(session=memory_pb2.Session(session_id="cli-s1", user_id="u")))
        flushed = await stub.FlushSync(edge_pb2.FlushSyncRequest())
    assert flushed.items_pending == 0


def _decisions(sequence: int, decision_id: str, resource: str, decided: dt.datetime) -> sync_pb2.ReplayDecisionsRequest:
    request = sync_pb2.ReplayDecisionsRequest(
        header=sync_pb2.BatchHeader(batch_id=str(uuid.uuid4()), sequence=sequence, agent_id="edge-2"),
        decisions=[
            decision_pb2.Decision(
                decision_id=decision_id,
                principal='User::"alice"',
                action='Action::"approve"',
                resource=resource,
                agent_id="edge-2",
                effect=decision_pb2.EFFECT_ALLOW,
                offline=True,
            )
        ],
    )
    request.decisions[0].decide_time.FromDatetime(decided)
    request.header.sent_time.FromDatetime(dt.datetime.now(dt.UTC))
    sign_batch(request, SIGNING["edge-2"].encode())
    return request


async def _open_conflicts(deployment: Deployment, resources: list[str]) -> None:
    """Per resource, replay a decision and then an older one on ``approve`` (manual review): a conflict."""
    now = dt.datetime.now(dt.UTC)
    sequence = 0
    async with open_channel(deployment.central.target, deployment.settings(REPLAYER_KEY)) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        for resource in resources:
            for decided in (now, now - dt.timedelta(minutes=5)):
                sequence += 1
                reply = await stub.ReplayDecisions(_decisions(sequence, str(uuid.uuid4()), resource, decided))
            assert reply.results[0].outcome == sync_pb2.REPLAY_OUTCOME_NEEDS_REVIEW


def _policy_folder(directory: Path, policies: dict[str, str], entities: list[dict[str, Any]] | None) -> Path:
    directory.mkdir(parents=True)
    for name, text in policies.items():
        (directory / f"{name}.cedar").write_text(text)
    if entities is not None:
        (directory / "entities.json").write_text(json.dumps(entities))
    return directory


def _uid(kind: str, name: str) -> dict[str, str]:
    return {"type": kind, "id": name}


async def test_every_command_against_tls_mtls_and_api_keys(deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    central_config, edge_config = str(d.central.config_path), str(d.edge.config_path)

    # --- empty listings say so --------------------------------------------------------------
    assert ok(aeterna("conflicts", "list", *d.at_central())) == "no conflicts waiting for review\n"
    assert as_json(aeterna("conflicts", "list", "--json", *d.at_central())) == {"state": "pending", "conflicts": []}
    assert ok(aeterna("policy", "show", *d.at_central())).startswith("no policy published yet")
    assert as_json(aeterna("policy", "show", "--json", *d.at_central())) == {"bundle": None}

    # --- publish: replace (the default) and merge -----------------------------------------
    first = ok(aeterna("policy", "publish", str(POLICIES), *d.at_central()))
    assert first.startswith("published policy version 1 (replaced the bundle: 2 policies, 2 entities; checksum ")
    extra = _policy_folder(
        tmp_path / "extra",
        {
            "approve": 'permit(principal in Group::"approvers", action == Action::"approve", resource);',
            "audit": 'permit(principal == User::"auditor", action == Action::"read", resource);',
        },
        [
            {"uid": _uid("User", "auditor"), "attrs": {}, "parents": []},
            {"uid": _uid("User", "alice"), "attrs": {}, "parents": [_uid("Group", "approvers"), _uid("Group", "x")]},
        ],
    )
    merged = aeterna("policy", "publish", str(extra), "--merge", *d.at_central())
    assert ok(merged).startswith(
        "published policy version 2 (merged into version 1: 3 policies (1 added, 1 replaced, 1 kept), "
        "3 entities (1 added, 1 replaced, 1 kept); checksum "
    )
    assert merged.stderr == ""
    merged_json = as_json(aeterna("policy", "publish", str(extra), "--merge", "--json", *d.at_central()))
    assert merged_json["mode"] == "merge"
    assert merged_json["mergedInto"] == 2
    assert merged_json["changes"]["policies"] == {"added": [], "replaced": ["approve", "audit"], "kept": ["read"]}
    assert merged_json["changes"]["entities"] == {
        "added": [],
        "replaced": ['User::"alice"', 'User::"auditor"'],
        "kept": ['Group::"approvers"'],
    }
    shown = as_json(aeterna("policy", "show", "--json", *d.at_central()))["bundle"]
    assert shown["version"] == "3"
    assert sorted(p["policyId"] for p in shown["policies"]) == ["approve", "audit", "read"]
    assert sorted(e["uid"]["id"] for e in json.loads(shown["entitiesJson"])) == ["alice", "approvers", "auditor"]
    assert "operator" in ok(aeterna("policy", "show", *d.at_central()))  # the publisher is the API key's identity

    replaced = as_json(aeterna("policy", "publish", str(extra), "--replace", "--json", *d.at_central()))
    assert (replaced["mode"], replaced["mergedInto"], replaced["changes"]) == ("replace", None, None)
    assert [p["policyId"] for p in replaced["bundle"]["policies"]] == ["approve", "audit"]  # "read" is gone
    table = ok(aeterna("policy", "show", *d.at_central()))
    assert "policy version 4" in table
    assert "read" not in table.split("checksum", 1)[1]

    # A merge that names a version other than the current one is refused, and nothing is published.
    stale = failure_line(
        aeterna("policy", "publish", str(POLICIES), "--merge", "--expected-version", "1", *d.at_central())
    )
    assert stale == (
        "error: ABORTED: expected current policy version 1, but it is 4; re-read and retry [POLICY_VERSION_CONFLICT]"
    )
    # A publish between a merge's read and its write: the merge is refused with a precise message.
    async with open_channel(d.central.target, d.settings(OPERATOR_KEY)) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        plan = await plan_publish(stub, POLICIES, "merge")
        assert plan.merged_into == 4
        ok(aeterna("policy", "publish", str(extra), "--merge", *d.at_central()))  # version 5, in between
        with pytest.raises(RpcFailure) as overtaken:
            await send_publish(stub, plan)
    assert overtaken.value.prefix + describe(overtaken.value.error) == (
        "another publish came after version 4 was read, so nothing was published (run the command again to "
        "merge into the new version): ABORTED: expected current policy version 4, but it is 5; re-read and retry "
        "[POLICY_VERSION_CONFLICT]"
    )
    assert as_json(aeterna("policy", "show", "--json", *d.at_central()))["bundle"]["version"] == "5"

    # --- the edge syncs through TLS + mTLS + its API key; the registry shows it -------------
    await _register_edge(d)
    edges = as_json(aeterna("edges", "list", "--json", *d.at_central()))["edges"]
    assert [(e["agentId"], e["region"], e["state"]) for e in edges] == [("edge-1", "us-west-2", "EDGE_STATE_ONLINE")]
    # A bearer token from a file (here the API key itself, which is the bearer the server checks).
    listed = ok(aeterna("edges", "list", "--target", d.central.target, *d.tls(), "--token-file", str(d.api_key_file)))
    assert listed.startswith("edge-1  EDGE_STATE_ONLINE  region=us-west-2  tenant=default")

    # Pinned: central's key is accepted (checked under the name localhost); another key of the same CA is not.
    pinned = aeterna("edges", "list", "--json", *d.at_central("--pin", d.server_pin, "--server-name", "localhost"))
    assert [e["agentId"] for e in as_json(pinned)["edges"]] == ["edge-1"]
    impostor = failure_line(aeterna("edges", "list", *d.at_central("--pin", d.other_pin)))
    assert impostor.startswith(f"error: UNAVAILABLE: central at {d.central.target} presented a certificate matching")
    assert impostor.endswith("[PIN_MISMATCH]")

    # --- status of the edge and of central ------------------------------------------------
    edge_status = ok(aeterna("status", *d.at_edge()))
    assert "edge            edge-1  (region us-west-2)" in edge_status
    assert "ONLINE" in edge_status
    edge_json = as_json(aeterna("status", "--json", *d.at_edge()))
    assert (edge_json["role"], edge_json["agentId"], edge_json["linkState"]) == ("edge", "edge-1", "ONLINE")
    # The API key from the environment, a grpcs:// target (TLS implied).
    with_env = {"AETERNA_API_KEY": OPERATOR_KEY}
    central_status = ok(aeterna("status", "--target", f"grpcs://{d.central.target}", *d.tls(), env=with_env))
    assert central_status.splitlines()[0] == f"central         {d.central.target}"
    assert "edges           1 online of 1 registered" in central_status
    central_json = as_json(aeterna("status", "--json", "--target", d.central.target, *d.tls(), env=with_env))
    assert (central_json["role"], central_json["policyVersion"]) == ("central", 5)

    # --- --config: the edge's own config reaches central as the edge does ----------------------
    # (sync.centralServer over https, tls.caFile/certFile/keyFile, sync.auth's API key): no other flag.
    by_edge_config = as_json(aeterna("policy", "show", "--json", "--config", edge_config))
    assert by_edge_config["bundle"]["version"] == "5"
    # $AETERNA_CONFIG is the default --config.
    assert "policy version 5" in ok(aeterna("policy", "show", env={"AETERNA_CONFIG": edge_config}))
    # status with the edge's config talks to the edge itself; a flag overrides the config's credential,
    # and so does $AETERNA_API_KEY (which is no config key: loading the config is not disturbed by it).
    by_flag = as_json(aeterna("status", "--json", "--config", edge_config, "--api-key-file", str(d.api_key_file)))
    by_env = as_json(aeterna("status", "--json", "--config", edge_config, env=with_env))
    assert by_flag["agentId"] == by_env["agentId"] == "edge-1"
    wrong_env = failure_line(aeterna("status", "--config", edge_config, env={"AETERNA_API_KEY": WRONG_KEY}))
    assert wrong_env.endswith("UNAUTHENTICATED: the API key is not valid [INVALID_API_KEY]")
    # Central's config gives central's address, TLS and CA; the client certificate and key come from flags.
    via_central_config = aeterna(
        "edges", "list", "--config", central_config, "--cert-file", str(d.operator_cert),
        "--key-file", str(d.operator_key), "--api-key", OPERATOR_KEY,
    )  # fmt: skip
    assert ok(via_central_config).startswith("edge-1  EDGE_STATE_ONLINE")
    no_credential = aeterna("edges", "list", "--config", central_config)
    assert no_credential.returncode == 2
    assert no_credential.stderr == (
        f"error: --config {central_config} has sync.auth.method apiKey but names no credential this command can "
        "present (a central's config holds only what verifies callers): pass --api-key, --api-key-file or "
        "--token-file (or set $AETERNA_API_KEY)\n"
    )

    # --- conflicts: real ones, from replayed decisions -------------------------------------------
    await _open_conflicts(d, ['Invoice::"inv-1"', 'Invoice::"inv-2"'])
    pending = as_json(aeterna("conflicts", "list", "--json", *d.at_central()))["conflicts"]
    assert [c["edgeDecision"]["resource"] for c in pending] == ['Invoice::"inv-1"', 'Invoice::"inv-2"']
    lines = ok(aeterna("conflicts", "list", *d.at_central())).splitlines()
    assert [line.split()[0] for line in lines] == [c["conflictId"] for c in pending]
    assert all("CONFLICT_STATE_PENDING" in line for line in lines)
    first_id, second_id = (c["conflictId"] for c in pending)
    resolved = ok(aeterna("conflicts", "resolve", first_id, "--keep", "central", "--note", "cli", *d.at_central()))
    assert resolved == f"conflict {first_id} resolved (central) by operator\n"
    resolved_json = as_json(aeterna("conflicts", "resolve", second_id, "--keep", "edge", "--json", *d.at_central()))
    assert (resolved_json["conflict"]["conflictId"], resolved_json["conflict"]["resolvedBy"]) == (second_id, "operator")
    assert ok(aeterna("conflicts", "list", *d.at_central())) == "no conflicts waiting for review\n"
    assert (
        len(as_json(aeterna("conflicts", "list", "--state", "resolved", "--json", *d.at_central()))["conflicts"]) == 2
    )
    unknown_id = str(uuid.uuid4())
    unknown = failure_line(aeterna("conflicts", "resolve", unknown_id, "--keep", "edge", *d.at_central()))
    assert unknown == f"error: NOT_FOUND: no conflict {unknown_id} [CONFLICT_NOT_FOUND]"
    malformed = failure_line(aeterna("conflicts", "resolve", "no-such-conflict", "--keep", "edge", *d.at_central()))
    assert malformed == "error: INVALID_ARGUMENT: conflict_id: not a conflict id [BAD_CONFLICT_ID]"

    # --- health (TLS and the client certificate; no credential needed) --------------------------
    healthy = aeterna("health", "--target", d.central.target, *d.tls())
    assert (healthy.returncode, healthy.stdout) == (0, f'{d.central.target} "" (readiness): SERVING\n')
    by_config = aeterna("health", "--service", "aeterna.liveness", env={"AETERNA_CONFIG": edge_config})
    assert (by_config.returncode, by_config.stdout) == (0, f"{d.edge.target} aeterna.liveness: SERVING\n")
    health_json = aeterna("health", "--json", "--target", f"grpcs://{d.edge.target}", *d.tls())
    assert as_json(health_json) == {"target": d.edge.target, "service": "", "status": "SERVING", "reason": None}
    refused = aeterna("health", "--target", d.central.target, "--ca-file", str(d.ca))
    assert refused.returncode == 1
    assert refused.stdout == (
        f'{d.central.target} "" (readiness): UNAVAILABLE (cannot connect to {d.central.target}: the server '
        "requires a client certificate (mTLS): pass --cert-file and --key-file [CLIENT_CERT_REQUIRED])\n"
    )
    refused_json = aeterna("health", "--json", "--target", d.central.target, "--ca-file", str(d.ca))
    assert refused_json.returncode == 1
    assert json.loads(refused_json.stdout) == {
        "target": d.central.target,
        "service": "",
        "status": "UNAVAILABLE",
        "reason": f"cannot connect to {d.central.target}: the server requires a client certificate (mTLS): pass "
        "--cert-file and --key-file [CLIENT_CERT_REQUIRED]",
    }

    # --- dead letters: local to the edge's data directory (from its config), also while it runs ------
    assert ok(aeterna("dead-letters", "list", "--config", edge_config)) == "no dead letters\n"
    assert as_json(aeterna("dead-letters", "list", "--json", "--config", edge_config)) == {"deadLetters": []}


SERVER_COMMANDS: list[tuple[str, list[str]]] = [
    ("central", ["status"]),
    ("edge", ["status"]),
    ("central", ["policy", "show"]),
    ("central", ["policy", "publish", str(POLICIES)]),
    ("central", ["policy", "publish", str(POLICIES), "--merge"]),
    ("central", ["conflicts", "list"]),
    ("central", ["conflicts", "resolve", "some-id", "--keep", "edge"]),
    ("central", ["edges", "list"]),
]
"""Every command that talks to a server, and to which one."""


def test_refused_without_a_client_certificate_or_with_a_wrong_key(deployment: Deployment) -> None:
    d = deployment
    for peer, command in SERVER_COMMANDS:
        process = d.central if peer == "central" else d.edge
        expected_prefix = f"cannot get the status of {process.target}: " if command == ["status"] else "error: "

        no_cert = failure_line(
            aeterna(*command, "--target", process.target, "--ca-file", str(d.ca), "--api-key", OPERATOR_KEY)
        )
        assert no_cert == (
            f"{expected_prefix}UNAVAILABLE: cannot connect to {process.target}: the server requires a client "
            "certificate (mTLS): pass --cert-file and --key-file [CLIENT_CERT_REQUIRED]"
        ), command

        untrusted = failure_line(
            aeterna(
                *command,
                "--target",
                process.target,
                "--ca-file",
                str(d.ca),
                "--cert-file",
                str(d.untrusted_cert),
                "--key-file",
                str(d.untrusted_key),
                "--api-key",
                OPERATOR_KEY,
            )
        )
        assert untrusted.startswith(
            f"{expected_prefix}UNAVAILABLE: cannot connect to {process.target}: the server refused the client "
            f"certificate {d.untrusted_cert} ("
        ), untrusted
        assert untrusted.endswith("[CLIENT_CERT_REFUSED]")

        wrong_key = failure_line(aeterna(*command, "--target", process.target, *d.tls(), "--api-key", WRONG_KEY))
        assert wrong_key == f"{expected_prefix}UNAUTHENTICATED: the API key is not valid [INVALID_API_KEY]", command

        plaintext = failure_line(aeterna(*command, "--target", process.target, "--api-key", OPERATOR_KEY))
        assert plaintext == (
            f"{expected_prefix}UNAVAILABLE: cannot connect to {process.target}: the server speaks TLS: connect "
            "with --tls and --ca-file (or a grpcs:// target) [TLS_REQUIRED]"
        ), command


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cert-file", "c.pem"], "error: --cert-file and --key-file go together (a client certificate and its key)"),
        (["--pin", "sha256/abc"], "error: --pin sha256/abc: not a pin of the form sha256/<44 base64 characters>"),
        (["--ca-file", "/nonexistent/ca.pem"], "error: --ca-file /nonexistent/ca.pem: no such file"),
        (["--api-key", "k", "--token-file", "t"], "error: give one credential, not --api-key and --token-file"),
        (["--plaintext", "--ca-file", "x"], "error: --plaintext contradicts --ca-file"),
        (
            ["--target", "central"],
            "error: --target central: expected HOST:PORT (for example 127.0.0.1:8081 or grpcs://central:8081)",
        ),
    ],
    ids=["half-a-key-pair", "bad-pin", "missing-ca", "two-credentials", "plaintext-and-tls", "no-port"],
)
def test_options_that_cannot_work_exit_2_before_any_call(flags: list[str], message: str) -> None:
    for command in (["edges", "list"], ["status"]):
        result = aeterna(*command, *flags, "--timeout", "1")
        assert (result.returncode, result.stdout, result.stderr) == (2, "", message + "\n"), command


def test_help_lists_every_command_and_the_connection_options() -> None:
    overview = ok(aeterna("--help"))
    for name in ("central", "edge", "snapshot", "policy", "conflicts", "edges", "dead-letters", "status", "certs",
                 "health", "demo"):  # fmt: skip
        assert f"\n    {name}" in overview, name
    for command in (["status"], ["policy", "publish"], ["policy", "show"], ["conflicts", "list"],
                    ["conflicts", "resolve"], ["edges", "list"]):  # fmt: skip
        text = ok(aeterna(*command, "--help"))
        for option in ("--config", "--target", "--ca-file", "--cert-file", "--key-file", "--server-name", "--pin",
                       "--api-key", "--api-key-file", "--token-file", "--timeout", "--json"):  # fmt: skip
            assert option in text, (command, option)
    publish_help = " ".join(ok(aeterna("policy", "publish", "--help")).split())
    assert "--replace (the default) makes DIR's policies and entities the entire bundle" in publish_help
    assert "--merge reads the current bundle first" in publish_help
    health_help = ok(aeterna("health", "--help"))
    for option in ("--config", "--target", "--tls", "--ca-file", "--cert-file", "--key-file", "--pin"):
        assert option in health_help, option
