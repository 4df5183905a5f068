"""A throwaway certificate authority for TLS tests: a CA, a server certificate for a name and
127.0.0.1, and a client certificate, as PEM files in a test's directory (private keys 0600)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


class TlsFiles:
    """ca.pem; server.pem/server.key (SAN `server_name` and 127.0.0.1); client.pem/client.key."""

    def __init__(self, directory: Path, server_name: str = "temporal.test") -> None:
        self.dir = directory
        self.server_name = server_name
        now = datetime.datetime.now(datetime.timezone.utc)
        self._valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            self._builder("tempered test CA", self._ca_key.public_key())
            .issuer_name(_name("tempered test CA"))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = directory / "ca.pem"
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        sans = [x509.DNSName(server_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        self.server_cert, self.server_key = self._leaf("server", sans, ExtendedKeyUsageOID.SERVER_AUTH)
        self.client_cert, self.client_key = self._leaf("client", [x509.DNSName("worker.test")],
                                                       ExtendedKeyUsageOID.CLIENT_AUTH)

    def _builder(self, common_name: str, public_key) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._valid[0])
            .not_valid_after(self._valid[1])
        )

    def _leaf(self, stem: str, sans: list, usage) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(stem, key.public_key())
            .issuer_name(_name("tempered test CA"))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        cert_path, key_path = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path
