"""The mesh CA's signing decisions (pure): build a root, check an intermediate CSR, sign it.

Keys and `now` are arguments; nothing here generates a key or reads a clock. The
cluster a CSR may name comes from the caller's mutual-TLS identity, never from the
CSR itself, and the issued certificate takes none of its extensions from the CSR:
the hub writes CA:TRUE with the policy's path length, cert-sign key usage and the
trust domain's SPIFFE URI whatever was asked for.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from meshfleet.pki import (
    CLOCK_SKEW,
    ORGANIZATION,
    PrivateKey,
    algorithm_of,
    ca_key_usage,
    intermediate_subject,
    issued_by,
    same_public_key,
    signature_hash,
    trust_domain_uri,
)


class CSRRefused(ValueError):
    """An intermediate CSR the hub will not sign; the message says why (it reaches the agent and status)."""


@dataclass(frozen=True)
class Root:
    """A root CA the hub can sign with (its key is None when only the certificate is known)."""

    cert: x509.Certificate
    key: PrivateKey | None


@dataclass(frozen=True)
class IssuancePolicy:
    """What the TrustPolicy allows an intermediate to be."""

    trust_domain: str
    max_ttl: dt.timedelta
    path_length: int = 0


def new_root(key: PrivateKey, trust_domain: str, now: dt.datetime, validity: dt.timedelta,
             name: str = "meshfleet root CA") -> x509.Certificate:
    """A self-signed root for `key`: CA:TRUE without path limit, cert-sign usage, the trust domain URI."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(trust_domain_uri(trust_domain))]),
                       critical=False)
        .sign(key, signature_hash(key))
    )


def check_root(cert: x509.Certificate, key: PrivateKey | None, now: dt.datetime) -> str | None:
    """Why a (supplied) root cannot serve, or None: it must be a valid CA certificate matching its key."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "the root certificate has no basicConstraints extension"
    if not bc.ca:
        return "the root certificate is not a CA (basicConstraints CA:FALSE)"
    if bc.path_length == 0:
        return "the root certificate's path length is 0, so it cannot sign intermediate CAs"
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            return "the root certificate's keyUsage lacks keyCertSign, so peers refuse what it signs"
    except x509.ExtensionNotFound:
        pass  # without keyUsage a CA may sign anything (RFC 5280 4.2.1.3)
    if cert.issuer != cert.subject or not issued_by(cert, cert):
        return "the root certificate is not self-signed"
    if now >= cert.not_valid_after_utc:
        return f"the root certificate expired at {cert.not_valid_after_utc.isoformat()}"
    if now + CLOCK_SKEW < cert.not_valid_before_utc:
        return f"the root certificate is not valid before {cert.not_valid_before_utc.isoformat()}"
    if algorithm_of(cert.public_key()) is None:
        return "the root's key is neither EC P-256/P-384 nor RSA 4096"
    if key is not None and not same_public_key(key, cert):
        return "the root key does not match the root certificate"
    return None


def _requested_uris(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    if san.get_values_for_type(x509.DNSName) or san.get_values_for_type(x509.IPAddress) \
            or san.get_values_for_type(x509.RFC822Name):
        raise CSRRefused("the CSR asks for DNS, IP or e-mail names; an intermediate CA carries only the trust "
                         "domain's SPIFFE URI")
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def check_intermediate_csr(csr_pem: bytes, cluster: str, policy: IssuancePolicy) -> x509.CertificateSigningRequest:
    """The parsed CSR if the hub may sign it for `cluster` (the caller's identity); raises CSRRefused."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CSRRefused(f"the CSR is not a PEM PKCS#10 request: {exc}") from exc
    try:
        return _check_csr(csr, cluster, policy)
    except ValueError as exc:  # an extension or name that does not parse
        if isinstance(exc, CSRRefused):
            raise
        raise CSRRefused(f"the CSR is malformed: {exc}") from exc


def _check_csr(csr: x509.CertificateSigningRequest, cluster: str, policy: IssuancePolicy
               ) -> x509.CertificateSigningRequest:
    if not csr.is_signature_valid:
        raise CSRRefused("the CSR's signature does not verify against its public key")
    if algorithm_of(csr.public_key()) is None:
        raise CSRRefused("the CSR's key is neither EC P-256/P-384 nor RSA 4096")
    localities = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.LOCALITY_NAME)]
    if localities != [cluster]:
        named = ", ".join(map(str, localities)) or "no cluster"
        raise CSRRefused(f"the CSR names {named} (subject L), but the caller is cluster {cluster}; a cluster gets "
                         "only its own intermediate signed")
    expected = intermediate_subject(cluster)
    if csr.subject != expected:
        raise CSRRefused(f"the CSR's subject is {csr.subject.rfc4514_string()}, expected "
                         f"{expected.rfc4514_string()}")
    try:
        bc = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CSRRefused("the CSR does not ask for a CA certificate (no basicConstraints)") from None
    if not bc.ca:
        raise CSRRefused("the CSR asks for CA:FALSE; an intermediate must be a CA")
    if bc.path_length is None or bc.path_length > policy.path_length:
        asked = "no limit" if bc.path_length is None else str(bc.path_length)
        raise CSRRefused(f"the CSR asks for path length {asked}; the TrustPolicy allows at most "
                         f"{policy.path_length}")
    uris = _requested_uris(csr)
    want = trust_domain_uri(policy.trust_domain)
    if uris != [want]:
        raise CSRRefused(f"the CSR asks for {', '.join(uris) or 'no SPIFFE URI'}; the mesh's trust domain is "
                         f"{want}")
    return csr


def _authority_key_id(root: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI naming `root` as its peers look it up: by the root's own SKI when it has one (a supplied root
    may compute it other than by SHA-1 of the key), else from its key."""
    try:
        ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(root.public_key())  # type: ignore[arg-type]


def sign_intermediate(root: Root, csr: x509.CertificateSigningRequest, cluster: str, policy: IssuancePolicy,
                      now: dt.datetime, requested_ttl: dt.timedelta | None = None) -> x509.Certificate:
    """Issue `cluster`'s intermediate CA from a CSR `check_intermediate_csr` accepted.

    Its life is the shortest of what was asked, the policy's TTL and what remains of the root.
    """
    if root.key is None:
        raise CSRRefused("the signing root's key is not available on the hub (a supplied root whose Secret or file "
                         "no longer holds it); the CSR can be signed once the root rotation moves on")
    ttl = policy.max_ttl if requested_ttl is None or requested_ttl <= dt.timedelta(0) \
        else min(requested_ttl, policy.max_ttl)
    not_after = min(now + ttl, root.cert.not_valid_after_utc)
    if not_after <= now:
        raise CSRRefused("the signing root has expired; rotate the root")
    return (
        x509.CertificateBuilder()
        .subject_name(intermediate_subject(cluster))
        .issuer_name(root.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=policy.path_length), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .add_extension(_authority_key_id(root.cert), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
            trust_domain_uri(policy.trust_domain))]), critical=False)
        .sign(root.key, signature_hash(root.key))
    )
