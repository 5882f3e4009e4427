"""The mesh CA end to end: a real hub and real agents on 127.0.0.1, intermediates by CSR, root rotation.

Workload certificates are issued from each cluster's plug-in CA files the way istiod would
(tests.meshtls), and real mutual-TLS handshakes run between every pair of clusters, each side
trusting its own cluster's root-cert.pem: before, during every phase of, and after a rotation.
Each grace period is cut short by hand (skip_grace) instead of slept through.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.cacerts import CA_CERT, CA_KEY, CERT_CHAIN, PENDING_KEY, ROOT_CERT
from meshfleet import pki
from meshfleet.cli import main
from meshfleet.demo import EXAMPLES, Fleet, demo_clusters
from meshfleet.intents import PROTOCOL_VERSION
from meshfleet.v1 import hub_pb2, hub_pb2_grpc
from mgmt import rotation
from mgmt.registry import Registry
from mgmt.roots import FileRootStore
from mgmt.serving import Session
from mgmt.trust import ROLLBACK, ROTATE, STATUS_KEY, TrustManager
from tests.fleets import EOF, agent_channel, mode, run, until
from tests.meshtls import TestCA, Workload, handshake_matrix, issue_workload, spiffe_id

TD = "cluster.local"
GRACE = 3600.0  # the TrustPolicy's gracePeriod below; skip_grace cuts it short
TRUST = """\
apiVersion: meshfleet.io/v1alpha1
kind: TrustPolicy
metadata:
  name: mesh
spec:
  root:
    generate:
      algorithm: EC-P256
  intermediate:
    ttl: 720h
  rotation:
    gracePeriod: 1h
"""


class Recorder:
    """Every message the hub received from agents (to assert no private key ever travels)."""

    def __init__(self, fleet: Fleet) -> None:
        self.messages: list[hub_pb2.AgentMessage] = []
        original = fleet.hub._handle

        def handle(session: Session, msg: hub_pb2.AgentMessage) -> None:
            self.messages.append(msg)
            original(session, msg)
        fleet.hub._handle = handle  # type: ignore[method-assign]

    def of(self, kind: str) -> list[hub_pb2.AgentMessage]:
        return [m for m in self.messages if m.WhichOneof("kind") == kind]


def make(workdir: Path, clusters: int = 3) -> Fleet:
    policies = workdir / "policies"
    shutil.copytree(EXAMPLES / "policies", policies)
    (policies / "trust.yaml").write_text(TRUST)
    return Fleet(workdir, demo_clusters(clusters, workdir), policies, heartbeat=0.5, grace=3.0)


def skip_grace(fleet: Fleet) -> None:
    """Let the grace period of the current step end now: as if every cluster had confirmed it GRACE s ago.

    (Moving the hub's clock instead would also date the certificates it signs in the future.)
    """
    state = fleet.hub.trust.state
    assert state is not None and state.settled_at is not None, "the step is not settled"
    fleet.hub.trust.state = dataclasses.replace(state, settled_at=state.settled_at - GRACE - 1)
    fleet.hub._trust_tick()


def cacerts_dir(fleet: Fleet, cluster: str) -> Path:
    return fleet.workdir / "agents" / cluster / "cacerts"


def workload(fleet: Fleet, cluster: str) -> Workload:
    """A fresh workload of `cluster`, from its plug-in CA files as they are now."""
    d = cacerts_dir(fleet, cluster)
    files = {n: (d / n).read_bytes() for n in (CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT)}
    return issue_workload(files[CA_CERT], files[CA_KEY], files[CERT_CHAIN], files[ROOT_CERT],
                          spiffe_id(TD, "bookinfo", f"sa-{cluster}"))


def workloads(fleet: Fleet, tag: str = "") -> dict[str, Workload]:
    return {f"{c.name}{tag}": workload(fleet, c.name) for c in fleet.clusters}


def at_target(fleet: Fleet) -> bool:
    """Every cluster reported the trust target of the current state."""
    state = fleet.hub.trust.state
    return state is not None and all(
        rotation.confirms(state, fleet.hub.trust.reports.get(c.name)) is None for c in fleet.clusters)


def roots_of(fleet: Fleet, cluster: str) -> list[str]:
    return [pki.fingerprint(c) for c in pki.load_certs((cacerts_dir(fleet, cluster) / ROOT_CERT).read_bytes())]


async def started(fleet: Fleet) -> None:
    await fleet.start()
    assert await fleet.wait_converged(20)
    await until(lambda: at_target(fleet), 20, "every cluster's intermediate installed")


def test_mtls_holds_between_every_pair_of_clusters_through_a_root_rotation(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = make(tmp_path)
        recorder = Recorder(fleet)
        await started(fleet)
        try:
            trust = fleet.hub.trust
            assert trust.state is not None
            old = trust.state.active
            before = workloads(fleet, "@before")
            assert handshake_matrix(before) == {}

            assert "root rotation started" in trust.command(ROTATE)
            fleet.hub._retrust()
            new = trust.state.incoming
            previous = before
            seen = []
            for phase in (rotation.ADDING_ROOT, rotation.REISSUING, rotation.REMOVING_OLD_ROOT):
                assert trust.state.phase == phase
                seen.append(phase)
                # mid-phase: clusters are partly there; what each holds now must still talk to the rest
                assert handshake_matrix(previous | workloads(fleet, f"@{phase}-early")) == {}
                if phase == rotation.REMOVING_OLD_ROOT:
                    await until(lambda: trust.state is not None and trust.state.phase == rotation.IDLE, 20,
                                "the old root removed everywhere")
                else:
                    await until(lambda: at_target(fleet), 20, f"every cluster at the {phase} target")
                    assert trust.state.phase == phase  # it waits for the grace period
                now = workloads(fleet, f"@{phase}")
                # workloads issued in the previous step are still in use during this one
                assert handshake_matrix(previous | now) == {}
                previous = now
                if phase != rotation.REMOVING_OLD_ROOT:
                    skip_grace(fleet)
            assert seen == [rotation.ADDING_ROOT, rotation.REISSUING, rotation.REMOVING_OLD_ROOT]

            assert (trust.state.phase, trust.state.bundle, trust.state.active) == (rotation.IDLE, (new,), new)
            for c in fleet.clusters:
                assert roots_of(fleet, c.name) == [new]
                assert trust.reports[c.name].issuer == new
            after = workloads(fleet, "@after")
            assert handshake_matrix(after) == {}
            # the old root is really gone: a workload still under it is refused by every cluster now
            stale = before["us-east-1@before"]
            for peer in after.values():
                assert handshake_matrix({"stale": stale, "peer": peer}) != {}
            # a certificate from a foreign CA is refused
            ca = TestCA()
            foreign_root = ca.root()
            stranger = ca.workload(ca.intermediate("us-east-1", foreign_root), [foreign_root],
                                   spiffe_id(TD, "bookinfo", "stranger"))
            failures = handshake_matrix(after | {"stranger": stranger})
            assert {k for k in failures if "stranger" in k} == {
                (a, b) for a in [*after, "stranger"] for b in [*after, "stranger"] if a != b and "stranger" in (a, b)}
            assert old not in trust.state.roots

            # an intermediate CSR per cluster at enrolment and one per cluster for the new root; no key ever sent
            assert len(recorder.of("csr")) == 2 * len(fleet.clusters)
            for msg in recorder.messages:
                wire = msg.SerializeToString()
                assert b"PRIVATE KEY" not in wire and b"BEGIN EC" not in wire
            # key files are 0600, and a pending key is gone once its certificate is installed
            for c in fleet.clusters:
                assert mode(cacerts_dir(fleet, c.name) / "..data" / CA_KEY) == 0o600
                assert not (fleet.workdir / "agents" / c.name / PENDING_KEY).exists()
            keys = list((fleet.workdir / "hub" / "roots").glob("*.key"))
            assert len(keys) == 2 and all(mode(k) == 0o600 for k in keys)
            doc = trust.status()
            assert doc["phase"] == rotation.IDLE and [r["state"] for r in doc["roots"]] == ["Active"]
        finally:
            await fleet.stop()
    run(scenario())


@pytest.mark.parametrize("phases", [1, 2], ids=["from-adding-root", "from-reissuing"])
def test_rollback_keeps_every_handshake_and_ends_on_the_old_root(tmp_path: Path, phases: int) -> None:
    async def scenario() -> None:
        fleet = make(tmp_path)
        await started(fleet)
        try:
            trust = fleet.hub.trust
            assert trust.state is not None
            old = trust.state.active
            trust.command(ROTATE)
            fleet.hub._retrust()
            for _ in range(phases - 1):
                await until(lambda: at_target(fleet), 20, "phase target")
                skip_grace(fleet)
            await until(lambda: at_target(fleet), 20, "phase target")
            # what workloads hold once the step is settled (the grace period lets every one of them re-fetch)
            previous = workloads(fleet, "@before-rollback")
            assert "rollback started" in trust.command(ROLLBACK)
            fleet.hub._retrust()
            fleet.hub._trust_tick()
            assert handshake_matrix(previous | workloads(fleet, "@rolling-back-early")) == {}
            while trust.state.phase != rotation.IDLE:
                await until(lambda: at_target(fleet) or (trust.state is not None
                            and trust.state.phase == rotation.IDLE), 20, "rollback step")
                now = workloads(fleet, f"@{len(trust.state.bundle)}")
                assert handshake_matrix(previous | now) == {}
                previous = now
                if trust.state.phase != rotation.IDLE:
                    skip_grace(fleet)
            assert (trust.state.bundle, trust.state.active) == ((old,), old)
            for c in fleet.clusters:
                assert roots_of(fleet, c.name) == [old]
            assert handshake_matrix(workloads(fleet)) == {}
        finally:
            await fleet.stop()
    run(scenario())


def test_a_cluster_that_is_away_holds_the_rotation_until_it_is_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = make(tmp_path)
        await started(fleet)
        try:
            trust = fleet.hub.trust
            await fleet.stop_agent("ap-south-1")
            await until(lambda: "ap-south-1" not in fleet.hub.sessions, 5, "the agent gone")
            trust.command(ROTATE)
            fleet.hub._retrust()
            fleet.hub._trust_tick()
            await until(lambda: set(trust.waiting) == {"ap-south-1"}, 20, "the others at the target")
            assert trust.state is not None and trust.state.phase == rotation.ADDING_ROOT
            assert "away, holding the rotation" in trust.waiting["ap-south-1"]
            assert "ap-south-1" in fleet.hub.trust.status()["waiting"]
            fleet.start_agent("ap-south-1")
            await until(lambda: at_target(fleet), 20, "the agent back and caught up")
            assert trust.waiting == {}
        finally:
            await fleet.stop()
    run(scenario())


def test_a_restarted_hub_resumes_the_rotation_where_it_stood(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = make(tmp_path)
        await started(fleet)
        trust = fleet.hub.trust
        trust.command(ROTATE)
        fleet.hub._retrust()
        await until(lambda: at_target(fleet), 20, "AddingRoot target")
        skip_grace(fleet)
        assert trust.state is not None and trust.state.phase == rotation.REISSUING
        state = trust.state
        await fleet.stop()

        registry = Registry(tmp_path / "hub")
        try:
            resumed = TrustManager(registry, FileRootStore(tmp_path / "hub" / "roots"))
            assert resumed.state == state
            assert set(resumed.reports) == {c.name for c in fleet.clusters}
        finally:
            registry.close()

        # the whole fleet again, on the same state: the rotation goes on to the end
        again = make_again(tmp_path)
        await again.start()
        try:
            assert again.hub.trust.state is not None and again.hub.trust.state.phase == rotation.REISSUING
            assert again.hub.trust.state.bundle == state.bundle
            await until(lambda: at_target(again), 20, "ReissuingIntermediates target after restart")
            skip_grace(again)
            await until(lambda: again.hub.trust.state is not None and again.hub.trust.state.phase == rotation.IDLE,
                        20, "rotation complete")
            assert handshake_matrix(workloads(again)) == {}
        finally:
            await again.stop()
    run(scenario())


def make_again(workdir: Path) -> Fleet:
    return Fleet(workdir, demo_clusters(3, workdir), workdir / "policies", heartbeat=0.5, grace=3.0)


def test_intermediates_renew_before_expiry_without_breaking_handshakes(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = make(tmp_path)
        await started(fleet)
        try:
            before = workloads(fleet, "@first")
            issued = {c.name: fleet.hub.trust.reports[c.name].intermediate for c in fleet.clusters}
            signed = fleet.hub.trust.signed
            # 90 % of the 720 h life later, every agent's keeper finds its renewal due on its next tick; once it
            # holds a new intermediate its clock is the real one again (the hub signs at real time)
            later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=0.9 * 720)

            def clock_of(cluster: str) -> Callable[[], dt.datetime]:
                def now() -> dt.datetime:
                    current = pki.load_certs((cacerts_dir(fleet, cluster) / CA_CERT).read_bytes())[0]
                    return later if pki.fingerprint(current) == issued[cluster] else dt.datetime.now(dt.UTC)
                return now
            for name, agent in fleet.agents.items():
                agent.ca.clock = clock_of(name)
            await until(lambda: all(fleet.hub.trust.reports[n].intermediate not in ("", old)
                                    for n, old in issued.items()), 20, "every intermediate renewed")
            assert fleet.hub.trust.signed == signed + len(fleet.clusters)
            assert handshake_matrix(before | workloads(fleet, "@renewed")) == {}
        finally:
            await fleet.stop()
    run(scenario())


def _csr(cluster: str, trust_domain: str = TD, path_length: int = 0,
         corrupt: Callable[[bytes], bytes] | None = None) -> bytes:
    pem = pki.intermediate_csr(pki.generate_key("EC-P256"), cluster, trust_domain, path_length)
    return corrupt(pem) if corrupt else pem


def _flip_signature(pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(Encoding.DER))
    der[-3] ^= 0x01  # inside the signature's last integer: still parses, no longer verifies
    body = base64.encodebytes(bytes(der)).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE REQUEST-----\n"


@pytest.mark.parametrize(("csr", "expected"), [
    pytest.param(lambda: _csr("eu-west-1"), "the caller is cluster us-east-1", id="another-clusters-csr"),
    pytest.param(lambda: _csr("us-east-1", path_length=1), "asks for path length 1", id="longer-path"),
    pytest.param(lambda: _csr("us-east-1", trust_domain="evil.example"), "spiffe://evil.example",
                 id="other-trust-domain"),
    pytest.param(lambda: _csr("us-east-1", corrupt=_flip_signature), "signature does not verify",
                 id="invalid-signature"),
    pytest.param(lambda: b"not a csr", "not a PEM PKCS#10 request", id="garbage"),
])
def test_the_hub_refuses_csrs_it_must_not_sign_over_the_real_stream(tmp_path: Path, csr: Callable[[], bytes],
                                                                     expected: str) -> None:
    async def scenario() -> None:
        fleet = make(tmp_path)
        await started(fleet)
        try:
            await fleet.stop_agent("us-east-1")
            signed = fleet.hub.trust.signed
            async with agent_channel(fleet, "us-east-1") as channel:
                call = hub_pb2_grpc.HubStub(channel).Sync()
                await call.write(hub_pb2.AgentMessage(hello=hub_pb2.Hello(
                    cluster="us-east-1", protocol_version=PROTOCOL_VERSION)))
                await call.write(hub_pb2.AgentMessage(csr=hub_pb2.IntermediateRequest(
                    request_id="r1", csr_pem=csr(), ttl_seconds=3600)))
                answer: Any = None
                while answer is None:
                    msg = await asyncio.wait_for(call.read(), 10)
                    assert msg is not EOF
                    if msg.WhichOneof("kind") == "certificate":
                        answer = msg.certificate
                call.cancel()
            assert answer.request_id == "r1"
            assert not answer.certificate_pem and expected in answer.error
            assert fleet.hub.trust.signed == signed
            # the stream stays usable: a refused CSR is an answer, not an error of the stream
        finally:
            await fleet.stop()
    run(scenario())


def test_a_csr_for_the_callers_own_cluster_is_signed_with_the_policy_limits(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = make(tmp_path)
        await started(fleet)
        try:
            await fleet.stop_agent("us-east-1")
            async with agent_channel(fleet, "us-east-1") as channel:
                call = hub_pb2_grpc.HubStub(channel).Sync()
                await call.write(hub_pb2.AgentMessage(hello=hub_pb2.Hello(
                    cluster="us-east-1", protocol_version=PROTOCOL_VERSION)))
                await call.write(hub_pb2.AgentMessage(csr=hub_pb2.IntermediateRequest(
                    request_id="r2", csr_pem=_csr("us-east-1"), ttl_seconds=10 * 365 * 86400)))
                while True:
                    msg = await asyncio.wait_for(call.read(), 10)
                    assert msg is not EOF
                    if msg.WhichOneof("kind") == "certificate":
                        break
                call.cancel()
            cert = pki.load_certs(msg.certificate.certificate_pem)[0]
            life = cert.not_valid_after_utc - cert.not_valid_before_utc
            assert life <= dt.timedelta(hours=720) + pki.CLOCK_SKEW  # capped at the policy's TTL, not 10 years
        finally:
            await fleet.stop()
    run(scenario())


def test_without_a_trust_policy_no_ca_is_managed(tmp_path: Path) -> None:
    async def scenario() -> None:
        policies = tmp_path / "policies"
        shutil.copytree(EXAMPLES / "policies", policies)
        (policies / "trust.yaml").unlink()
        fleet = Fleet(tmp_path, demo_clusters(2, tmp_path), policies, heartbeat=0.5, grace=3.0)
        await fleet.start()
        try:
            assert await fleet.wait_converged(20)
            await asyncio.sleep(0.3)
            assert fleet.hub.trust.intent() is None and fleet.hub.trust.reports == {}
            for c in fleet.clusters:
                assert not cacerts_dir(fleet, c.name).exists()
        finally:
            await fleet.stop()
    run(scenario())


def test_certs_commands_drive_the_running_hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "hub")

    async def scenario() -> None:
        fleet = make(tmp_path)
        await started(fleet)
        try:
            loop = asyncio.get_running_loop()

            def cli(*args: str) -> int:
                return main(["certs", *args, "--state-dir", state, "--wait", "10"])

            def saved_phase() -> str | None:  # the status document follows at the next status flush
                return (fleet.hub.registry.get_meta(STATUS_KEY) or {}).get("phase")
            await until(lambda: saved_phase() == rotation.IDLE, 5, "the status document in hub.db")
            assert await loop.run_in_executor(None, cli, "rollback") == 1
            assert "no root rotation is under way; nothing to roll back" in capsys.readouterr().err
            assert await loop.run_in_executor(None, cli, "rotate-root") == 0
            assert "root rotation started" in capsys.readouterr().out
            assert fleet.hub.trust.state is not None and fleet.hub.trust.state.phase == rotation.ADDING_ROOT
            await until(lambda: at_target(fleet), 20, "AddingRoot target")
            await until(lambda: saved_phase() == rotation.ADDING_ROOT and not fleet.hub._trust_dirty, 5,
                        "the status document in hub.db")
            assert main(["certs", "status", "--state-dir", state]) == 0
            text = capsys.readouterr().out
            assert "phase: AddingRoot" in text and "Incoming" in text and "grace period ends in" in text
            assert main(["certs", "status", "--state-dir", state, "-o", "json"]) == 0
            doc = json.loads(capsys.readouterr().out)
            assert set(doc["clusters"]) == {c.name for c in fleet.clusters}
            assert all(c["confirms"] for c in doc["clusters"].values())
            assert await loop.run_in_executor(None, cli, "rotate-root") == 1
            assert "already under way" in capsys.readouterr().err
            assert await loop.run_in_executor(None, cli, "rollback") == 0
            assert "rollback started" in capsys.readouterr().out
        finally:
            await fleet.stop()
    run(scenario())
    # no hub running: the request is queued, and the command says so with exit code 3
    registry = Registry(tmp_path / "hub")
    try:
        registry.set_meta(STATUS_KEY, {**registry.get_meta(STATUS_KEY), "phase": rotation.IDLE})
    finally:
        registry.close()
    capsys.readouterr()
    assert main(["certs", "rotate-root", "--state-dir", state, "--wait", "0.2"]) == 3
    assert "is it running?" in capsys.readouterr().err
    assert main(["certs", "rotate-root", "--state-dir", state, "--wait", "0.2"]) == 1
    assert "another certs request is queued" in capsys.readouterr().err
    assert main(["certs", "status", "--state-dir", str(tmp_path / "nowhere")]) == 1
    assert "no hub state" in capsys.readouterr().err
