"""The agent's identity: a key made here (never sent), the certificate the hub issued for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshfleet.files import atomic_write, ensure_private_dir, write_private
from meshfleet.jointokens import SPIFFE_PREFIX


class IdentityError(Exception):
    """The identity on disk cannot be used (wrong cluster, unreadable files)."""


@dataclass(frozen=True)
class Identity:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes


class IdentityStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = ensure_private_dir(state_dir)
        self.key_path = self.dir / "agent.key"
        self.cert_path = self.dir / "agent.crt"
        self.ca_path = self.dir / "hub-ca.crt"

    def key_pem(self) -> bytes:
        """The agent's private key, generated on first use and kept 0600."""
        if self.key_path.exists():
            return self.key_path.read_bytes()
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        write_private(self.key_path, pem)
        return pem

    def csr_pem(self, cluster: str) -> bytes:
        key = serialization.load_pem_private_key(self.key_pem(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{self.key_path}: expected an EC private key")
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cluster)]))
               .sign(key, hashes.SHA256()))
        return csr.public_bytes(serialization.Encoding.PEM)

    def load(self, cluster: str) -> Identity | None:
        """The stored identity, or None if the agent has not registered yet."""
        if not (self.key_path.exists() and self.cert_path.exists() and self.ca_path.exists()):
            return None
        cert_pem = self.cert_path.read_bytes()
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except (ValueError, x509.ExtensionNotFound) as exc:
            raise IdentityError(f"{self.cert_path}: unreadable certificate ({exc})") from exc
        if SPIFFE_PREFIX + cluster not in uris:
            raise IdentityError(f"{self.cert_path} belongs to {', '.join(uris) or 'no cluster'}, not cluster "
                                f"{cluster!r}; use another --state-dir")
        return Identity(self.key_path.read_bytes(), cert_pem, self.ca_path.read_bytes())

    def save(self, cert_pem: bytes, ca_pem: bytes) -> None:
        atomic_write(self.ca_path, ca_pem)
        atomic_write(self.cert_path, cert_pem)
