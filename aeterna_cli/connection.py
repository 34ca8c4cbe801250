"""The connection options every ``aeterna`` command that talks to a server shares, and their one resolution.

Why this module: a deployment runs with TLS, client certificates and real
credentials, and an operator's CLI must reach it with exactly what the edge
uses to reach central. So every such command (``status``, ``policy``,
``conflicts``, ``edges``, ``health``) takes the same options, and ``resolve``
turns them into one ``aeterna_client.channel.ClientSettings`` for
``open_channel``: the same TLS, SPKI pins, credentials and deadlines as the
edge's own channel, no second client stack.

Where the settings come from (later wins):

1. ``--config FILE`` (default ``$AETERNA_CONFIG``): the edge's or central's own
   configuration. With an edge's config, the central commands talk to its
   ``sync.centralServer`` (TLS when the URL is ``https://``/``grpcs://``), with
   its ``tls.caFile``/``certFile``/``keyFile``, its pins
   (``sync.network.pinnedCertificates``) and its credential (``sync.auth``);
   ``status`` and ``health`` talk to the edge itself. With central's config,
   every command talks to central itself (``sync.listenPort``, TLS when
   ``tls.enabled``), verifying it with ``tls.caFile``; central's own
   certificate is a server certificate and its ``sync.auth`` only verifies
   callers, so the client certificate and the credential come from the flags.
2. The flags: ``--target`` (``grpcs://`` means TLS, ``grpc://`` plaintext),
   ``--tls`` / ``--plaintext``, ``--ca-file``, ``--cert-file`` + ``--key-file``
   (mTLS), ``--server-name``, ``--pin`` (repeatable), and one credential:
   ``--api-key`` (or ``$AETERNA_API_KEY``), ``--api-key-file`` or
   ``--token-file`` (a bearer JWT or service-account token, read on each call).
   ``--agent-id``/``--tenant-id`` name the caller only when no credential is
   configured (development auth).

Options that cannot work (a missing file, half a key pair, a malformed pin,
two credentials) raise ``UsageError`` before anything is sent: exit status 2.
A failed call is one line (``describe``): the gRPC status name, the server's
message and its ``ErrorInfo`` reason; a connection that failed below gRPC
(TLS handshake refused, nothing listening) is probed once more with the
stdlib ``ssl`` module to say why in words. Exit status 1.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import grpc

    from aeterna_client.channel import ClientSettings
    from aeterna_shared.config.model import AeternaConfig, AuthConfig

Peer = Literal["central", "self", "health"]
"""Whom a command talks to: central, the configured process itself, or its health endpoint."""

API_KEY_ENV = "AETERNA_API_KEY"
"""Environment variable holding the API key when ``--api-key`` is not given."""

CENTRAL_TARGET = "127.0.0.1:8081"
"""Default target of the central commands without ``--target`` or ``--config``."""

LOCAL_TARGET = "127.0.0.1:50051"
"""Default target of ``status`` and ``health`` without ``--target`` or ``--config`` (a local edge)."""

EXIT_FAILED = 1
"""Exit status of a command whose call failed (connection, TLS, credential or the server refused)."""

EXIT_USAGE = 2
"""Exit status of a command refused on its options or configuration; nothing was sent."""

_PIN = re.compile(r"sha256/[A-Za-z0-9+/]{43}=")
_SCHEMES = {"grpcs": True, "https": True, "grpc": False, "http": False}
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 - compared with, never bound


class UsageError(Exception):
    """The options (or the files they name) cannot work; nothing was sent. Exit status 2."""


@dataclass(frozen=True)
class Connection:
    """Where a command connects and how."""

    target: str
    """host:port."""
    settings: ClientSettings
    """TLS, pins, credential and default deadline for ``open_channel``."""


def add_connection_options(
    parser: argparse.ArgumentParser, *, peer: Peer, timeout: float, credentials: bool = True
) -> None:
    """Add the shared connection options to ``parser`` (one group in ``--help``)."""
    if peer == "central":
        target_help = (
            f"central's gRPC address (default: from --config, else {CENTRAL_TARGET}); "
            "grpcs://HOST:PORT means TLS, grpc://HOST:PORT plaintext"
        )
    elif peer == "self":
        target_help = (
            f"an edge's or central's gRPC address (default: the process --config describes, else {LOCAL_TARGET}); "
            "grpcs://HOST:PORT means TLS, grpc://HOST:PORT plaintext"
        )
    else:
        target_help = (
            "host:port to check (default: from the config: telemetry.healthPort when set, plaintext, else "
            "edge.listenPort or, for deploymentMode central, sync.listenPort)"
        )
    group = parser.add_argument_group(
        "connection",
        "How to reach the server: the same settings as the services'. Explicit flags override --config.",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="the edge's or central's own config (default: $AETERNA_CONFIG): the target, TLS "
        "(tls.caFile, certFile, keyFile), pins (sync.network.pinnedCertificates) and the credential "
        "(sync.auth) are taken from it",
    )
    group.add_argument("--target", metavar="HOST:PORT", default=None, help=target_help)
    group.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS (implied by --ca-file, --cert-file, --pin, --server-name and a grpcs:// target)",
    )
    group.add_argument(
        "--plaintext", action="store_true", help="connect without TLS even when --config enables it (development)"
    )
    group.add_argument("--ca-file", metavar="PEM", help="CA bundle that verifies the server (default: system roots)")
    group.add_argument("--cert-file", metavar="PEM", help="client certificate chain for mTLS (with --key-file)")
    group.add_argument("--key-file", metavar="PEM", help="private key of --cert-file")
    group.add_argument(
        "--server-name", metavar="NAME", help="name the server's certificate must carry, when not the target's host"
    )
    group.add_argument(
        "--pin",
        metavar="sha256/BASE64",
        action="append",
        default=[],
        help="accept the server only if its certificate (or its CA) has this SPKI pin; repeat for rotation "
        "(aeterna certs pin FILE prints pins)",
    )
    if credentials:
        group.add_argument(
            "--api-key",
            metavar="KEY",
            default=None,
            help=f"API key sent as 'authorization: Bearer KEY' (default: ${API_KEY_ENV}); prefer --api-key-file",
        )
        group.add_argument("--api-key-file", metavar="FILE", help="file holding the API key")
        group.add_argument(
            "--token-file",
            metavar="FILE",
            help="file holding a bearer token (an OAuth2 JWT, a Kubernetes service-account token); "
            "read on every call, so a rotated token is picked up",
        )
        group.add_argument(
            "--agent-id",
            default="operator",
            help="identity to call as with development auth only (no credential configured); default %(default)s",
        )
        group.add_argument(
            "--tenant-id",
            default="default",
            help="tenant to act in with development auth only; default %(default)s",
        )
    group.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="SECONDS",
        help="deadline of each call in seconds (default %(default)s)",
    )
    parser.set_defaults(peer=peer, with_credentials=credentials)


# --- resolution --------------------------------------------------------------------------


@dataclass(frozen=True)
class _FromConfig:
    """What a config file contributes."""

    source: str
    target: str
    tls: bool
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    pins: tuple[str, ...] = ()
    minimum_tls: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    auth: AuthConfig | None = None


def reachable_host(listen_host: str) -> str:
    """Where a local client reaches a server bound to ``listen_host``."""
    if listen_host in _WILDCARDS:
        return "127.0.0.1"
    if ":" in listen_host and not listen_host.startswith("["):
        return f"[{listen_host}]"
    return listen_host


def own_target(config: AeternaConfig) -> tuple[str, bool]:
    """``(host:port, tls)`` of the gRPC server the config describes (hybrid: the edge)."""
    if config.deployment_mode == "central":
        host, port = config.central.listen_host, config.sync.listen_port
    else:
        host, port = config.edge.listen_host, config.edge.listen_port
    return f"{reachable_host(host)}:{port}", config.tls.enabled


def load_connection_config(path: str | None) -> AeternaConfig:
    """``load_config(path)`` with the env overrides (a bad file raises ``ConfigError``: exit 2).

    ``$AETERNA_API_KEY`` is the CLI's own variable, not a key override (the loader reserves it).
    """
    from aeterna_shared.config.loader import load_config  # noqa: PLC0415 - keeps `aeterna --help` fast

    return load_config(path)


def _from_config(config: AeternaConfig, source: str, peer: Peer) -> _FromConfig:
    from aeterna_security.tls import minimum_tls_version  # noqa: PLC0415

    tls = config.tls
    if peer == "central" and config.deployment_mode != "central":
        # An edge's config: central is its sync.centralServer, reached exactly as the edge reaches it.
        endpoint, network = config.sync.central_server, config.sync.network
        return _FromConfig(
            source=source,
            target=endpoint.target,
            tls=endpoint.uses_tls,
            ca_file=tls.ca_file,
            cert_file=tls.cert_file,
            key_file=tls.key_file,
            pins=tuple(network.pinned_certificates),
            minimum_tls=minimum_tls_version(network.encryption),
            auth=config.sync.auth,
        )
    target, use_tls = own_target(config)
    if config.deployment_mode == "central":
        # Central's certificate is a server certificate and its sync.auth verifies callers: only the CA is usable.
        return _FromConfig(source=source, target=target, tls=use_tls, ca_file=tls.ca_file, auth=config.sync.auth)
    return _FromConfig(
        source=source,
        target=target,
        tls=use_tls,
        ca_file=tls.ca_file,
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        auth=config.sync.auth,
    )


def split_target(raw: str) -> tuple[str, bool | None]:
    """``(host:port, tls)`` of a ``--target``: tls True for grpcs:// and https://, False for grpc:// and
    http://, None without a scheme."""
    scheme, separator, rest = raw.partition("://")
    use_tls: bool | None = None
    target = raw
    if separator:
        if scheme.lower() not in _SCHEMES:
            raise UsageError(f"--target {raw}: unknown scheme {scheme!r} (use grpcs:// for TLS or grpc://)")
        use_tls = _SCHEMES[scheme.lower()]
        target = rest.rstrip("/")
    if not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:/\[\]\s]+):\d{1,5}", target):
        raise UsageError(f"--target {raw}: expected HOST:PORT (for example 127.0.0.1:8081 or grpcs://central:8081)")
    return target, use_tls


def _readable(path: str, named: str) -> str:
    """``path`` made absolute after checking it can be read; ``named`` says which option or key gave it."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{named} {path}: no such file")
    try:
        with file.open("rb"):
            pass
    except OSError as error:
        raise UsageError(f"{named} {path}: cannot be read ({error.strerror})") from None
    return str(file.absolute())


def _secret_text(path: str, named: str) -> str:
    text = Path(_readable(path, named)).read_text(encoding="utf-8").strip()
    if not text:
        raise UsageError(f"{named} {path}: the file is empty")
    return text


def _presentable(auth: AuthConfig) -> bool:
    """Whether a config's ``sync.auth`` names a credential a client can present (not only verify)."""
    if auth.method == "apiKey":
        return bool(auth.api_key) or bool(auth.secret_dir and (Path(auth.secret_dir) / "apiKey").is_file())
    if auth.method == "oauth2":
        names = (("tokenUrl", auth.token_url), ("clientId", auth.client_id), ("clientSecret", auth.client_secret))
        return all(value or (auth.secret_dir and (Path(auth.secret_dir) / name).is_file()) for name, value in names)
    if auth.method == "serviceAccount":
        return Path(auth.service_account.token_path).is_file()
    return True  # mtls (the certificate is the credential) and none (development headers)


def _credential(args: argparse.Namespace, derived: _FromConfig | None) -> AuthConfig:
    from aeterna_shared.config.model import AuthConfig, ServiceAccountAuth  # noqa: PLC0415

    if not getattr(args, "with_credentials", True):
        return AuthConfig()
    given = [
        name
        for name, value in (
            ("--api-key", args.api_key),
            ("--api-key-file", args.api_key_file),
            ("--token-file", args.token_file),
        )
        if value
    ]
    if len(given) > 1:
        raise UsageError(f"give one credential, not {' and '.join(given)}")
    api_key = args.api_key
    if not given and os.environ.get(API_KEY_ENV):
        api_key = os.environ[API_KEY_ENV].strip()
    if api_key:
        return AuthConfig(method="apiKey", api_key=api_key)
    if args.api_key_file:
        return AuthConfig(method="apiKey", api_key=_secret_text(args.api_key_file, "--api-key-file"))
    if args.token_file:
        path = _readable(args.token_file, "--token-file")
        _secret_text(path, "--token-file")
        return AuthConfig(method="serviceAccount", service_account=ServiceAccountAuth(token_path=path))
    if derived is not None and derived.auth is not None:
        if not _presentable(derived.auth):
            raise UsageError(
                f"{derived.source} has sync.auth.method {derived.auth.method} but names no credential this "
                "command can present (a central's config holds only what verifies callers): pass --api-key, "
                f"--api-key-file or --token-file (or set ${API_KEY_ENV})"
            )
        return derived.auth
    return AuthConfig()


def _use_tls(args: argparse.Namespace, scheme_tls: bool | None, derived: _FromConfig | None) -> bool:
    implied = [
        name
        for name, value in (
            ("--tls", args.tls),
            ("--ca-file", args.ca_file),
            ("--cert-file", args.cert_file),
            ("--key-file", args.key_file),
            ("--server-name", args.server_name),
            ("--pin", args.pin),
            ("a grpcs:// target", scheme_tls is True),
        )
        if value
    ]
    if args.plaintext or scheme_tls is False:
        if implied:
            plain = "--plaintext" if args.plaintext else "a grpc:// target"
            raise UsageError(f"{plain} contradicts {', '.join(implied)}")
        return False
    if implied:
        return True
    return derived.tls if derived is not None else False


def resolve(args: argparse.Namespace) -> Connection:
    """The target and ``ClientSettings`` of a command's options (``add_connection_options``).

    Raises ``UsageError`` (and ``ConfigError`` for a bad config file) before anything is sent.
    """
    from aeterna_client.channel import ClientSettings  # noqa: PLC0415 - keeps `aeterna --help` fast

    peer: Peer = args.peer
    config: AeternaConfig | None = None
    source = f"--config {args.config}"
    if args.config:
        config = load_connection_config(args.config)
    elif peer == "health" and args.target is None:
        config, source = load_connection_config(None), "the configuration"
    derived = _from_config(config, source, peer) if config is not None else None
    if peer == "health" and config is not None and derived is not None and args.target is None:
        from aeterna_cli.health import default_target  # noqa: PLC0415 - the health port is health's concern

        health_target, health_tls = default_target(config)
        derived = replace(derived, target=health_target, tls=health_tls)

    scheme_tls: bool | None = None
    if args.target:
        target, scheme_tls = split_target(args.target)
    elif derived is not None:
        target = derived.target
    else:
        target = CENTRAL_TARGET if peer == "central" else LOCAL_TARGET
    use_tls = _use_tls(args, scheme_tls, derived)

    if bool(args.cert_file) != bool(args.key_file):
        raise UsageError("--cert-file and --key-file go together (a client certificate and its key)")
    for pin in args.pin:
        if not _PIN.fullmatch(pin):
            raise UsageError(f"--pin {pin}: not a pin of the form sha256/<44 base64 characters>")
    from_config = derived is not None and use_tls
    ca_file = args.ca_file or (derived.ca_file if from_config and derived else None)
    cert_file, key_file = args.cert_file, args.key_file
    if not cert_file and from_config and derived is not None:
        cert_file, key_file = derived.cert_file, derived.key_file
    pins = tuple(args.pin) or (derived.pins if from_config and derived is not None else ())
    if use_tls:
        ca_file = _readable(ca_file, "--ca-file" if args.ca_file else "tls.caFile of the config") if ca_file else None
        if cert_file and key_file:
            named = "--cert-file" if args.cert_file else "tls.certFile of the config"
            cert_file = _readable(cert_file, named)
            key_file = _readable(key_file, named.replace("cert", "key").replace("Cert", "Key"))
        else:
            cert_file = key_file = None
    auth = _credential(args, derived)
    settings = ClientSettings(
        tls=use_tls,
        ca_file=ca_file if use_tls else None,
        cert_file=cert_file if use_tls else None,
        key_file=key_file if use_tls else None,
        minimum_tls_version=derived.minimum_tls if derived is not None else ssl.TLSVersion.TLSv1_2,
        server_name=args.server_name,
        certificate_pinning=bool(pins) and use_tls,
        pins=pins if use_tls else (),
        auth=auth,
        agent_id=getattr(args, "agent_id", "operator"),
        tenant_id=getattr(args, "tenant_id", "default"),
        unary_timeout=args.timeout,
    )
    return Connection(target=target, settings=settings)


# --- failures as one line ------------------------------------------------------------------


def error_reason(error: grpc.RpcError) -> str:
    """The ``google.rpc.ErrorInfo`` reason of a failed call ('' when the server sent none)."""
    from google.rpc import error_details_pb2  # noqa: PLC0415
    from grpc_status import rpc_status  # noqa: PLC0415

    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError, TypeError):
        return ""
    if status is None:
        return ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def describe(error: grpc.RpcError, connection: Connection | None = None) -> str:
    """One line: ``CODE: the server's message [REASON]``.

    An UNAVAILABLE without a server reason (nothing listens, the TLS handshake
    was refused) is explained by ``diagnose`` when ``connection`` is given.
    """
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    details = _one_line(error.details() or "") or "(no message)"
    reason = error_reason(error)
    if name == "UNAVAILABLE" and not reason and connection is not None:
        found = diagnose(connection.target, connection.settings)
        if found is not None:
            why, reason = found
            return f"{name}: cannot connect to {connection.target}: {why} [{reason}]"
    return f"{name}: {details}" + (f" [{reason}]" if reason else "")


_CERT_REQUIRED = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE"}
_NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

TLS_REASONS = frozenset(
    {"CLIENT_CERT_REQUIRED", "CLIENT_CERT_REFUSED", "SERVER_CERT_INVALID", "NOT_TLS", "TLS_REQUIRED", "TLS_FAILED"}
)
"""The reasons ``diagnose`` gives for a refused TLS connection (as opposed to nothing listening)."""


def diagnose(target: str, settings: ClientSettings, timeout: float = 5.0) -> tuple[str, str] | None:
    """Why a connection to ``target`` fails below gRPC, as ``(words, REASON)``; None when it does not.

    gRPC reports a refused TLS handshake as a bare UNAVAILABLE; this repeats the
    handshake with the stdlib ``ssl`` module (same CA, client certificate and
    server name) and reads the TLS alert, so the operator learns which option is
    missing. Blocking: call it after the command's event loop ended.
    """
    host, _, port_text = target.rpartition(":")
    host = host.strip("[]")
    try:
        raw = socket.create_connection((host, int(port_text)), timeout=timeout)
    except ConnectionRefusedError:
        return "nothing listens there (connection refused)", "CONNECTION_REFUSED"
    except (OSError, ValueError) as error:
        return f"the address cannot be reached ({getattr(error, 'strerror', None) or error})", "UNREACHABLE"
    with raw:
        if not settings.tls:
            return _speaks_tls(raw, host)
        return _tls_refusal(raw, host, settings)


def _speaks_tls(raw: socket.socket, host: str) -> tuple[str, str] | None:
    probe = ssl.create_default_context()
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    probe.set_alpn_protocols(["h2"])
    try:
        with probe.wrap_socket(raw, server_hostname=host):
            pass
    except ssl.SSLError as error:
        if "ALERT" not in (error.reason or ""):  # no TLS alert: the server does not speak TLS either
            return None
    except OSError:
        return None
    return "the server speaks TLS: connect with --tls and --ca-file (or a grpcs:// target)", "TLS_REQUIRED"


def _client_refused(settings: ClientSettings, how: str) -> tuple[str, str]:
    """The server refused the client at the TLS layer: no certificate, or one it does not accept."""
    if not settings.cert_file:
        return (
            "the server requires a client certificate (mTLS): pass --cert-file and --key-file",
            "CLIENT_CERT_REQUIRED",
        )
    return (
        f"the server refused the client certificate {settings.cert_file} ({how}): it must be issued for "
        "client authentication by a CA the server trusts",
        "CLIENT_CERT_REFUSED",
    )


def _tls_refusal(raw: socket.socket, host: str, settings: ClientSettings) -> tuple[str, str] | None:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    context.set_alpn_protocols(["h2"])
    if settings.cert_file and settings.key_file:
        try:
            context.load_cert_chain(settings.cert_file, settings.key_file)
        except (ssl.SSLError, OSError) as error:
            return f"the client certificate or key cannot be used ({error})", "TLS_FAILED"
    try:
        with context.wrap_socket(raw, server_hostname=settings.server_name or host) as tls:
            # With TLS 1.3 the server checks the client's certificate after the client's handshake has
            # finished: a server that refuses it hangs up instead of answering the HTTP/2 preface.
            tls.settimeout(2.0)
            tls.sendall(_HTTP2_PREFACE)
            answer = tls.recv(1)
    except ssl.SSLCertVerificationError as error:
        roots = settings.ca_file or "the system roots"
        return (
            f"the server's certificate did not verify against {roots}: {error.verify_message} "
            "(check --ca-file and --server-name)",
            "SERVER_CERT_INVALID",
        )
    except ssl.SSLError as error:  # refused during the handshake (TLS 1.2), with the alert's name
        reason = error.reason or ""
        if reason in _NOT_TLS:
            return "the server does not speak TLS: drop --tls (or use a grpc:// target)", "NOT_TLS"
        if reason in _CERT_REQUIRED or "ALERT" in reason:
            return _client_refused(settings, f"TLS alert {reason}")
        return f"the TLS handshake failed ({reason or error})", "TLS_FAILED"
    except TimeoutError:
        return None  # TLS works and the server waits for more: the failure is elsewhere
    except OSError:
        answer = b""  # reset right after the handshake: a refusal as well
    if answer:
        return None  # the server answered: TLS and the certificate are fine; gRPC's own message says more
    return _client_refused(
        settings, "it hung up right after the TLS handshake"
    )  # TLS works; the failure is elsewhere (gRPC's own message says more)
    return None
