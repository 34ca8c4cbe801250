"""TLS for servers and for the edge's channel to central, from the ``tls`` section.

What grpcio (1.85) lets Python configure, and what it does not:

* the server's certificate chain and key, the CA that verifies client
  certificates, and whether a client certificate is required;
* the client's root CAs, client certificate and key;
* NOT the minimum or maximum TLS version (the C core supports it, the Python
  API does not expose it): gRPC negotiates TLS 1.2 or 1.3 and never less.
  ``sync.network.encryption: tls13`` is enforced by the edge's own pre-connect
  probe (``pins.fetch_peer_chain``), which refuses a central that cannot speak 1.3;
* NOT a certificate-verification callback: pinning is done by that probe.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from aeterna_security.identity import Identity
from aeterna_security.pins import pin_of_pem
from aeterna_shared.config.model import TlsSection
from aeterna_shared.errors import InvalidArgument, PermissionDenied, Unauthenticated

# The key gRPC puts the peer's PEM certificate under in ``context.auth_context()``.
PEER_CERT_KEY = "x509_pem_cert"


def _read(path: str | None, key: str) -> bytes:
    if not path:
        raise InvalidArgument(f"{key} must be set when TLS is enabled", reason="INVALID_CONFIG")
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise InvalidArgument(f"{key}: cannot read {path}: {error.strerror}", reason="INVALID_CONFIG") from None


def server_credentials(tls: TlsSection) -> grpc.ServerCredentials | None:
    """Credentials for ``bind``: None unless ``tls.enabled``; mTLS when ``tls.requireClientCert``."""
    if not tls.enabled:
        return None
    cert = _read(tls.cert_file, "tls.certFile")
    key = _read(tls.key_file, "tls.keyFile")
    roots = _read(tls.ca_file, "tls.caFile") if tls.ca_file else None
    if tls.require_client_cert and roots is None:
        raise InvalidArgument("tls.requireClientCert needs tls.caFile to verify clients", reason="INVALID_CONFIG")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=roots, require_client_auth=tls.require_client_cert
    )


def channel_credentials(
    ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """Credentials of a client channel: roots from ``ca_file`` (``tls.caFile``), client cert when configured."""
    roots = _read(ca_file, "tls.caFile") if ca_file else None
    if cert_file and key_file:
        return grpc.ssl_channel_credentials(
            root_certificates=roots,
            private_key=_read(key_file, "tls.keyFile"),
            certificate_chain=_read(cert_file, "tls.certFile"),
        )
    return grpc.ssl_channel_credentials(root_certificates=roots)


def minimum_tls_version(encryption: str) -> ssl.TLSVersion:
    """The minimum version the pin probe accepts (``sync.network.encryption``: tls12 or tls13)."""
    return ssl.TLSVersion.TLSv1_3 if encryption == "tls13" else ssl.TLSVersion.TLSv1_2


def peer_certificate_pem(auth_context: dict[str, Any]) -> bytes | None:
    """The client's certificate (PEM) from a server call's auth context, if it presented one."""
    values = auth_context.get(PEER_CERT_KEY) or ()
    for value in values:
        return value if isinstance(value, bytes) else str(value).encode()
    return None


def check_client_pin(
    client_pins: Mapping[str, Sequence[str]], identity: Identity, auth_context: dict[str, Any]
) -> None:
    """Enforce ``client_pins`` (``tls.clientPins``) for ``identity``'s agent.

    An agent listed in ``tls.clientPins`` must present a client certificate whose
    SPKI pin is one of its pins, whatever the auth method; agents not listed are
    not pinned (their certificate, if required, is still verified by the CA).
    """
    pins = client_pins.get(identity.agent_id)
    if not pins:
        return
    pem = peer_certificate_pem(auth_context)
    if pem is None:
        raise Unauthenticated(
            f"agent {identity.agent_id!r} must present its pinned client certificate",
            reason="CLIENT_CERT_REQUIRED",
        )
    presented = pin_of_pem(pem)
    if presented not in pins:
        raise PermissionDenied(
            f"the client certificate is not pinned for agent {identity.agent_id!r}",
            reason="CLIENT_PIN_MISMATCH",
            metadata={"presented_pin": presented},
        )


def identity_from_certificate(pem: bytes) -> tuple[str, str]:
    """(agent id, tenant) from a client certificate: subject CN and OU (default tenant when absent)."""
    cert = x509.load_pem_x509_certificate(pem)
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    ous = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
    agent = str(cns[0].value) if cns else ""
    tenant = str(ous[0].value) if ous else "default"
    return agent, tenant
