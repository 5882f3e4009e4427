"""The mesh PKI: hub roots, intermediate CSR checks and signing, renewal timing, and real mTLS under them.

Pure-core tests use the fixed clock NOW; handshake tests use tests.meshtls.TestCA at the real time,
as OpenSSL checks validity against it.
"""

from __future__ import annotations

import base64
import datetime as dt
import gc
import hashlib
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from meshfleet import pki
from meshfleet.pki import CLOCK_SKEW, PrivateKey
from mgmt.certs import CSRRefused, IssuancePolicy, Root, check_intermediate_csr, check_root, new_root, sign_intermediate
from tests.meshtls import Cacerts, TestCA, Workload, handshake, handshake_matrix, issue_workload, spiffe_id

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
TD = "cluster.local"
TD_URI = "spiffe://cluster.local"
CLUSTER = "us-east-1"
DAY = dt.timedelta(days=1)
POLICY = IssuancePolicy(TD, max_ttl=30 * DAY)
CA_TRUE = x509.BasicConstraints(ca=True, path_length=0)
ROOT_CA = x509.BasicConstraints(ca=True, path_length=None)
CA_USAGE = pki.ca_key_usage()
TD_SAN: list[x509.GeneralName] = [x509.UniformResourceIdentifier(TD_URI)]
VERIFY_FAILED = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
E = TypeVar("E", bound=x509.ExtensionType)


@dataclass(frozen=True)
class Keys:
    """One key of each kind the tests need, generated once per module (RSA is slow)."""

    p256: ec.EllipticCurvePrivateKey
    p384: ec.EllipticCurvePrivateKey
    p521: ec.EllipticCurvePrivateKey
    rsa2048: rsa.RSAPrivateKey
    rsa4096: rsa.RSAPrivateKey

    def of(self, algorithm: str) -> PrivateKey:
        by_name: dict[str, PrivateKey] = {"EC-P256": self.p256, "EC-P384": self.p384, "RSA-4096": self.rsa4096}
        return by_name[algorithm]


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa4096 = pki.generate_key("RSA-4096")
    assert isinstance(rsa4096, rsa.RSAPrivateKey)
    return Keys(ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()),
                ec.generate_private_key(ec.SECP521R1()), rsa.generate_private_key(65537, 2048), rsa4096)


@pytest.fixture(scope="module")
def root(keys: Keys) -> Root:
    """The hub's root at NOW, valid ten years."""
    return Root(new_root(keys.p256, TD, NOW, 3650 * DAY), keys.p256)


def ext(cert: x509.Certificate | x509.CertificateSigningRequest, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def uris(cert: x509.Certificate) -> list[str]:
    return ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)


def self_signed(key: CertificateIssuerPrivateKeyTypes, *, basic: x509.BasicConstraints | None = ROOT_CA,
                usage: x509.KeyUsage = CA_USAGE, not_before: dt.datetime = NOW - 30 * DAY,
                not_after: dt.datetime = NOW + 365 * DAY,
                ski: x509.SubjectKeyIdentifier | None = None, name: str = "test root") -> x509.Certificate:
    """A self-signed certificate shaped as the test asks (`basic` None: no basicConstraints at all)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(usage, critical=True)
               .add_extension(ski or x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if basic is not None:
        builder = builder.add_extension(basic, critical=True)
    return builder.sign(key, pki.signature_hash(key))


def build_csr(key: CertificateIssuerPrivateKeyTypes, *, cluster: str = CLUSTER, subject: x509.Name | None = None,
              basic: x509.BasicConstraints | None = CA_TRUE, usage: x509.KeyUsage = CA_USAGE,
              san: Sequence[x509.GeneralName] | None = TD_SAN, extra: Sequence[x509.ExtensionType] = ()) -> bytes:
    """A PEM CSR like the agent's, with the parts a test changes (`basic`/`san` None: left out)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or pki.intermediate_subject(cluster))
    if basic is not None:
        builder = builder.add_extension(basic, critical=True)
    builder = builder.add_extension(usage, critical=True)
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    for e in extra:
        builder = builder.add_extension(e, critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else pki.signature_hash(key)
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def corrupt_signature(csr_pem: bytes) -> bytes:
    """`csr_pem` with one bit of its ECDSA signature flipped, re-wrapped as PEM; it still parses."""
    csr = x509.load_pem_x509_csr(csr_pem)
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    assert der.endswith(csr.signature)  # the signature BIT STRING is the last field of the request
    der[-1] ^= 0x01  # the last byte of the INTEGER s: the DER structure stays well-formed
    b64 = base64.b64encode(bytes(der)).decode()
    pem = "".join(["-----BEGIN CERTIFICATE REQUEST-----\n",
                   *(b64[i:i + 64] + "\n" for i in range(0, len(b64), 64)),
                   "-----END CERTIFICATE REQUEST-----\n"]).encode()
    parsed = x509.load_pem_x509_csr(pem)
    assert parsed.subject == csr.subject and not parsed.is_signature_valid
    return pem


def intermediate(root: Root, key: PrivateKey, cluster: str = CLUSTER, policy: IssuancePolicy = POLICY,
                 now: dt.datetime = NOW, ttl: dt.timedelta | None = None) -> x509.Certificate:
    csr = check_intermediate_csr(pki.intermediate_csr(key, cluster, policy.trust_domain), cluster, policy)
    return sign_intermediate(root, csr, cluster, policy, now, ttl)


# new_root / check_root ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", pki.ALGORITHMS)
def test_new_root_is_a_self_signed_ca_of_the_trust_domain(keys: Keys, algorithm: str) -> None:
    key = keys.of(algorithm)
    cert = new_root(key, TD, NOW, 3650 * DAY)
    assert pki.issued_by(cert, cert)
    assert cert.subject == cert.issuer
    assert pki.algorithm_of(cert.public_key()) == algorithm
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value == ROOT_CA
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value == CA_USAGE
    assert CA_USAGE.key_cert_sign and CA_USAGE.crl_sign
    assert uris(cert) == [TD_URI]
    assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (NOW - CLOCK_SKEW, NOW + 3650 * DAY)
    assert check_root(cert, key, NOW) is None
    assert check_root(cert, None, NOW) is None  # only the certificate known (a root kept for trust)


@pytest.mark.parametrize("make, why", [
    pytest.param(lambda k: (self_signed(k.p256, basic=None), k.p256),
                 "the root certificate has no basicConstraints extension", id="no-basic-constraints"),
    pytest.param(lambda k: (self_signed(k.p256, basic=x509.BasicConstraints(ca=False, path_length=None)), k.p256),
                 "the root certificate is not a CA (basicConstraints CA:FALSE)", id="ca-false"),
    pytest.param(lambda k: (self_signed(k.p256, basic=x509.BasicConstraints(ca=True, path_length=0)), k.p256),
                 "the root certificate's path length is 0, so it cannot sign intermediate CAs", id="pathlen-0"),
    pytest.param(lambda k: (self_signed(k.p256, not_after=NOW - DAY), k.p256),
                 "the root certificate expired at 2029-12-31T00:00:00+00:00", id="expired"),
    pytest.param(lambda k: (self_signed(k.p256, not_after=NOW), k.p256),
                 "the root certificate expired at 2030-01-01T00:00:00+00:00", id="expires-now"),
    pytest.param(lambda k: (new_root(k.p256, TD, NOW, 3650 * DAY), k.p384),
                 "the root key does not match the root certificate", id="key-mismatch"),
    pytest.param(lambda k: (self_signed(k.rsa2048), k.rsa2048),
                 "the root's key is neither EC P-256/P-384 nor RSA 4096", id="rsa-2048"),
    pytest.param(lambda k: (self_signed(k.p521), k.p521),
                 "the root's key is neither EC P-256/P-384 nor RSA 4096", id="ec-p521"),
])
def test_check_root_refuses(keys: Keys, make: Callable[[Keys], tuple[x509.Certificate, PrivateKey]],
                            why: str) -> None:
    cert, key = make(keys)
    assert check_root(cert, key, NOW) == why


def test_check_root_accepts_a_root_with_a_path_length_above_0(keys: Keys) -> None:
    cert = self_signed(keys.p256, basic=x509.BasicConstraints(ca=True, path_length=1))
    assert check_root(cert, keys.p256, NOW) is None


def test_check_root_refuses_a_root_without_key_cert_sign(keys: Keys) -> None:
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    assert check_root(self_signed(keys.p256, usage=usage), keys.p256, NOW) is not None


# sign_intermediate ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path_length", [0, 1], ids=["policy-pathlen-0", "policy-pathlen-1"])
def test_sign_intermediate_writes_the_policys_ca_extensions(root: Root, keys: Keys, path_length: int) -> None:
    policy = IssuancePolicy(TD, max_ttl=30 * DAY, path_length=path_length)
    cert = intermediate(root, keys.p384, policy=policy)  # the CSR asks for path length 0 either way
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=True, path_length=path_length)
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign and usage.value == CA_USAGE
    assert uris(cert) == [TD_URI]
    assert ext(cert, x509.SubjectAlternativeName).value == x509.SubjectAlternativeName(TD_SAN)
    assert cert.subject == pki.intermediate_subject(CLUSTER)
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.LOCALITY_NAME)] == [CLUSTER]
    assert cert.issuer == root.cert.subject and pki.issued_by(cert, root.cert)
    assert pki.same_public_key(keys.p384, cert)
    root_ski = ext(root.cert, x509.SubjectKeyIdentifier).value
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski.digest
    assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        keys.p384.public_key())
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW


def test_sign_intermediate_takes_no_extension_from_the_csr(root: Root, keys: Keys) -> None:
    leaf_usage = x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                               data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                               encipher_only=False, decipher_only=False)
    csr_pem = build_csr(keys.p256, usage=leaf_usage, extra=[
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        x509.OCSPNoCheck(),
        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
    ])
    csr = check_intermediate_csr(csr_pem, CLUSTER, POLICY)  # extra extensions are no reason to refuse
    cert = sign_intermediate(root, csr, CLUSTER, POLICY, NOW)
    assert {e.oid for e in cert.extensions} == {
        ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER, ExtensionOID.SUBJECT_ALTERNATIVE_NAME}
    assert ext(cert, x509.KeyUsage).value == CA_USAGE


def test_sign_intermediate_names_the_caller_not_the_csr(root: Root, keys: Keys) -> None:
    csr = x509.load_pem_x509_csr(build_csr(keys.p256, cluster="eu-west-1"))
    cert = sign_intermediate(root, csr, CLUSTER, POLICY, NOW)
    assert cert.subject == pki.intermediate_subject(CLUSTER)


@pytest.mark.parametrize("root_life, max_ttl, requested, life", [
    pytest.param(3650 * DAY, 30 * DAY, 7 * DAY, 7 * DAY, id="request-shortest"),
    pytest.param(3650 * DAY, 30 * DAY, 90 * DAY, 30 * DAY, id="policy-caps-request"),
    pytest.param(3650 * DAY, 30 * DAY, None, 30 * DAY, id="nothing-requested"),
    pytest.param(3650 * DAY, 30 * DAY, dt.timedelta(0), 30 * DAY, id="zero-requested"),
    pytest.param(10 * DAY, 30 * DAY, 20 * DAY, 10 * DAY, id="root-ends-first"),
    pytest.param(10 * DAY, 30 * DAY, None, 10 * DAY, id="root-ends-before-policy"),
])
def test_sign_intermediate_lives_the_shortest_of_request_policy_and_root(
        keys: Keys, root_life: dt.timedelta, max_ttl: dt.timedelta, requested: dt.timedelta | None,
        life: dt.timedelta) -> None:
    short_root = Root(new_root(keys.p256, TD, NOW, root_life), keys.p256)
    cert = intermediate(short_root, keys.p256, policy=IssuancePolicy(TD, max_ttl), ttl=requested)
    assert cert.not_valid_after_utc == NOW + life


@pytest.mark.parametrize("signing_root, now, why", [
    pytest.param(lambda r: Root(r.cert, None), NOW, "the signing root's key is not available on the hub",
                 id="root-key-unknown"),
    pytest.param(lambda r: r, NOW + 3651 * DAY, "the signing root has expired; rotate the root", id="root-expired"),
])
def test_sign_intermediate_refuses(root: Root, keys: Keys, signing_root: Callable[[Root], Root], now: dt.datetime,
                                   why: str) -> None:
    csr = check_intermediate_csr(pki.intermediate_csr(keys.p256, CLUSTER, TD), CLUSTER, POLICY)
    with pytest.raises(CSRRefused) as refused:
        sign_intermediate(signing_root(root), csr, CLUSTER, POLICY, now)
    assert str(refused.value).startswith(why)


# check_intermediate_csr ----------------------------------------------------------------------------------------

def subject(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


ORG, L, CN, OU = NameOID.ORGANIZATION_NAME, NameOID.LOCALITY_NAME, NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME
WRONG_KEY = "the CSR's key is neither EC P-256/P-384 nor RSA 4096"
NAMES_ONLY_URI = ("the CSR asks for DNS, IP or e-mail names; an intermediate CA carries only the trust domain's "
                  "SPIFFE URI")


@pytest.mark.parametrize("make, why", [
    pytest.param(lambda k: build_csr(k.p256, cluster="eu-west-1"),
                 "the CSR names eu-west-1 (subject L), but the caller is cluster us-east-1; a cluster gets only its "
                 "own intermediate signed", id="other-cluster"),
    pytest.param(lambda k: build_csr(k.p256, subject=subject((ORG, "meshfleet"), (CN, "Intermediate CA"))),
                 "the CSR names no cluster (subject L), but the caller is cluster us-east-1; a cluster gets only its "
                 "own intermediate signed", id="no-cluster"),
    pytest.param(lambda k: build_csr(k.p256, subject=subject((ORG, "meshfleet"), (L, "us-east-1"), (L, "eu-west-1"),
                                                             (CN, "Intermediate CA"))),
                 "the CSR names us-east-1, eu-west-1 (subject L), but the caller is cluster us-east-1; a cluster "
                 "gets only its own intermediate signed", id="two-clusters"),
    pytest.param(lambda k: build_csr(k.p256, subject=subject((ORG, "meshfleet"), (OU, "payments"), (L, "us-east-1"),
                                                             (CN, "Intermediate CA"))),
                 "the CSR's subject is CN=Intermediate CA,L=us-east-1,OU=payments,O=meshfleet, expected "
                 "CN=Intermediate CA,L=us-east-1,O=meshfleet", id="extra-subject-attribute"),
    pytest.param(lambda k: build_csr(k.p256, subject=subject((ORG, "meshfleet"), (L, "us-east-1"), (CN, "root"))),
                 "the CSR's subject is CN=root,L=us-east-1,O=meshfleet, expected "
                 "CN=Intermediate CA,L=us-east-1,O=meshfleet", id="other-common-name"),
    pytest.param(lambda k: build_csr(k.p256, basic=x509.BasicConstraints(ca=True, path_length=1)),
                 "the CSR asks for path length 1; the TrustPolicy allows at most 0", id="pathlen-1"),
    pytest.param(lambda k: build_csr(k.p256, basic=x509.BasicConstraints(ca=True, path_length=None)),
                 "the CSR asks for path length no limit; the TrustPolicy allows at most 0", id="no-pathlen-limit"),
    pytest.param(lambda k: build_csr(k.p256, basic=x509.BasicConstraints(ca=False, path_length=None)),
                 "the CSR asks for CA:FALSE; an intermediate must be a CA", id="ca-false"),
    pytest.param(lambda k: build_csr(k.p256, basic=None),
                 "the CSR does not ask for a CA certificate (no basicConstraints)", id="no-basic-constraints"),
    pytest.param(lambda k: build_csr(k.p256, san=[x509.UniformResourceIdentifier("spiffe://other.local")]),
                 "the CSR asks for spiffe://other.local; the mesh's trust domain is spiffe://cluster.local",
                 id="other-trust-domain"),
    pytest.param(lambda k: build_csr(k.p256, san=[*TD_SAN, x509.UniformResourceIdentifier("spiffe://other.local")]),
                 "the CSR asks for spiffe://cluster.local, spiffe://other.local; the mesh's trust domain is "
                 "spiffe://cluster.local", id="two-trust-domains"),
    pytest.param(lambda k: build_csr(k.p256, san=[x509.UniformResourceIdentifier(spiffe_id(TD, "default", "sa"))]),
                 "the CSR asks for spiffe://cluster.local/ns/default/sa/sa; the mesh's trust domain is "
                 "spiffe://cluster.local", id="workload-uri"),
    pytest.param(lambda k: build_csr(k.p256, san=None),
                 "the CSR asks for no SPIFFE URI; the mesh's trust domain is spiffe://cluster.local", id="no-san"),
    pytest.param(lambda k: build_csr(k.p256, san=[*TD_SAN, x509.DNSName("istiod.istio-system.svc")]),
                 NAMES_ONLY_URI, id="dns-san"),
    pytest.param(lambda k: build_csr(k.p256, san=[*TD_SAN, x509.RFC822Name("ca@example.com")]),
                 NAMES_ONLY_URI, id="email-san"),
    pytest.param(lambda k: corrupt_signature(build_csr(k.p256)),
                 "the CSR's signature does not verify against its public key", id="bad-signature"),
    pytest.param(lambda k: build_csr(k.rsa2048), WRONG_KEY, id="rsa-2048"),
    pytest.param(lambda k: build_csr(k.p521), WRONG_KEY, id="ec-p521"),
    pytest.param(lambda k: build_csr(ed25519.Ed25519PrivateKey.generate()), WRONG_KEY, id="ed25519"),
])
def test_check_intermediate_csr_refuses(keys: Keys, make: Callable[[Keys], bytes], why: str) -> None:
    with pytest.raises(CSRRefused) as refused:
        check_intermediate_csr(make(keys), CLUSTER, POLICY)
    assert str(refused.value) == why


@pytest.mark.parametrize("garbage", [
    pytest.param(b"", id="empty"),
    pytest.param(b"not a CSR", id="text"),
    pytest.param(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", id="bad-der"),
])
def test_check_intermediate_csr_refuses_what_is_not_a_pem_csr(garbage: bytes) -> None:
    with pytest.raises(CSRRefused, match=r"^the CSR is not a PEM PKCS#10 request: "):
        check_intermediate_csr(garbage, CLUSTER, POLICY)


def test_check_intermediate_csr_refuses_a_certificate_in_place_of_a_csr(root: Root) -> None:
    with pytest.raises(CSRRefused, match=r"^the CSR is not a PEM PKCS#10 request: "):
        check_intermediate_csr(pki.cert_pem(root.cert), CLUSTER, POLICY)


def test_check_intermediate_csr_refuses_a_malformed_extension(keys: Keys) -> None:
    malformed = x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"\x01\x02\x03")
    csr_pem = (x509.CertificateSigningRequestBuilder().subject_name(pki.intermediate_subject(CLUSTER))
               .add_extension(malformed, critical=True).sign(keys.p256, pki.signature_hash(keys.p256))
               .public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CSRRefused):
        check_intermediate_csr(csr_pem, CLUSTER, POLICY)


@pytest.mark.parametrize("algorithm", pki.ALGORITHMS)
def test_check_intermediate_csr_accepts_the_agents_csr(keys: Keys, algorithm: str) -> None:
    csr = check_intermediate_csr(pki.intermediate_csr(keys.of(algorithm), CLUSTER, TD), CLUSTER, POLICY)
    assert csr.subject == pki.intermediate_subject(CLUSTER)
    assert pki.algorithm_of(csr.public_key()) == algorithm


def test_check_intermediate_csr_accepts_a_shorter_path_than_allowed(keys: Keys) -> None:
    policy = IssuancePolicy(TD, max_ttl=30 * DAY, path_length=1)
    csr = check_intermediate_csr(pki.intermediate_csr(keys.p256, CLUSTER, TD, path_length=0), CLUSTER, policy)
    assert ext(csr, x509.BasicConstraints).value == CA_TRUE


# intermediate_renewal -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def old_new(keys: Keys) -> tuple[Root, Root]:
    """Two roots of the trust domain, as during a root rotation."""
    return (Root(new_root(keys.p256, TD, NOW, 3650 * DAY, "old root"), keys.p256),
            Root(new_root(keys.p384, TD, NOW, 3650 * DAY, "new root"), keys.p384))


def hundred_days(root: Root, keys: Keys) -> x509.Certificate:
    """An intermediate issued at NOW for 100 days (its life is 100 days and the clock skew)."""
    return intermediate(root, keys.p256, policy=IssuancePolicy(TD, 100 * DAY))


def share_left(cert: x509.Certificate, at: dt.datetime) -> float:
    return (cert.not_valid_after_utc - at) / (cert.not_valid_after_utc - cert.not_valid_before_utc)


@pytest.mark.parametrize("jitter, share", [
    pytest.param(0.0, 0.15, id="jitter-0"),
    pytest.param(0.5, 0.20, id="jitter-half"),
    pytest.param(0.999999, 0.25, id="jitter-1"),
])
def test_intermediate_renewal_falls_due_in_the_jittered_window(old_new: tuple[Root, Root], keys: Keys,
                                                               jitter: float, share: float) -> None:
    old, _ = old_new
    cert = hundred_days(old, keys)
    signer = pki.fingerprint(old.cert)
    at = pki.renewal_time(cert, 20, jitter)
    assert share_left(cert, at) == pytest.approx(share, abs=1e-6)
    before = pki.intermediate_renewal(cert, [old.cert], signer, at - dt.timedelta(seconds=1), 20, jitter)
    assert before == pki.Renewal(False, "", at)
    due = pki.intermediate_renewal(cert, [old.cert], signer, at, 20, jitter)
    assert due == pki.Renewal(True, f"renewal due: {100 * share:.0f} % of the intermediate's life left", at)


def test_intermediate_renewal_is_not_due_early(old_new: tuple[Root, Root], keys: Keys) -> None:
    old, new = old_new
    cert = hundred_days(old, keys)
    for now in (NOW - CLOCK_SKEW, NOW, NOW + DAY, NOW + 74 * DAY):
        renewal = pki.intermediate_renewal(cert, [old.cert, new.cert], pki.fingerprint(old.cert), now, 20, 0.999)
        assert not renewal.due and renewal.reason == "", now


@pytest.mark.parametrize("case, why", [
    pytest.param("expired", "the intermediate expired at 2030-04-11T00:00:00+00:00", id="expired"),
    pytest.param("not-yet-valid", "the intermediate is not valid before 2029-12-31T23:55:00+00:00",
                 id="not-yet-valid"),
    pytest.param("not-chained", "the intermediate is not chained to any root of the trust bundle", id="not-chained"),
    pytest.param("not-by-signer", "the intermediate was issued by root {old}, the signing root is now {new}",
                 id="issued-by-a-non-signer-root"),
])
def test_intermediate_renewal_is_due_at_once(old_new: tuple[Root, Root], keys: Keys, case: str, why: str) -> None:
    old, new = old_new
    cert = hundred_days(old, keys)
    roots, signer, now = [old.cert, new.cert], pki.fingerprint(old.cert), NOW + DAY
    if case == "expired":
        now = cert.not_valid_after_utc
    elif case == "not-yet-valid":
        now = cert.not_valid_before_utc - CLOCK_SKEW - dt.timedelta(seconds=1)
    elif case == "not-chained":
        roots = [new.cert]
    else:
        signer = pki.fingerprint(new.cert)
    renewal = pki.intermediate_renewal(cert, roots, signer, now, 20, 0.5)
    assert renewal == pki.Renewal(True, why.format(old=pki.fingerprint(old.cert)[:12],
                                                   new=pki.fingerprint(new.cert)[:12]))


def test_renewal_time_comes_earlier_as_jitter_grows(old_new: tuple[Root, Root], keys: Keys) -> None:
    cert = hundred_days(old_new[0], keys)
    times = [pki.renewal_time(cert, 20, j / 100) for j in range(100)]
    assert all(a > b for a, b in itertools.pairwise(times))
    assert cert.not_valid_before_utc < times[-1] < times[0] < cert.not_valid_after_utc


# real mutual TLS (tests/meshtls.py) ----------------------------------------------------------------------------

@pytest.fixture
def ca() -> TestCA:
    return TestCA()


def workloads(ca: TestCA, trusted: Sequence[Root], **cacerts: Cacerts) -> dict[str, Workload]:
    """One workload per keyword (its name and service account) under those cacerts, trusting `trusted`."""
    return {name: ca.workload(c, trusted, spiffe_id(TD, "default", name)) for name, c in cacerts.items()}


def test_issue_workload_signs_a_leaf_as_istiod_does(ca: TestCA) -> None:
    root = ca.root()
    cacerts = ca.intermediate(CLUSTER, root, TD)
    w = ca.workload(cacerts, [root], spiffe_id(TD, "bookinfo", "reviews"))
    leaf, *chain = pki.load_certs(w.chain_pem)
    assert [pki.cert_pem(c) for c in chain] == [cacerts.ca_cert_pem, pki.cert_pem(root.cert)]
    assert w.trust_pem == pki.cert_pem(root.cert)
    assert pki.issued_by(leaf, chain[0])
    assert ext(leaf, x509.BasicConstraints).value == x509.BasicConstraints(ca=False, path_length=None)
    assert leaf.subject == x509.Name([])
    usage = ext(leaf, x509.KeyUsage).value
    assert (usage.digital_signature, usage.key_encipherment, usage.key_cert_sign) == (True, True, False)
    assert list(ext(leaf, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    san = ext(leaf, x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/bookinfo/sa/reviews")]
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == (
        ext(chain[0], x509.SubjectKeyIdentifier).value.digest)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(hours=1) + CLOCK_SKEW
    assert pki.algorithm_of(pki.load_key(w.key_pem)) == "EC-P256"


@pytest.mark.parametrize("bad_id", [
    pytest.param("spiffe://cluster.local", id="trust-domain-only"),
    pytest.param("spiffe://cluster.local/ns/default", id="no-service-account"),
    pytest.param("https://cluster.local/ns/default/sa/x", id="not-spiffe"),
    pytest.param("spiffe://cluster.local/ns/a/sa/b/c", id="trailing-path"),
])
def test_issue_workload_refuses_what_is_no_workload_spiffe_id(ca: TestCA, bad_id: str) -> None:
    root = ca.root()
    with pytest.raises(ValueError, match="is not a workload SPIFFE ID"):
        issue_workload(*ca.intermediate(CLUSTER, root, TD), pki.cert_pem(root.cert), bad_id)


def test_issue_workload_refuses_a_key_of_another_ca(ca: TestCA) -> None:
    root = ca.root()
    a, b = ca.intermediate(CLUSTER, root, TD), ca.intermediate("eu-west-1", root, TD)
    with pytest.raises(ValueError, match=r"ca-key\.pem does not match ca-cert\.pem"):
        issue_workload(a.ca_cert_pem, b.ca_key_pem, a.cert_chain_pem, pki.cert_pem(root.cert),
                       spiffe_id(TD, "default", "x"))


def test_clusters_under_one_root_all_talk(ca: TestCA) -> None:
    root = ca.root()
    mesh = workloads(ca, [root], east=ca.intermediate("us-east-1", root, TD),
                     west=ca.intermediate("eu-west-1", root, TD), south=ca.intermediate("ap-south-1", root, TD))
    assert handshake_matrix(mesh) == {}


def test_a_workload_of_a_foreign_ca_is_refused_as_client_and_as_server(ca: TestCA) -> None:
    root, foreign_root = ca.root(), ca.root()
    mesh = workloads(ca, [root], east=ca.intermediate("us-east-1", root, TD),
                     west=ca.intermediate("eu-west-1", root, TD))
    # The foreign workload trusts both roots, so every refusal below is the mesh side's own.
    mesh |= workloads(ca, [root, foreign_root], foreign=ca.intermediate("us-east-1", foreign_root, TD))
    failures = handshake_matrix(mesh)
    assert set(failures) == {("foreign", "east"), ("foreign", "west"), ("east", "foreign"), ("west", "foreign")}
    for (client, _), why in failures.items():
        side = "server refused the client" if client == "foreign" else "client refused the server"
        assert why.startswith(f"{side}: {VERIFY_FAILED}"), why


def test_a_bundle_of_old_and_new_roots_accepts_workloads_under_either(ca: TestCA) -> None:
    old, new = ca.root(), ca.root()
    mesh = workloads(ca, [old, new], east_old=ca.intermediate("us-east-1", old, TD),
                     west_old=ca.intermediate("eu-west-1", old, TD), east_new=ca.intermediate("us-east-1", new, TD),
                     west_new=ca.intermediate("eu-west-1", new, TD))
    assert handshake_matrix(mesh) == {}


def test_a_peer_trusting_only_the_new_root_refuses_workloads_under_the_old(ca: TestCA) -> None:
    """Why the old root leaves the bundles only once no workload is under it any more."""
    old, new = ca.root(), ca.root()
    mesh = workloads(ca, [old, new], under_old=ca.intermediate("us-east-1", old, TD))
    mesh |= workloads(ca, [new], under_new=ca.intermediate("eu-west-1", new, TD))
    failures = handshake_matrix(mesh)
    assert set(failures) == {("under_old", "under_new"), ("under_new", "under_old")}
    assert failures["under_old", "under_new"].startswith(f"server refused the client: {VERIFY_FAILED}")
    assert failures["under_new", "under_old"].startswith(f"client refused the server: {VERIFY_FAILED}")


def test_a_renewed_intermediate_keeps_talking_to_workloads_of_the_first(ca: TestCA) -> None:
    root = ca.root()
    first, renewed = ca.intermediate(CLUSTER, root, TD), ca.intermediate(CLUSTER, root, TD)
    first_cert, renewed_cert = pki.load_certs(first.ca_cert_pem)[0], pki.load_certs(renewed.ca_cert_pem)[0]
    assert first_cert.subject == renewed_cert.subject and first_cert.issuer == renewed_cert.issuer
    assert pki.fingerprint(first_cert) != pki.fingerprint(renewed_cert) and first.ca_key_pem != renewed.ca_key_pem
    mesh = workloads(ca, [root], first=first, renewed=renewed, west=ca.intermediate("eu-west-1", root, TD))
    assert handshake_matrix(mesh) == {}


def test_an_expired_workload_certificate_is_refused(ca: TestCA) -> None:
    root = ca.root()
    cacerts = ca.intermediate(CLUSTER, root, TD)
    fresh = ca.workload(cacerts, [root], spiffe_id(TD, "default", "fresh"))
    stale = issue_workload(*cacerts, pki.cert_pem(root.cert), spiffe_id(TD, "default", "stale"),
                           now=ca.now - 2 * dt.timedelta(hours=1), ttl=dt.timedelta(minutes=30))
    assert handshake(stale, fresh) == f"server refused the client: {VERIFY_FAILED}: certificate has expired"
    assert handshake(fresh, stale) == f"client refused the server: {VERIFY_FAILED}: certificate has expired"


def test_handshake_leaves_no_thread_or_socket_behind(ca: TestCA) -> None:
    root, foreign_root = ca.root(), ca.root()
    mesh = workloads(ca, [root], a=ca.intermediate(CLUSTER, root, TD))
    mesh |= workloads(ca, [foreign_root], b=ca.intermediate(CLUSTER, foreign_root, TD))
    before = threading.active_count()
    assert handshake(mesh["a"], mesh["a"]) is None
    assert handshake(mesh["a"], mesh["b"]) is not None
    assert handshake(mesh["b"], mesh["a"]) is not None
    gc.collect()  # an unclosed socket would warn now, and warnings are errors
    assert threading.active_count() == before


def test_intermediates_under_a_root_with_a_non_sha1_key_identifier_verify(ca: TestCA) -> None:
    key = pki.generate_key("EC-P256")
    raw = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    ski = x509.SubjectKeyIdentifier(hashlib.sha256(raw).digest()[:20])  # RFC 7093 method 1
    cert = self_signed(key, ski=ski, name="corporate root",
                       not_before=ca.now - DAY, not_after=ca.now + 365 * DAY)
    assert check_root(cert, key, ca.now) is None
    root = Root(cert, key)
    east = ca.intermediate("us-east-1", root, TD)
    assert ext(pki.load_certs(east.ca_cert_pem)[0], x509.AuthorityKeyIdentifier).value.key_identifier == (
        ski.digest)
    mesh = workloads(ca, [root], east=east, west=ca.intermediate("eu-west-1", root, TD))
    assert handshake_matrix(mesh) == {}
