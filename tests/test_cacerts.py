"""The agent's plug-in CA keeper (agent/cacerts.py) with real X.509, the hub played by mgmt.certs.

Stores are checked at their boundary: files on disk in the kubelet layout, or what reached a fake
API server; a recording wrapper counts what the keeper wrote.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from google.protobuf.message import Message

from agent.cacerts import (
    CA_CERT,
    CA_KEY,
    CERT_CHAIN,
    DATA_LINK,
    FILE_NAMES,
    PENDING_KEY,
    RESTARTED_AT,
    ROOT_CERT,
    CaKeeper,
    CaMaterial,
    CaStore,
    CaStoreError,
    DirectoryCaStore,
    SecretCaStore,
)
from agent.kubeapi import Rest, RetryPolicy
from agent.render.context import CLUSTER_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from meshfleet import pki
from meshfleet.intents import TrustIntent
from meshfleet.v1 import hub_pb2
from mgmt import certs
from tests.fakekube import FakeKube

CLUSTER = "eu-west-1"
TRUST_DOMAIN = "cluster.local"
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
POLICY = certs.IssuancePolicy(TRUST_DOMAIN, max_ttl=dt.timedelta(days=365))
M = TypeVar("M", bound=Message)


class Clock:
    """A settable clock for the keeper, its stores and the fake API server."""

    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Recording:
    """A CaStore that records the sets written to, and the restarts asked of, the store it wraps."""

    def __init__(self, inner: CaStore) -> None:
        self.inner = inner
        self.describe = inner.describe
        self.written: list[CaMaterial] = []
        self.restarts = 0

    def read(self) -> CaMaterial | None:
        return self.inner.read()

    def write(self, material: CaMaterial) -> None:
        self.written.append(material)
        self.inner.write(material)

    def istio_warnings(self) -> list[str]:
        return self.inner.istio_warnings()

    def restart_istiod(self) -> None:
        self.restarts += 1
        self.inner.restart_istiod()


def new_root(name: str) -> certs.Root:
    key = pki.generate_key("EC-P256")
    return certs.Root(certs.new_root(key, TRUST_DOMAIN, T0 - dt.timedelta(days=1), dt.timedelta(days=3650), name), key)


def fp(root: certs.Root) -> str:
    return pki.fingerprint(root.cert)


def trust_of(*roots: certs.Root, signer: certs.Root | None = None, **settings: Any) -> TrustIntent:
    """The intent trusting `roots` in order, signed by `signer` (default: the first)."""
    return TrustIntent(TRUST_DOMAIN, tuple(pki.cert_pem(r.cert).decode() for r in roots),
                       fp(signer or roots[0]), **settings)


def bundle(*roots: certs.Root) -> bytes:
    return pki.bundle_pem([r.cert for r in roots])


def sign(request: hub_pb2.IntermediateRequest, root: certs.Root, now: dt.datetime = T0,
         cluster: str = CLUSTER) -> hub_pb2.IntermediateIssued:
    """The hub's answer: the CSR checked and signed by `root`, the chain the intermediate and that root."""
    csr = certs.check_intermediate_csr(request.csr_pem, cluster, POLICY)
    cert = certs.sign_intermediate(root, csr, cluster, POLICY, now, dt.timedelta(seconds=request.ttl_seconds))
    return hub_pb2.IntermediateIssued(request_id=request.request_id, certificate_pem=pki.cert_pem(cert),
                                      chain_pem=pki.cert_pem(cert) + pki.cert_pem(root.cert))


def keyless(message: M) -> M:
    """`message`, after checking it carries no private key."""
    assert b"PRIVATE KEY" not in message.SerializeToString()
    assert "PRIVATE KEY" not in str(message)
    return message


def request(keeper: CaKeeper, trust: TrustIntent | None) -> hub_pb2.IntermediateRequest:
    """Reconcile, expecting a CSR."""
    req = keeper.reconcile(trust)
    assert req is not None, keeper.report().error
    return keyless(req)


def replace_root(material: CaMaterial, root_cert: bytes) -> CaMaterial:
    return CaMaterial(material.ca_cert, material.ca_key, material.cert_chain, root_cert)


def held_cert(store: CaStore) -> x509.Certificate:
    material = store.read()
    assert material is not None
    return x509.load_pem_x509_certificate(material.ca_cert)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root_a() -> certs.Root:
    return new_root("root A")


@pytest.fixture
def store(tmp_path: Path) -> Recording:
    return Recording(DirectoryCaStore(tmp_path / "cacerts"))


@pytest.fixture
def keeper(tmp_path: Path, store: Recording, clock: Clock) -> CaKeeper:
    return CaKeeper(store, tmp_path / "state", CLUSTER, rng=lambda: 0.5, clock=clock)


def installed(keeper: CaKeeper, trust: TrustIntent, root: certs.Root) -> x509.Certificate:
    """Reconcile to `trust` and install what `root` signs; the installed certificate."""
    issued = sign(request(keeper, trust), root, keeper.clock())
    keeper.install(issued)
    assert keeper.report().error == ""
    return x509.load_pem_x509_certificate(issued.certificate_pem)


# --------------------------------------------------------------------------- asking and installing


def test_first_reconcile_asks_for_an_intermediate_whose_key_stays_private_and_pending(
        tmp_path: Path, keeper: CaKeeper, store: Recording, clock: Clock, root_a: certs.Root) -> None:
    trust = trust_of(root_a, ttl_seconds=30 * 86400)
    req = request(keeper, trust)
    pending = tmp_path / "state" / PENDING_KEY
    assert mode(pending) == 0o600
    key = pki.load_key(pending.read_bytes())
    csr = x509.load_pem_x509_csr(req.csr_pem)
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    certs.check_intermediate_csr(req.csr_pem, CLUSTER, POLICY)  # what the hub accepts
    assert req.ttl_seconds == 30 * 86400 and req.request_id
    assert store.written == []
    report = keyless(keeper.report())
    assert (list(report.bundle), report.intermediate, report.error) == ([], "", "")

    # A restarted agent asks again for the same key, under a new request id.
    clock.advance(1)
    again = request(CaKeeper(store, tmp_path / "state", CLUSTER, clock=clock), trust)
    assert again.request_id != req.request_id
    assert x509.load_pem_x509_csr(again.csr_pem).public_key() == csr.public_key()


def test_install_writes_the_set_in_the_kubelet_layout_and_the_report_names_it(
        tmp_path: Path, keeper: CaKeeper, store: Recording, root_a: certs.Root) -> None:
    trust = trust_of(root_a)
    issued = sign(request(keeper, trust), root_a)
    keeper.install(issued)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)

    directory = tmp_path / "cacerts"
    version = directory / os.readlink(directory / DATA_LINK)
    assert version.name.startswith("..") and version.is_dir() and mode(version) == 0o700
    for name in FILE_NAMES:
        assert os.readlink(directory / name) == f"{DATA_LINK}/{name}"
        assert mode(version / name) == (0o600 if name == CA_KEY else 0o644)
    assert (directory / CA_CERT).read_bytes() == pki.cert_pem(cert)
    assert pki.same_public_key(pki.load_key((directory / CA_KEY).read_bytes()), cert)
    assert (directory / CERT_CHAIN).read_bytes() == pki.cert_pem(cert) + pki.cert_pem(root_a.cert)
    assert (directory / ROOT_CERT).read_bytes() == bundle(root_a)
    assert not (tmp_path / "state" / PENDING_KEY).exists()
    assert len(store.written) == 1

    report = keyless(keeper.report())
    assert list(report.bundle) == [fp(root_a)]
    assert (report.intermediate, report.issuer) == (pki.fingerprint(cert), fp(root_a))
    assert report.not_after_unix == int(cert.not_valid_after_utc.timestamp())
    assert (report.error, list(report.warnings)) == ("", [])

    # In force: no CSR and no write; a repeated answer is not the outstanding one and is ignored.
    assert keeper.reconcile(trust) is None
    keeper.install(issued)
    assert len(store.written) == 1
    assert keyless(keeper.report()).error == ""


def test_file_modes_hold_whatever_the_umask(tmp_path: Path) -> None:
    store = DirectoryCaStore(tmp_path / "cacerts")
    previous = os.umask(0o077)  # a restrictive umask must not hide the certificates from istiod's user
    try:
        store.write(CaMaterial(b"cert", b"key", b"chain", b"roots"))
    finally:
        os.umask(previous)
    version = tmp_path / "cacerts" / DATA_LINK
    assert {name: mode(version / name) for name in FILE_NAMES} == {
        CA_CERT: 0o644, CA_KEY: 0o600, CERT_CHAIN: 0o644, ROOT_CERT: 0o644}
    assert store.read() == CaMaterial(b"cert", b"key", b"chain", b"roots")


def test_a_bundle_change_rewrites_root_cert_only_and_a_signer_change_asks_for_a_new_intermediate(
        tmp_path: Path, keeper: CaKeeper, store: Recording, root_a: certs.Root) -> None:
    root_b = new_root("root B")
    installed(keeper, trust_of(root_a), root_a)
    first = store.written[-1]

    assert keeper.reconcile(trust_of(root_a, root_b)) is None
    assert len(store.written) == 2
    assert store.written[-1] == CaMaterial(first.ca_cert, first.ca_key, first.cert_chain, bundle(root_a, root_b))
    assert [e for e in os.listdir(tmp_path / "cacerts") if e.startswith("..2")] == \
        [os.readlink(tmp_path / "cacerts" / DATA_LINK)]  # the previous version is gone
    assert keeper.reconcile(trust_of(root_a, root_b)) is None
    assert len(store.written) == 2

    # B signs now (first in the bundle): B+A is trusted at once, the intermediate from A is replaced.
    b_first = trust_of(root_b, root_a)
    req = request(keeper, b_first)
    assert store.written[-1] == replace_root(first, bundle(root_b, root_a))
    keeper.install(sign(req, root_b))
    report = keyless(keeper.report())
    assert (report.issuer, list(report.bundle), report.error) == (fp(root_b), [fp(root_b), fp(root_a)], "")

    # A retired: the intermediate from B still chains, so only root-cert.pem changes.
    assert keeper.reconcile(trust_of(root_b)) is None
    assert store.written[-1].root_cert == bundle(root_b)
    assert store.written[-1].ca_cert == store.written[-2].ca_cert


def test_a_bundle_without_the_intermediates_root_is_written_only_with_a_new_intermediate(
        keeper: CaKeeper, store: Recording, root_a: certs.Root) -> None:
    root_b = new_root("root B")
    installed(keeper, trust_of(root_a), root_a)
    req = request(keeper, trust_of(root_b))
    assert len(store.written) == 1  # root-cert.pem [B] with an intermediate from A would break the mesh
    keeper.install(sign(req, root_b))
    assert len(store.written) == 2
    written = store.written[-1]
    assert written.root_cert == bundle(root_b)
    assert pki.issued_by(x509.load_pem_x509_certificate(written.ca_cert), root_b.cert)


def test_answers_from_a_foreign_ca_or_for_another_key_are_refused_and_nothing_is_written(
        tmp_path: Path, keeper: CaKeeper, store: Recording, clock: Clock, root_a: certs.Root) -> None:
    trust = trust_of(root_a)
    req = request(keeper, trust)

    keeper.install(sign(req, new_root("foreign root")))
    report = keyless(keeper.report())
    assert "not issued by the signing root" in report.error
    assert store.written == [] and (tmp_path / "state" / PENDING_KEY).exists()

    clock.advance(31)
    req = request(keeper, trust)
    other_key = pki.intermediate_csr(pki.generate_key("EC-P256"), CLUSTER, TRUST_DOMAIN)
    keeper.install(sign(hub_pb2.IntermediateRequest(request_id=req.request_id, csr_pem=other_key), root_a))
    assert "for another key" in keyless(keeper.report()).error
    assert store.written == []

    clock.advance(31)
    req = request(keeper, trust)
    keeper.install(sign(hub_pb2.IntermediateRequest(request_id="not-asked", csr_pem=req.csr_pem), root_a))
    assert store.written == []  # an answer to no outstanding request is ignored
    keeper.install(sign(req, root_a))
    assert len(store.written) == 1 and keyless(keeper.report()).error == ""


def test_a_hub_refusal_is_reported_and_the_csr_sent_again_only_after_retry_after(
        keeper: CaKeeper, store: Recording, clock: Clock, root_a: certs.Root) -> None:
    trust = trust_of(root_a)
    first = request(keeper, trust)
    clock.advance(5)
    assert keeper.reconcile(trust) is None  # one outstanding request at a time
    keeper.install(hub_pb2.IntermediateIssued(request_id=first.request_id, error="the signing root has expired"))
    assert keyless(keeper.report()).error == "hub refused the CSR: the signing root has expired"

    clock.advance(29)
    assert keeper.reconcile(trust) is None
    assert keeper.report().error == "hub refused the CSR: the signing root has expired"
    clock.advance(1)
    second = request(keeper, trust)
    assert second.request_id != first.request_id
    assert x509.load_pem_x509_csr(second.csr_pem).public_key() == x509.load_pem_x509_csr(first.csr_pem).public_key()

    # No answer: re-sent after retry_after, or at once on a new stream.
    clock.advance(10)
    assert keeper.reconcile(trust) is None
    keeper.forget_outstanding()
    third = request(keeper, trust)
    keeper.install(sign(second, root_a))  # late answer to an older request
    assert store.written == []
    keeper.install(sign(third, root_a))
    assert len(store.written) == 1 and keeper.report().error == ""


def test_renewal_falls_due_at_the_jittered_time_drawn_once(tmp_path: Path, store: Recording, clock: Clock,
                                                           root_a: certs.Root) -> None:
    draws: list[float] = []

    def rng() -> float:
        draws.append(0.5)
        return 0.5

    keeper = CaKeeper(store, tmp_path / "state", CLUSTER, rng=rng, clock=clock)
    trust = trust_of(root_a, ttl_seconds=100 * 86400, renew_before_percent=20)
    cert = installed(keeper, trust, root_a)
    at = pki.renewal_time(cert, 20, 0.5)
    clock.now = at - dt.timedelta(seconds=1)
    assert keeper.reconcile(trust) is None
    clock.now = at + dt.timedelta(seconds=1)
    req = request(keeper, trust)
    assert len(draws) == 1
    keeper.install(sign(req, root_a, clock.now))
    assert held_cert(store) != cert and keeper.report().error == ""
    assert keeper.reconcile(trust) is None
    assert len(draws) == 2  # one draw for the new intermediate


def test_an_expired_intermediate_is_replaced_and_not_kept_under_a_new_bundle(
        keeper: CaKeeper, store: Recording, clock: Clock, root_a: certs.Root) -> None:
    cert = installed(keeper, trust_of(root_a, ttl_seconds=86400), root_a)
    clock.now = cert.not_valid_after_utc + dt.timedelta(seconds=1)
    request(keeper, trust_of(root_a, new_root("root B")))
    assert len(store.written) == 1
    assert keyless(keeper.report()).intermediate == pki.fingerprint(cert)  # still what the store holds


@pytest.mark.parametrize("spoil", [
    pytest.param(lambda m: CaMaterial(m.ca_cert, pki.key_pem(pki.generate_key("EC-P256")), m.cert_chain,
                                      m.root_cert), id="key-of-another-cert"),
    pytest.param(lambda m: CaMaterial(b"garbage", m.ca_key, m.cert_chain, m.root_cert), id="unparsable-cert"),
    pytest.param(lambda m: CaMaterial(m.ca_cert, b"", m.cert_chain, m.root_cert), id="no-key"),
])
def test_unusable_material_is_replaced(keeper: CaKeeper, store: Recording, root_a: certs.Root,
                                       spoil: Callable[[CaMaterial], CaMaterial]) -> None:
    trust = trust_of(root_a)
    installed(keeper, trust, root_a)
    material = store.read()
    assert material is not None
    store.inner.write(spoil(material))
    keeper.install(sign(request(keeper, trust), root_a))
    assert keeper.report().error == ""
    assert keeper.reconcile(trust) is None


def test_a_key_algorithm_change_asks_at_once_with_a_new_key(tmp_path: Path, keeper: CaKeeper,
                                                            root_a: certs.Root) -> None:
    request(keeper, trust_of(root_a))
    req = request(keeper, trust_of(root_a, key_algorithm="EC-P384"))
    assert pki.algorithm_of(x509.load_pem_x509_csr(req.csr_pem).public_key()) == "EC-P384"
    assert pki.algorithm_of(pki.load_key((tmp_path / "state" / PENDING_KEY).read_bytes())) == "EC-P384"


def test_without_a_trust_intent_nothing_is_asked_or_written(keeper: CaKeeper, store: Recording,
                                                            root_a: certs.Root) -> None:
    installed(keeper, trust_of(root_a), root_a)
    assert keeper.reconcile(None) is None
    assert len(store.written) == 1 and store.read() is not None  # never deleted
    assert keyless(keeper.report()).error == ""


def test_an_intent_whose_signer_is_not_trusted_is_an_error(keeper: CaKeeper, store: Recording,
                                                          root_a: certs.Root) -> None:
    assert keeper.reconcile(trust_of(root_a, signer=new_root("root B"))) is None
    assert "is not in the intent's trust bundle" in keeper.report().error
    assert keeper.reconcile(TrustIntent(TRUST_DOMAIN, ("not a certificate",), fp(root_a))) is None
    assert "not a PEM certificate bundle" in keeper.report().error
    assert store.written == []


# --------------------------------------------------------------------------- foreign material


def test_a_foreign_directory_is_never_overwritten(tmp_path: Path, keeper: CaKeeper, root_a: certs.Root) -> None:
    directory = tmp_path / "cacerts"
    directory.mkdir()
    (directory / CA_CERT).write_bytes(b"theirs")
    (directory / CA_KEY).write_bytes(b"theirs too")
    assert keeper.reconcile(trust_of(root_a)) is None
    error = keeper.report().error
    assert str(directory) in error and "meshfleet will not overwrite it" in error
    with pytest.raises(CaStoreError, match="will not overwrite"):
        DirectoryCaStore(directory).write(CaMaterial(b"a", b"b", b"c", b"d"))
    assert sorted(os.listdir(directory)) == [CA_CERT, CA_KEY]
    assert (directory / CA_CERT).read_bytes() == b"theirs"


def test_a_file_put_over_one_of_our_links_is_not_overwritten(tmp_path: Path, keeper: CaKeeper,
                                                            root_a: certs.Root) -> None:
    installed(keeper, trust_of(root_a), root_a)
    link = tmp_path / "cacerts" / ROOT_CERT
    link.unlink()
    link.write_bytes(b"someone's bundle")
    assert keeper.reconcile(trust_of(root_a, new_root("root B"))) is None
    assert f"{ROOT_CERT} that meshfleet did not write" in keeper.report().error
    assert link.read_bytes() == b"someone's bundle"


# --------------------------------------------------------------------------- Kubernetes mode


@pytest.fixture
def kube(clock: Clock) -> Iterator[FakeKube]:
    with FakeKube(now=clock) as fake:
        yield fake


@pytest.fixture
def rest(kube: FakeKube) -> Iterator[Rest]:
    with kube.api_client() as api:
        yield Rest(api, RetryPolicy(initial=0.001, maximum=0.01))


def secret(kube: FakeKube) -> dict[str, Any]:
    found = kube.get("v1", "Secret", "cacerts", "istio-system")
    assert found is not None
    return found


def istiod(env: dict[str, str] | None = None, restarted_at: str | None = None) -> dict[str, Any]:
    """An istiod Deployment; its `discovery` container comes second, as a sidecar may come first."""
    template: dict[str, Any] = {"spec": {"containers": [
        {"name": "proxy", "image": "proxy", "env": [{"name": "ISTIO_MULTIROOT_MESH", "value": "true"}]},
        {"name": "discovery", "image": "pilot", "env": [{"name": k, "value": v} for k, v in (env or {}).items()]},
    ]}}
    if restarted_at:
        template["metadata"] = {"annotations": {RESTARTED_AT: restarted_at}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"namespace": "istio-system", "name": "istiod"},
            "spec": {"template": template}}


def test_the_secret_is_written_labelled_base64_with_one_apply_per_change(
        tmp_path: Path, kube: FakeKube, rest: Rest, clock: Clock, root_a: certs.Root) -> None:
    keeper = CaKeeper(SecretCaStore(rest, CLUSTER), tmp_path / "state", CLUSTER, rng=lambda: 0.5, clock=clock)
    issued = sign(request(keeper, trust_of(root_a)), root_a)
    assert kube.writes() == []
    keeper.install(issued)
    [write] = kube.writes()
    assert (write.verb, write.path, write.query) == ("apply", "/api/v1/namespaces/istio-system/secrets/cacerts",
                                                    {"fieldManager": "meshfleet-agent", "force": "true"})
    found = secret(kube)
    assert found["type"] == "Opaque"
    assert found["metadata"]["labels"] == {MANAGED_BY_LABEL: MANAGED_BY, CLUSTER_LABEL: CLUSTER}
    data = {name: base64.b64decode(value) for name, value in found["data"].items()}
    assert sorted(data) == sorted(FILE_NAMES)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert data[CA_CERT] == pki.cert_pem(cert) and data[ROOT_CERT] == bundle(root_a)
    assert pki.same_public_key(pki.load_key(data[CA_KEY]), cert)
    assert data[CERT_CHAIN] == issued.chain_pem

    kube.clear_requests()
    assert keeper.reconcile(trust_of(root_a)) is None
    assert kube.writes() == []
    assert keeper.reconcile(trust_of(root_a, new_root("root B"))) is None
    [write] = kube.writes()
    assert write.verb == "apply"
    assert base64.b64decode(secret(kube)["data"][CA_CERT]) == data[CA_CERT]
    report = keyless(keeper.report())
    assert report.error == "" and len(report.bundle) == 2
    assert [w.split(":")[0] for w in report.warnings] == ["istiod Deployment istio-system/istiod not found"]


def test_an_api_refusal_is_the_reports_error_and_the_same_key_is_asked_for_again(
        tmp_path: Path, kube: FakeKube, rest: Rest, clock: Clock, root_a: certs.Root) -> None:
    keeper = CaKeeper(SecretCaStore(rest, CLUSTER), tmp_path / "state", CLUSTER, clock=clock)
    req = request(keeper, trust_of(root_a))
    kube.deny_admission(r"/secrets/cacerts$", "secrets in istio-system are frozen", webhook="freeze.example.com")
    keeper.install(sign(req, root_a))
    error = keyless(keeper.report()).error
    assert error.startswith("the intermediate issued by the hub was not installed: cannot write Secret "
                            "istio-system/cacerts: the API server refused: ")
    assert 'admission webhook "freeze.example.com" denied the request: secrets in istio-system are frozen' in error
    assert kube.get("v1", "Secret", "cacerts", "istio-system") is None
    assert (tmp_path / "state" / PENDING_KEY).exists()
    clock.advance(30)
    keeper.install(sign(request(keeper, trust_of(root_a)), root_a))  # the same key asked for again, installed
    assert keeper.report().error == "" and kube.get("v1", "Secret", "cacerts", "istio-system") is not None


def test_a_foreign_or_garbled_secret_is_never_overwritten(tmp_path: Path, kube: FakeKube, rest: Rest, clock: Clock,
                                                         root_a: certs.Root) -> None:
    kube.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": "istio-system", "name": "cacerts"},
              "type": "Opaque", "data": {CA_CERT: base64.b64encode(b"theirs").decode()}})
    store = SecretCaStore(rest, CLUSTER)
    keeper = CaKeeper(store, tmp_path / "state", CLUSTER, clock=clock)
    kube.clear_requests()
    assert keeper.reconcile(trust_of(root_a)) is None
    error = keeper.report().error
    assert error.startswith("Secret istio-system/cacerts exists and is not managed by meshfleet")
    assert f"label it {MANAGED_BY_LABEL}={MANAGED_BY} and {CLUSTER_LABEL}={CLUSTER}" in error
    with pytest.raises(CaStoreError, match="not managed by meshfleet"):
        store.write(CaMaterial(b"a", b"b", b"c", b"d"))
    assert kube.writes() == []
    with pytest.raises(CaStoreError, match="not managed by meshfleet"):
        SecretCaStore(rest, "other-cluster").read()

    ours = {MANAGED_BY_LABEL: MANAGED_BY, CLUSTER_LABEL: CLUSTER}
    kube.put({"apiVersion": "v1", "kind": "Secret",
              "metadata": {"namespace": "istio-system", "name": "cacerts", "labels": ours},
              "type": "Opaque", "data": {CA_CERT: "*not base64*"}})
    with pytest.raises(CaStoreError, match=f"{CA_CERT} is not base64"):
        store.read()


def test_istio_warnings_and_restart(kube: FakeKube, rest: Rest, clock: Clock) -> None:
    store = SecretCaStore(rest, CLUSTER, clock=clock)
    assert store.istio_warnings()[0].startswith("istiod Deployment istio-system/istiod not found")
    kube.put(istiod())
    [warning] = store.istio_warnings()
    assert "does not set ISTIO_MULTIROOT_MESH=true" in warning

    kube.put(istiod({"ISTIO_MULTIROOT_MESH": "true"}))
    assert store.istio_warnings() == []
    clock.advance(3600)
    store.write(CaMaterial(b"a", b"b", b"c", b"d"))  # cacerts created after istiod's pods started
    [warning] = store.istio_warnings()
    assert warning.startswith("istiod started before Secret istio-system/cacerts existed")

    clock.advance(60)
    kube.clear_requests()
    store.restart_istiod()
    [write] = kube.writes()
    assert (write.verb, write.content_type) == ("patch", "application/strategic-merge-patch+json")
    deployment = kube.get("apps/v1", "Deployment", "istiod", "istio-system")
    assert deployment is not None
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {RESTARTED_AT: clock.now.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert deployment["spec"]["template"]["spec"]["containers"][1]["name"] == "discovery"  # the rest kept
    assert store.istio_warnings() == []

    kube.delete("apps/v1", "Deployment", "istiod", "istio-system")
    with pytest.raises(CaStoreError, match="not found"):
        store.restart_istiod()


def test_the_keeper_restarts_istiod_if_asked_and_refreshes_warnings_once_a_minute(
        tmp_path: Path, kube: FakeKube, rest: Rest, clock: Clock, root_a: certs.Root) -> None:
    kube.put(istiod())
    store = Recording(SecretCaStore(rest, CLUSTER, clock=clock))
    keeper = CaKeeper(store, tmp_path / "state", CLUSTER, clock=clock)
    clock.advance(10)
    keeper.install(sign(request(keeper, trust_of(root_a, restart_istiod=True)), root_a, clock.now))
    assert store.restarts == 1
    deployment = kube.get("apps/v1", "Deployment", "istiod", "istio-system")
    assert deployment is not None
    assert RESTARTED_AT in deployment["spec"]["template"]["metadata"]["annotations"]

    def deployment_reads() -> int:
        return sum(r.method == "GET" and r.resource == "deployments" for r in kube.requests)

    kube.clear_requests()
    [warning] = keyless(keeper.report()).warnings
    assert "ISTIO_MULTIROOT_MESH=true" in warning
    clock.advance(59)
    assert len(keyless(keeper.report()).warnings) == 1
    assert deployment_reads() == 1
    clock.advance(1)
    kube.put(istiod({"ISTIO_MULTIROOT_MESH": "true"}, restarted_at=clock.now.isoformat()))
    assert list(keyless(keeper.report()).warnings) == []
    assert deployment_reads() == 2


# --------------------------------------------------------------------------- istiod restarts (restartIstiod)


class FailingRestarts(Recording):
    """A store whose istiod restarts fail until `ok` is set (e.g. RBAC forbids patching the Deployment)."""

    ok = False

    def restart_istiod(self) -> None:
        self.restarts += 1
        if not self.ok:
            raise CaStoreError("cannot restart istiod: deployments.apps \"istiod\" is forbidden")


def test_a_bundle_only_change_restarts_istiod_too(keeper: CaKeeper, store: Recording, root_a: certs.Root) -> None:
    root_b = new_root("root B")
    installed(keeper, trust_of(root_a, restart_istiod=True), root_a)
    assert store.restarts == 1
    # phase 1 of a rotation: only root-cert.pem changes, and an istiod that does not reload must see it
    assert keeper.reconcile(trust_of(root_a, root_b, restart_istiod=True)) is None
    assert store.restarts == 2
    assert keeper.reconcile(trust_of(root_a, root_b, restart_istiod=True)) is None
    assert store.restarts == 2  # nothing changed: no restart


def test_a_failed_istiod_restart_keeps_the_cluster_off_target_until_one_succeeds(
        tmp_path: Path, clock: Clock, root_a: certs.Root) -> None:
    store = FailingRestarts(DirectoryCaStore(tmp_path / "cacerts"))
    keeper = CaKeeper(store, tmp_path / "state", CLUSTER, rng=lambda: 0.5, clock=clock)
    trust = trust_of(root_a, restart_istiod=True)
    keeper.install(sign(request(keeper, trust), root_a, clock()))
    assert keeper.reconcile(trust) is None  # what the agent runs right after an install
    assert "cannot restart istiod" in keeper.report().error  # reported, so the hub does not count it as done
    store.ok = True
    assert keeper.reconcile(trust) is None
    assert keeper.report().error == ""
    restarts = store.restarts
    assert keeper.reconcile(trust) is None
    assert store.restarts == restarts


@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
def test_renewal_never_falls_before_the_certificate_starts(jitter: float, root_a: certs.Root) -> None:
    key = pki.generate_key("EC-P256")
    csr = certs.check_intermediate_csr(pki.intermediate_csr(key, CLUSTER, TRUST_DOMAIN), CLUSTER, POLICY)
    cert = certs.sign_intermediate(root_a, csr, CLUSTER, POLICY, T0, dt.timedelta(days=30))
    at = pki.renewal_time(cert, 90, jitter)  # renewBefore at its maximum
    assert cert.not_valid_before_utc < at < cert.not_valid_after_utc
