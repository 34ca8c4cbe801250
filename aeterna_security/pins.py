"""SPKI SHA-256 pins: computing them and checking a server's certificate against them.

A pin is ``sha256/<base64>`` of the DER SubjectPublicKeyInfo of a certificate
(the HPKP format), so it survives re-issuing a certificate for the same key.

grpcio's Python API has no hook into its own certificate verification, so the
edge checks central's certificate itself before gRPC connects: ``fetch_peer_chain``
performs a TLS handshake with the stdlib ``ssl`` module against the same target,
verifying against the same CA bundle, and ``require_pin`` refuses unless the
leaf (or, for CA pinning, any certificate of the verified chain) matches a pin.
``docs/security.md`` describes exactly what this checks and its limits.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from aeterna_shared.errors import Unauthenticated, Unavailable

PIN_PREFIX = "sha256/"


class PinMismatch(Unavailable):
    """The server's certificate matches none of the configured pins; nothing was sent to it."""

    reason = "PIN_MISMATCH"


def spki_pin(certificate: x509.Certificate) -> str:
    """The ``sha256/<base64>`` pin of a certificate's public key."""
    der = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PIN_PREFIX + base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def pin_of_pem(pem: bytes | str) -> str:
    """The pin of the first certificate in a PEM document."""
    data = pem.encode() if isinstance(pem, str) else pem
    return spki_pin(x509.load_pem_x509_certificate(data))


def pins_of_pem_chain(pem: bytes | str) -> list[str]:
    """The pins of every certificate in a PEM bundle, in order."""
    data = pem.encode() if isinstance(pem, str) else pem
    return [spki_pin(cert) for cert in x509.load_pem_x509_certificates(data)]


def matches_any(pins: Iterable[str], accepted: Iterable[str]) -> bool:
    """True when one of ``pins`` is accepted (pins are public values, so no constant-time need)."""
    accepted_set = set(accepted)
    return any(pin in accepted_set for pin in pins)


def fetch_peer_chain(
    host: str,
    port: int,
    *,
    ca_pem: bytes | None,
    server_name: str | None = None,
    client_cert_file: str | None = None,
    client_key_file: str | None = None,
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    timeout: float = 10.0,
) -> list[x509.Certificate]:
    """Handshake with ``host:port`` and return the server's verified chain (leaf first).

    Verification uses ``ca_pem`` (or the system roots when None) and checks the
    hostname, exactly as gRPC's own handshake will. ALPN offers ``h2`` like gRPC.
    Raises ``Unavailable`` when the server cannot be reached or fails verification.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = minimum_version
    if ca_pem is not None:
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    if client_cert_file and client_key_file:
        context.load_cert_chain(client_cert_file, client_key_file)
    context.set_alpn_protocols(["h2"])
    name = server_name or host
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            chain = _verified_chain(tls)
    except ssl.SSLCertVerificationError as error:
        raise Unavailable(
            f"central's certificate did not verify: {error.verify_message}",
            reason="CERTIFICATE_INVALID",
            metadata={"target": f"{host}:{port}"},
        ) from None
    except (OSError, ssl.SSLError) as error:
        raise Unavailable(
            f"cannot reach central at {host}:{port} for the pin check: {type(error).__name__}",
            reason="CENTRAL_UNREACHABLE",
            metadata={"target": f"{host}:{port}"},
        ) from None
    return chain


def _verified_chain(tls: ssl.SSLSocket) -> list[x509.Certificate]:
    # Python 3.13 has get_verified_chain(); on 3.11 only the leaf is exposed, which
    # is what leaf pinning needs. CA pins are then matched against the CA bundle
    # that verified the leaf (see require_pin).
    getter = getattr(tls, "get_verified_chain", None)
    if getter is not None:
        return [x509.load_der_x509_certificate(bytes(der)) for der in getter()]
    leaf = tls.getpeercert(binary_form=True)
    if leaf is None:  # pragma: no cover - a verified handshake always has a peer certificate
        raise Unauthenticated("the server presented no certificate", reason="NO_SERVER_CERTIFICATE")
    return [x509.load_der_x509_certificate(leaf)]


def require_pin(
    chain: Sequence[x509.Certificate],
    accepted: Sequence[str],
    *,
    target: str,
    ca_certs: Sequence[x509.Certificate] = (),
) -> str:
    """Return the matching pin of ``chain``; raise ``PinMismatch`` when none matches.

    Pins are matched against the verified chain, plus the certificates of
    ``ca_certs`` that directly issued the leaf (so pinning the intermediate or
    root CA works on Python versions that expose only the leaf). The message
    names the leaf's pin (public information) so an operator can tell a
    rotation from an attack; it never contains key material.
    """
    pins = [spki_pin(cert) for cert in chain]
    if chain:
        for ca in ca_certs:
            try:
                chain[0].verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            pins.append(spki_pin(ca))
    for pin in pins:
        if pin in accepted:
            return pin
    raise PinMismatch(
        f"central at {target} presented a certificate matching none of the {len(accepted)} pinned keys "
        f"(leaf pin {pins[0] if pins else 'none'}); refusing to send anything",
        metadata={"target": target, "presented_pin": pins[0] if pins else ""},
        retry_after=30.0,
    )
