"""Real TLS material for tests: a CA, central's server certificates, edge client certificates, a wrong CA.

Everything is generated once per session with ``cryptography`` (ECDSA P-256)
through the same helpers ``aeterna certs`` uses, and written to files because
the services read certificates from paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from aeterna_security.certs import Issued, create_ca, create_client_cert, create_server_cert


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its key on disk, with its SPKI pin."""

    cert: Path
    key: Path
    pin: str

    @property
    def cert_pem(self) -> bytes:
        """The certificate, PEM."""
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        """The private key, PEM."""
        return self.key.read_bytes()


@dataclass(frozen=True)
class TlsMaterial:
    """The session's PKI."""

    directory: Path
    ca: CertFiles
    """The CA central and edges trust."""
    server: CertFiles
    """Central's certificate (SAN localhost, 127.0.0.1), issued by ``ca``."""
    other_server: CertFiles
    """Another valid server certificate from ``ca``, with a different key: an unpinned impostor."""
    edge_a: CertFiles
    """Client certificate of agent ``edge-a`` (tenant ``tenant-a``)."""
    edge_b: CertFiles
    """Client certificate of agent ``edge-b`` (tenant ``tenant-b``)."""
    wrong_ca: CertFiles
    """A CA nobody trusts."""
    wrong_ca_server: CertFiles
    """A server certificate for localhost issued by ``wrong_ca``."""
    wrong_ca_edge: CertFiles
    """An ``edge-a`` client certificate issued by ``wrong_ca``."""


def _write(issued: Issued, directory: Path, stem: str) -> CertFiles:
    cert, key = issued.write(directory, stem)
    return CertFiles(cert=cert, key=key, pin=issued.pin)


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """Generate the PKI once per test session."""
    directory = tmp_path_factory.mktemp("pki")
    ca = create_ca("Aeterna Test CA")
    wrong_ca = create_ca("Untrusted Test CA")
    return TlsMaterial(
        directory=directory,
        ca=_write(ca, directory, "ca"),
        server=_write(create_server_cert(ca, ["localhost", "127.0.0.1"]), directory, "server"),
        other_server=_write(create_server_cert(ca, ["localhost", "127.0.0.1"]), directory, "other-server"),
        edge_a=_write(create_client_cert(ca, "edge-a", tenant_id="tenant-a"), directory, "edge-a"),
        edge_b=_write(create_client_cert(ca, "edge-b", tenant_id="tenant-b"), directory, "edge-b"),
        wrong_ca=_write(wrong_ca, directory, "wrong-ca"),
        wrong_ca_server=_write(create_server_cert(wrong_ca, ["localhost", "127.0.0.1"]), directory, "wrong-server"),
        wrong_ca_edge=_write(create_client_cert(wrong_ca, "edge-a", tenant_id="tenant-a"), directory, "wrong-edge"),
    )
