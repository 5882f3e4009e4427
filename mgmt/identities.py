"""The hub's internal CA for agent identities (not the mesh root of trust).

Signing decisions are pure functions of (CA, CSR, cluster, now); only
`load_or_create_ca` and `ensure_server_certificate` touch files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshfleet.files import atomic_write, write_private
from meshfleet.jointokens import SPIFFE_PREFIX

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=365)
SERVER_RENEW_BEFORE = dt.timedelta(days=30)
_CLOCK_SKEW = dt.timedelta(minutes=5)


class CSRRejected(ValueError):
    """A CSR the hub will not sign; the message says why."""


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def cluster_uri(cluster: str) -> str:
    return SPIFFE_PREFIX + cluster


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, the identity the registry pins."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cluster_of(cert: x509.Certificate) -> str | None:
    """The cluster a client certificate names (its meshfleet SPIFFE URI), or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(SPIFFE_PREFIX)]
    return names[0][len(SPIFFE_PREFIX) :] if len(names) == 1 else None


def new_authority(now: dt.datetime) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshfleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "meshfleet hub identity CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, cert)


def _leaf_builder(ca: Authority, subject: x509.Name, public_key: object, now: dt.datetime,
                  validity: dt.timedelta) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + validity, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )


def check_csr(csr: x509.CertificateSigningRequest) -> None:
    """Refuse CSRs with a bad signature or a weak key; raises CSRRejected."""
    if not csr.is_signature_valid:
        raise CSRRejected("CSR signature does not verify against its public key")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CSRRejected(f"CSR key curve {key.curve.name} not accepted (use P-256 or P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CSRRejected(f"CSR RSA key of {key.key_size} bits is too small (minimum 2048)")
    else:
        raise CSRRejected(f"CSR key type {type(key).__name__} not accepted (use EC P-256/P-384 or RSA)")


def sign_cluster_csr(ca: Authority, csr_pem: bytes, cluster: str, now: dt.datetime,
                     validity: dt.timedelta) -> x509.Certificate:
    """Issue the client certificate for `cluster` from an agent's CSR.

    The identity comes from the token the hub checked, never from the CSR's
    subject: whatever the CSR asks for, the certificate names `cluster` only.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CSRRejected(f"CSR is not a PEM PKCS#10 request: {exc}") from exc
    check_csr(csr)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshfleet"),
                         x509.NameAttribute(NameOID.COMMON_NAME, cluster)])
    return (
        _leaf_builder(ca, subject, csr.public_key(), now, validity)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(cluster_uri(cluster))]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def _server_sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", "::1", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_server_certificate(ca: Authority, hosts: Sequence[str], now: dt.datetime
                             ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshfleet"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "meshfleet hub")])
    cert = (
        _leaf_builder(ca, subject, key.public_key(), now, SERVER_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_server_sans(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return key, cert


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_or_create_ca(state_dir: Path, now: dt.datetime) -> Authority:
    """The CA in state_dir (ca.key 0600, ca.crt), created on first use."""
    key_path, cert_path = state_dir / "ca.key", state_dir / "ca.crt"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: expected an EC private key")
        return Authority(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
    if key_path.exists() or cert_path.exists():
        raise ValueError(f"{state_dir}: one of ca.key/ca.crt is missing; refusing to replace the other")
    ca = new_authority(now)
    write_private(key_path, _pem_key(ca.key))
    atomic_write(cert_path, ca.cert_pem)
    return ca


def ensure_server_certificate(state_dir: Path, ca: Authority, hosts: Sequence[str],
                              now: dt.datetime) -> tuple[bytes, bytes]:
    """(key PEM, cert PEM) for the hub's listener; reissued when near expiry or names changed."""
    key_path, cert_path = state_dir / "server.key", state_dir / "server.crt"
    if key_path.exists() and cert_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        wanted = set(map(str, _server_sans(hosts)))
        have = set(map(str, cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value))
        if cert.not_valid_after_utc - now > SERVER_RENEW_BEFORE and wanted <= have \
                and cert.issuer == ca.cert.subject:
            return key_path.read_bytes(), cert_path.read_bytes()
    key, cert = issue_server_certificate(ca, hosts, now)
    key_pem, cert_pem = _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)
    write_private(key_path, key_pem)
    atomic_write(cert_path, cert_pem)
    return key_pem, cert_pem
