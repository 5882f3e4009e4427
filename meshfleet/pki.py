"""The mesh PKI contract both sides share: key algorithms, the intermediate CSR, chain checks, renewal.

Pure functions of their inputs, except `generate_key` (the only source of randomness,
called by the adapters that own keys: the hub's root store, the agent's CA keeper).
An intermediate is identified as `O=meshfleet, L=<cluster>, CN=Intermediate CA` (Istio's
own tooling names the cluster in `L` too) and carries the trust domain as its only
URI SAN, `spiffe://<trust domain>`, as SPIFFE asks of signing certificates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ALGORITHMS = ("EC-P256", "EC-P384", "RSA-4096")
DEFAULT_ALGORITHM = "EC-P256"
ORGANIZATION = "meshfleet"
INTERMEDIATE_CN = "Intermediate CA"
CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates start this much in the past, so a peer whose clock is a little behind accepts them."""

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class PkiError(ValueError):
    """Key or certificate material that cannot be used; the message says which and why."""


def generate_key(algorithm: str) -> PrivateKey:
    """A new private key of `algorithm` (one of ALGORITHMS)."""
    if algorithm == "EC-P256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EC-P384":
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm == "RSA-4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    raise PkiError(f"unknown key algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")


def algorithm_of(key: object) -> str | None:
    """The ALGORITHMS name of a public or private key, None if it is none of them."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return {"secp256r1": "EC-P256", "secp384r1": "EC-P384"}.get(key.curve.name)
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) and key.key_size == 4096:
        return "RSA-4096"
    return None


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes, what: str = "private key") -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{what} is not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PkiError(f"{what} is a {type(key).__name__}; only EC and RSA keys are used")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lower-case hex: how roots and intermediates are named."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_certs(pem: bytes, what: str = "certificate bundle") -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in order; PkiError if it holds none or garbage."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise PkiError(f"{what} is not a PEM certificate bundle ({exc})") from exc
    return certs


def bundle_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(cert_pem(c) for c in certs)


def trust_domain_uri(trust_domain: str) -> str:
    """The SPIFFE ID of a trust domain itself (no path): the URI SAN of every meshfleet CA."""
    return f"spiffe://{trust_domain}"


def intermediate_subject(cluster: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.LOCALITY_NAME, cluster),
                      x509.NameAttribute(NameOID.COMMON_NAME, INTERMEDIATE_CN)])


def ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)


def signature_hash(key: object) -> hashes.SHA256 | hashes.SHA384:
    """SHA-384 for P-384 keys, SHA-256 otherwise (what each curve's security level calls for)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


def intermediate_csr(key: PrivateKey, cluster: str, trust_domain: str, path_length: int = 0) -> bytes:
    """The PEM CSR an agent sends for its cluster's intermediate CA (the key never leaves the agent)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(intermediate_subject(cluster))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(trust_domain_uri(trust_domain))]),
                       critical=False)
        .sign(key, signature_hash(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if `issuer` signed `cert` (names match and the signature verifies)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def issuer_among(cert: x509.Certificate, roots: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The root in `roots` that signed `cert`, or None."""
    return next((r for r in roots if issued_by(cert, r)), None)


def same_public_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    return (key.public_key().public_bytes(serialization.Encoding.DER, pub)
            == cert.public_key().public_bytes(serialization.Encoding.DER, pub))


@dataclass(frozen=True)
class Renewal:
    """When an intermediate is to be renewed, and whether it is due now."""

    due: bool
    reason: str
    at: dt.datetime | None = None
    """When renewal falls due (None when it is due because the certificate is unusable)."""


def renewal_time(cert: x509.Certificate, renew_before_percent: int, jitter: float) -> dt.datetime:
    """When `cert` is renewed: once `renew_before_percent` of its life remains, give or take a quarter of that.

    `jitter` in [0, 1) is drawn once per certificate, so clusters issued together renew apart
    (for the default 20 %, anywhere between 25 % and 15 % of the life left; never more than 90 %).
    """
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    # capped: with renewBefore near its maximum (90) the jitter would otherwise put renewal before the
    # certificate's start, and every new intermediate would be due at once
    share = min(0.9, renew_before_percent / 100 * (0.75 + 0.5 * jitter))
    return cert.not_valid_after_utc - life * share


def intermediate_renewal(cert: x509.Certificate, roots: Sequence[x509.Certificate], signer: str,
                         now: dt.datetime, renew_before_percent: int, jitter: float) -> Renewal:
    """Whether a cluster's intermediate must be replaced, and why (pure).

    At once when expired, not yet valid, not chained to any trusted root, or not issued by the
    signing root `signer` (a fingerprint); otherwise at `renewal_time`.
    """
    if now >= cert.not_valid_after_utc:
        return Renewal(True, f"the intermediate expired at {cert.not_valid_after_utc.isoformat()}")
    if now + CLOCK_SKEW < cert.not_valid_before_utc:
        return Renewal(True, f"the intermediate is not valid before {cert.not_valid_before_utc.isoformat()}")
    issuer = issuer_among(cert, roots)
    if issuer is None:
        return Renewal(True, "the intermediate is not chained to any root of the trust bundle")
    if fingerprint(issuer) != signer:
        return Renewal(True, f"the intermediate was issued by root {fingerprint(issuer)[:12]}, the signing root is "
                             f"now {signer[:12]}")
    at = renewal_time(cert, renew_before_percent, jitter)
    if now >= at:
        left = (cert.not_valid_after_utc - now) / (cert.not_valid_after_utc - cert.not_valid_before_utc)
        return Renewal(True, f"renewal due: {100 * left:.0f} % of the intermediate's life left", at)
    return Renewal(False, "", at)
