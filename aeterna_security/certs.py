"""Development certificates: a CA, central's server certificate, edge client certificates.

Used by ``aeterna certs`` and by the test fixtures. Keys are ECDSA P-256 (small,
fast, accepted by gRPC's BoringSSL). An edge certificate names the agent in its
subject CN and the tenant in its OU: that is what the ``mtls`` auth method reads.
Production certificates come from cert-manager or the operator's PKI; these
helpers only make a development setup and the tests realistic.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aeterna_security.pins import spki_pin


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed certificate."""
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def pin(self) -> str:
        """The certificate's SPKI pin (``sha256/<base64>``)."""
        return spki_pin(self.certificate)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.crt`` and ``<stem>.key`` (the key readable by the owner only)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{stem}.crt"
        key_path = directory / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.touch(mode=0o600, exist_ok=True)
        key_path.chmod(0o600)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path

    @classmethod
    def read(cls, directory: Path, stem: str) -> Issued:
        """Read what ``write`` wrote."""
        return cls((directory / f"{stem}.crt").read_bytes(), (directory / f"{stem}.key").read_bytes())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(common_name: str = "Aeterna Development CA", *, days: int = 3650) -> Issued:
    """A self-signed CA certificate that may sign leaf certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _issue(
    ca: Issued,
    subject: x509.Name,
    *,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
    not_after: dt.datetime | None = None,
) -> Issued:
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key must be an EC key")
    ca_cert = ca.certificate
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _san(entry: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        return x509.DNSName(entry)


def create_server_cert(
    ca: Issued, hostnames: list[str] | None = None, *, common_name: str = "aeterna-central", days: int = 825
) -> Issued:
    """A TLS server certificate for ``hostnames`` (DNS names or IP addresses)."""
    names = hostnames or ["localhost", "127.0.0.1"]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return _issue(ca, subject, sans=[_san(n) for n in names], usage=ExtendedKeyUsageOID.SERVER_AUTH, days=days)


def create_client_cert(ca: Issued, agent_id: str, *, tenant_id: str = "default", days: int = 825) -> Issued:
    """An edge (or agent) client certificate: CN is the agent id, OU the tenant."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, agent_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, tenant_id),
        ]
    )
    uri = x509.UniformResourceIdentifier(f"spiffe://aeterna/tenant/{tenant_id}/agent/{agent_id}")
    return _issue(ca, subject, sans=[uri], usage=ExtendedKeyUsageOID.CLIENT_AUTH, days=days)
