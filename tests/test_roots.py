"""mgmt.roots: generated roots kept in files or Secrets, supplied roots read from files or a Secret; refusals named."""

from __future__ import annotations

import base64
import datetime as dt
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from kubernetes.client import ApiClient

from meshfleet.pki import PkiError, PrivateKey, cert_pem, fingerprint, generate_key, key_pem
from mgmt.certs import Root, new_root
from mgmt.model import Meta, TrustPolicy
from mgmt.roots import FileRootStore, RootStoreError, SecretRootStore, load_supplied, secret_name
from tests.fakekube import FakeKube

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)
NAMESPACE = "meshfleet-system"


def make_root(name: str = "meshfleet root CA", validity: dt.timedelta = 10 * YEAR, algorithm: str = "EC-P256",
              now: dt.datetime = NOW) -> Root:
    key = generate_key(algorithm)
    return Root(new_root(key, "cluster.local", now, validity, name), key)


@pytest.fixture(scope="module")
def root() -> Root:
    return make_root()


@pytest.fixture(scope="module")
def other() -> Root:
    return make_root("another root")


def self_signed(key: PrivateKey, ca: bool, path_length: int | None = None) -> x509.Certificate:
    """A certificate of `key`'s own making, CA or not (what check_root must refuse comes in such shapes)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand-made")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - YEAR).not_valid_after(NOW + YEAR)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
            .sign(key, hashes.SHA256()))


def key_of(root: Root) -> bytes:
    assert root.key is not None
    return key_pem(root.key)


def same(a: Root, b: Root) -> bool:
    return a.cert == b.cert and key_of(a) == key_of(b)


# --------------------------------------------------------------------------- FileRootStore


def test_file_store_round_trip_keeps_the_key_private(tmp_path: Path, root: Root, other: Root) -> None:
    directory = tmp_path / "state" / "roots"
    store = FileRootStore(directory)
    assert store.fingerprints() == []  # no directory yet: no roots
    store.save(root)
    store.save(other)
    store.save(root)  # saving again changes nothing

    fps = sorted([fingerprint(root.cert), fingerprint(other.cert)])
    assert store.fingerprints() == fps
    assert sorted(p.name for p in directory.iterdir()) == sorted(f"{fp}.{ext}" for fp in fps for ext in ("crt", "key"))
    loaded = store.load(fingerprint(root.cert))
    assert loaded is not None and same(loaded, root)
    fp = fingerprint(root.cert)
    assert stat.S_IMODE((directory / f"{fp}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / f"{fp}.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_file_store_tightens_an_existing_directory_and_ignores_other_files(tmp_path: Path, root: Root) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "README.crt").write_text("not a root\n")
    store = FileRootStore(tmp_path)
    store.save(root)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    assert store.fingerprints() == [fingerprint(root.cert)]


def test_file_store_load_of_an_unknown_root_is_none_and_a_bad_name_an_error(tmp_path: Path, root: Root) -> None:
    store = FileRootStore(tmp_path)
    assert store.load(fingerprint(root.cert)) is None
    with pytest.raises(RootStoreError, match=r"'\.\./etc/passwd' is not a root fingerprint"):
        store.load("../etc/passwd")


def test_file_store_refuses_a_root_without_its_key(tmp_path: Path, root: Root) -> None:
    with pytest.raises(RootStoreError, match="has no key: only generated roots are stored"):
        FileRootStore(tmp_path).save(Root(root.cert, None))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("damage", "message"), [
    pytest.param(lambda crt, key, other: crt.write_bytes(b"garbage"),
                 "root certificate {crt} is not a PEM certificate bundle", id="certificate-not-pem"),
    pytest.param(lambda crt, key, other: crt.write_bytes(cert_pem(other.cert)),
                 "root certificate {crt} is root {other}, not {fp}", id="certificate-of-another-root"),
    pytest.param(lambda crt, key, other: crt.write_bytes(cert_pem(other.cert) * 2),
                 "root certificate {crt} holds 2 certificates, not one", id="two-certificates"),
    pytest.param(lambda crt, key, other: key.write_bytes(key_of(other)),
                 "root key {key} does not match the root certificate {crt}", id="key-of-another-root"),
    pytest.param(lambda crt, key, other: key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n"),
                 "root key {key} is not an unencrypted PEM private key", id="key-not-pem"),
    pytest.param(lambda crt, key, other: key.unlink(), "root key {key} is missing (its certificate {crt} is there)",
                 id="key-missing"),
])
def test_file_store_refuses_damaged_files_naming_the_path(tmp_path: Path, root: Root, other: Root, damage: Any,
                                                          message: str) -> None:
    store = FileRootStore(tmp_path)
    store.save(root)
    fp = fingerprint(root.cert)
    crt, key = tmp_path / f"{fp}.crt", tmp_path / f"{fp}.key"
    damage(crt, key, other)
    with pytest.raises(PkiError) as caught:
        store.load(fp)
    assert message.format(crt=crt, key=key, fp=fp, other=fingerprint(other.cert)) in str(caught.value)


# --------------------------------------------------------------------------- SecretRootStore


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as fake:
        yield fake


@pytest.fixture
def api(kube: FakeKube) -> Iterator[ApiClient]:
    with kube.api_client() as client:
        yield client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_secret_store_round_trip(kube: FakeKube, api: ApiClient, root: Root, other: Root) -> None:
    store = SecretRootStore(api, NAMESPACE)
    assert store.fingerprints() == []
    store.save(root)
    store.save(other)

    fp = fingerprint(root.cert)
    secret = kube.get("v1", "Secret", f"meshfleet-root-{fp[:16]}", NAMESPACE)
    assert secret is not None
    assert secret_name(fp) == secret["metadata"]["name"]
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "meshfleet",
                                            "meshfleet.io/root-fingerprint": fp[:63]}
    assert secret["metadata"]["annotations"] == {"meshfleet.io/fingerprint": fp}
    assert secret["data"] == {"tls.crt": b64(cert_pem(root.cert)), "tls.key": b64(key_of(root))}
    assert store.fingerprints() == sorted([fp, fingerprint(other.cert)])
    loaded = store.load(fp)
    assert loaded is not None and same(loaded, root)
    assert store.load(fingerprint(make_root().cert)) is None


def test_secret_store_save_is_idempotent(kube: FakeKube, api: ApiClient, root: Root) -> None:
    store = SecretRootStore(api, NAMESPACE)
    store.save(root)
    before = kube.get("v1", "Secret", secret_name(fingerprint(root.cert)), NAMESPACE)
    kube.clear_requests()
    store.save(root)  # e.g. retried after the first answer was lost: 409 AlreadyExists, same content
    assert [(r.verb, r.resource) for r in kube.writes()] == [("create", "secrets")]  # no overwrite
    assert kube.get("v1", "Secret", secret_name(fingerprint(root.cert)), NAMESPACE) == before


def test_secret_store_never_overwrites_other_content(kube: FakeKube, api: ApiClient, root: Root,
                                                     other: Root) -> None:
    name = secret_name(fingerprint(root.cert))
    kube.put({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": name, "namespace": NAMESPACE},
              "data": {"tls.crt": b64(cert_pem(other.cert)), "tls.key": b64(key_of(other))}})
    store = SecretRootStore(api, NAMESPACE)
    with pytest.raises(RootStoreError, match=f"Secret {NAMESPACE}/{name} already exists with other content .*"
                                             f"is root {fingerprint(other.cert)}.*it is not overwritten"):
        store.save(root)
    # nor is the wrong root handed out under the name
    with pytest.raises(PkiError, match=f"tls.crt of Secret {NAMESPACE}/{name} is root {fingerprint(other.cert)}"):
        store.load(fingerprint(root.cert))


def test_secret_store_reports_the_api_servers_message(kube: FakeKube, api: ApiClient, root: Root) -> None:
    kube.fail_next("POST", "/secrets", 403, message='secrets is forbidden: User "hub" cannot create resource')
    with pytest.raises(RootStoreError, match=f"cannot create Secret {NAMESPACE}/meshfleet-root-.*: secrets is "
                                             'forbidden: User "hub" cannot create resource'):
        SecretRootStore(api, NAMESPACE).save(root)
    kube.fail_next("GET", "/secrets", 403, message="secrets is forbidden")
    with pytest.raises(RootStoreError, match=f"cannot list root Secrets in {NAMESPACE}: secrets is forbidden"):
        SecretRootStore(api, NAMESPACE).fingerprints()


# --------------------------------------------------------------------------- supplied roots


def supplied(secret_ref: tuple[str, str] | None = None, files: tuple[str, str] | None = None) -> TrustPolicy:
    return TrustPolicy(Meta("TrustPolicy", "", "mesh"), secret_ref=secret_ref, files=files, generate=False)


def write_pair(directory: Path, cert: bytes, key: bytes) -> tuple[str, str]:
    crt_path, key_path = directory / "ca.crt", directory / "ca.key"
    crt_path.write_bytes(cert)
    key_path.write_bytes(key)
    return str(crt_path), str(key_path)


def test_load_supplied_from_files(tmp_path: Path, root: Root) -> None:
    files = write_pair(tmp_path, cert_pem(root.cert), key_of(root))
    assert same(load_supplied(supplied(files=files), None, NOW), root)


def bad_pairs(root: Root, other: Root) -> dict[str, tuple[bytes, bytes, dt.datetime, str]]:
    """(certificate PEM, key PEM, now, message with {crt} and {key} for where each came from) of each mistake."""
    leaf_key = generate_key("EC-P256")
    return {
        "certificate-not-pem": (b"hello", key_of(root), NOW, "{crt} is not a PEM certificate bundle"),
        "key-not-pem": (cert_pem(root.cert), b"hello", NOW, "{key} is not an unencrypted PEM private key"),
        "key-of-another-root": (cert_pem(root.cert), key_of(other), NOW,
                                "{key} does not match the root certificate {crt}"),
        "two-certificates": (cert_pem(root.cert) + cert_pem(other.cert), key_of(root), NOW,
                             "{crt} holds 2 certificates; give the root certificate alone"),
        "not-a-ca": (cert_pem(self_signed(leaf_key, ca=False)), key_pem(leaf_key), NOW,
                     "{crt}: the root certificate is not a CA (basicConstraints CA:FALSE)"),
        "path-length-0": (cert_pem(self_signed(leaf_key, ca=True, path_length=0)), key_pem(leaf_key), NOW,
                          "{crt}: the root certificate's path length is 0"),
        "expired": (cert_pem(root.cert), key_of(root), NOW + 11 * YEAR,
                    "{crt}: the root certificate expired at " + root.cert.not_valid_after_utc.isoformat()),
        "not-yet-valid": (cert_pem(root.cert), key_of(root), NOW - YEAR,
                          "{crt}: the root certificate is not valid before "
                          + root.cert.not_valid_before_utc.isoformat()),
    }


MISTAKES = ["certificate-not-pem", "key-not-pem", "key-of-another-root", "two-certificates", "not-a-ca",
            "path-length-0", "expired", "not-yet-valid"]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_load_supplied_refuses_bad_files_naming_them(tmp_path: Path, root: Root, other: Root, mistake: str) -> None:
    cert, key, now, message = bad_pairs(root, other)[mistake]
    files = write_pair(tmp_path, cert, key)
    with pytest.raises(RootStoreError) as caught:
        load_supplied(supplied(files=files), None, now)
    assert message.format(crt=f"root certificate file {files[0]}", key=f"root key file {files[1]}") \
        in str(caught.value)


def test_load_supplied_refuses_a_missing_file(tmp_path: Path, root: Root) -> None:
    files = write_pair(tmp_path, cert_pem(root.cert), key_of(root))
    Path(files[1]).unlink()
    with pytest.raises(RootStoreError, match=f"root key file {files[1]}: cannot read it \\(No such file or directory"):
        load_supplied(supplied(files=files), None, NOW)


def put_secret(kube: FakeKube, name: str, data: dict[str, bytes]) -> None:
    kube.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "ca"},
              "data": {k: b64(v) for k, v in data.items()}})


@pytest.mark.parametrize("names", [("tls.crt", "tls.key"), ("ca.crt", "ca.key")])
def test_load_supplied_from_a_secret(kube: FakeKube, api: ApiClient, root: Root, names: tuple[str, str]) -> None:
    put_secret(kube, "root-ca", {names[0]: cert_pem(root.cert), names[1]: key_of(root)})
    assert same(load_supplied(supplied(secret_ref=("ca", "root-ca")), api, NOW), root)


def test_load_supplied_prefers_the_tls_pair_of_a_cert_manager_secret(kube: FakeKube, api: ApiClient, root: Root,
                                                                     other: Root) -> None:
    # cert-manager writes its issuer's certificate as ca.crt beside the tls.* pair, and no ca.key
    put_secret(kube, "root-ca", {"tls.crt": cert_pem(root.cert), "tls.key": key_of(root),
                                 "ca.crt": cert_pem(other.cert)})
    assert same(load_supplied(supplied(secret_ref=("ca", "root-ca")), api, NOW), root)


@pytest.mark.parametrize("mistake", MISTAKES)
def test_load_supplied_refuses_a_bad_secret_naming_it(kube: FakeKube, api: ApiClient, root: Root, other: Root,
                                                      mistake: str) -> None:
    cert, key, now, message = bad_pairs(root, other)[mistake]
    put_secret(kube, "root-ca", {"tls.crt": cert, "tls.key": key})
    with pytest.raises(RootStoreError) as caught:
        load_supplied(supplied(secret_ref=("ca", "root-ca")), api, now)
    assert message.format(crt="tls.crt of root Secret ca/root-ca", key="tls.key of root Secret ca/root-ca") \
        in str(caught.value)


@pytest.mark.parametrize(("data", "message"), [
    pytest.param({"tls.crt": b"x"}, "root Secret ca/root-ca holds tls.crt; a root needs tls.crt with tls.key or "
                 "ca.crt with ca.key", id="key-missing"),
    pytest.param({"ca.key": b"x"}, "root Secret ca/root-ca holds ca.key; a root needs", id="certificate-missing"),
    pytest.param({}, "root Secret ca/root-ca holds no data; a root needs", id="empty"),
])
def test_load_supplied_names_what_a_secret_lacks(kube: FakeKube, api: ApiClient, data: dict[str, bytes],
                                                 message: str) -> None:
    put_secret(kube, "root-ca", data)
    with pytest.raises(RootStoreError, match=message):
        load_supplied(supplied(secret_ref=("ca", "root-ca")), api, NOW)


def test_load_supplied_refuses_a_missing_or_forbidden_secret(kube: FakeKube, api: ApiClient) -> None:
    policy = supplied(secret_ref=("ca", "root-ca"))
    with pytest.raises(RootStoreError) as caught:
        load_supplied(policy, api, NOW)
    assert str(caught.value) == "root Secret ca/root-ca: not found"
    kube.fail_next("GET", "/secrets/root-ca", 403, message='secrets "root-ca" is forbidden')
    with pytest.raises(RootStoreError) as caught:
        load_supplied(policy, api, NOW)
    assert str(caught.value) == 'root Secret ca/root-ca: secrets "root-ca" is forbidden'


def test_a_secret_ref_needs_kubernetes_mode() -> None:
    with pytest.raises(RootStoreError) as caught:
        load_supplied(supplied(secret_ref=("ca", "root-ca")), None, NOW)
    assert str(caught.value) == "secretRef needs the hub in Kubernetes mode; use root.files in embedded mode"


def test_a_generated_root_is_not_supplied() -> None:
    with pytest.raises(RootStoreError, match="TrustPolicy mesh generates its root; there is no supplied root"):
        load_supplied(TrustPolicy(Meta("TrustPolicy", "", "mesh")), None, NOW)
