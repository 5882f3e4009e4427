"""The hub's mesh CA adapter (mgmt/trust.py) without a server: policies, supplied roots, commands, signing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshfleet import pki
from meshfleet.v1 import hub_pb2
from mgmt import rotation
from mgmt.certs import Root, new_root
from mgmt.model import Meta, TrustPolicy
from mgmt.registry import Registry
from mgmt.roots import FileRootStore, RootStoreError
from mgmt.rotation import RotationError
from mgmt.trust import ROLLBACK, ROTATE, TrustManager

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "hub")
    try:
        yield reg
    finally:
        reg.close()


def write_root(directory: Path, name: str) -> tuple[str, str, str]:
    """A self-signed root as PEM files; (certificate path, key path, fingerprint)."""
    key = pki.generate_key("EC-P256")
    cert = new_root(key, "cluster.local", NOW, dt.timedelta(days=365), name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(pki.cert_pem(cert))
    (directory / "ca.key").write_bytes(pki.key_pem(key))
    return str(directory / "ca.crt"), str(directory / "ca.key"), pki.fingerprint(cert)


def supplied(cert: str, key: str) -> TrustPolicy:
    return TrustPolicy(Meta("TrustPolicy", "", "mesh"), files=(cert, key), generate=False)


def manager(registry: Registry, tmp_path: Path) -> TrustManager:
    return TrustManager(registry, FileRootStore(tmp_path / "hub" / "roots"))


def test_a_generated_root_is_made_once_and_kept_across_restarts(registry: Registry, tmp_path: Path) -> None:
    policy = TrustPolicy(Meta("TrustPolicy", "", "mesh"))
    first = manager(registry, tmp_path)
    assert first.configure([policy]) is True
    assert first.state is not None and first.state.phase == rotation.IDLE
    again = manager(registry, tmp_path)
    assert again.configure([policy]) is True
    assert again.state == first.state  # not generated a second time
    assert again.intent() == first.intent()


def test_the_oldest_trust_policy_wins_and_the_other_is_named(registry: Registry, tmp_path: Path) -> None:
    old = TrustPolicy(Meta("TrustPolicy", "", "a", created="2026-01-01T00:00:00Z"))
    new = TrustPolicy(Meta("TrustPolicy", "", "b", created="2026-02-01T00:00:00Z"))
    trust = manager(registry, tmp_path)
    trust.configure([new, old])
    assert trust.policy is old
    assert trust.problems == ("TrustPolicy b is ignored: one TrustPolicy per fleet, and TrustPolicy a is older",)


def test_a_new_supplied_root_starts_a_rotation_and_its_predecessors_key_stays_usable(
        registry: Registry, tmp_path: Path) -> None:
    cert_a, key_a, fp_a = write_root(tmp_path / "a", "root A")
    trust = manager(registry, tmp_path)
    trust.configure([supplied(cert_a, key_a)])
    assert trust.state == rotation.initial(fp_a, trust.state.since if trust.state else 0)
    # the user's file now holds root B: the hub rotates to it, and A's key is still at hand for phase 1
    _, _, fp_b = write_root(tmp_path / "b", "root B")
    (tmp_path / "a" / "ca.crt").write_bytes((tmp_path / "b" / "ca.crt").read_bytes())
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    restarted = manager(registry, tmp_path)  # a restart in between: A's key no longer in memory
    restarted.configure([supplied(cert_a, key_a)])
    assert restarted.state is not None and restarted.state.phase == rotation.ADDING_ROOT
    assert (restarted.state.active, restarted.state.incoming) == (fp_a, fp_b)
    csr = pki.intermediate_csr(pki.generate_key("EC-P256"), "east", "cluster.local")
    signed = restarted.sign("east", hub_pb2.IntermediateRequest(request_id="1", csr_pem=csr, ttl_seconds=3600))
    assert signed.message.error == ""
    assert pki.issued_by(pki.load_certs(signed.message.certificate_pem)[0], pki.load_certs(
        (tmp_path / "hub" / "roots" / f"{fp_a}.crt").read_bytes())[0])
    assert oct((tmp_path / "hub" / "roots" / f"{fp_a}.key").stat().st_mode & 0o777) == "0o600"


def test_a_rolled_back_supplied_root_is_not_rotated_to_again(registry: Registry, tmp_path: Path) -> None:
    cert_a, key_a, fp_a = write_root(tmp_path / "a", "root A")
    trust = manager(registry, tmp_path)
    trust.configure([supplied(cert_a, key_a)])
    cert_b, key_b, _ = write_root(tmp_path / "b", "root B")
    trust.configure([supplied(cert_b, key_b)])
    assert trust.state is not None and trust.state.phase == rotation.ADDING_ROOT
    trust.command(ROLLBACK)
    trust.step(set(), set())  # no cluster holds an intermediate: the rollback completes
    assert trust.state == rotation.initial(fp_a, trust.state.since)
    trust.configure([supplied(cert_b, key_b)])  # the Secret or files still hold B
    assert trust.state.phase == rotation.IDLE and trust.state.active == fp_a
    assert any("was rolled back" in p for p in trust.problems)


def test_rotate_root_is_refused_for_a_supplied_root_and_failures_of_the_store_become_refusals(
        registry: Registry, tmp_path: Path) -> None:
    cert_a, key_a, _ = write_root(tmp_path / "a", "root A")
    trust = manager(registry, tmp_path)
    trust.configure([supplied(cert_a, key_a)])
    with pytest.raises(RotationError, match="supplies its root"):
        trust.command(ROTATE)
    other = Registry(tmp_path / "other")
    try:
        store = BrokenStore(tmp_path / "other" / "roots")
        generated = TrustManager(other, store)
        generated.configure([TrustPolicy(Meta("TrustPolicy", "", "mesh"))])
        store.broken = True  # e.g. the hub may not create Secrets in its namespace
        with pytest.raises(RotationError, match=r"rotate-root failed: .*forbidden"):
            generated.command(ROTATE)
        assert generated.state is not None and generated.state.phase == rotation.IDLE
    finally:
        other.close()


class BrokenStore(FileRootStore):
    broken = False

    def save(self, root: Root) -> None:
        if self.broken:
            raise RootStoreError('secrets is forbidden: cannot create resource "secrets"')
        super().save(root)


@pytest.mark.parametrize("ttl", [0, 10**15], ids=["no-ttl-asked", "absurd-ttl"])
def test_signing_caps_the_life_and_never_raises(registry: Registry, tmp_path: Path, ttl: int) -> None:
    trust = manager(registry, tmp_path)
    trust.configure([TrustPolicy(Meta("TrustPolicy", "", "mesh"), intermediate_ttl=3600.0)])
    csr = pki.intermediate_csr(pki.generate_key("EC-P256"), "east", "cluster.local")
    signed = trust.sign("east", hub_pb2.IntermediateRequest(request_id="r", csr_pem=csr, ttl_seconds=ttl))
    cert = pki.load_certs(signed.message.certificate_pem)[0]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(seconds=3600) + pki.CLOCK_SKEW
    refused = trust.sign("west", hub_pb2.IntermediateRequest(request_id="r2", csr_pem=csr))
    assert "the caller is cluster west" in refused.message.error and not refused.message.certificate_pem
