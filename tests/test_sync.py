"""Hub and agents over real gRPC with real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.syncing import Agent, AgentFatal
from meshfleet import jointokens
from meshfleet.cli import main
from meshfleet.demo import EXAMPLES, Fleet
from meshfleet.intents import PROTOCOL_VERSION
from meshfleet.v1 import hub_pb2
from mgmt import identities
from mgmt.enrollment import add_cluster, issue_token
from mgmt.serving import Hub
from tests.fleets import (
    EOF,
    agent_channel,
    bootstrap_channel,
    make_fleet,
    mode,
    rescan,
    run,
    running_fleet,
    stub,
    tree,
    until,
)

REVIEWS = """\
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata:
  name: reviews-split
  namespace: bookinfo
spec:
  destination:
    service: reviews
  route:
    - cluster: us-east-1
      weight: {east}
    - cluster: eu-west-1
      weight: {west}
"""


def csr_pem(cluster: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cluster)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


async def register(fleet_hub_channel: grpc.aio.Channel, cluster: str, token: str) -> hub_pb2.RegisterResponse:
    credential = jointokens.parse(token).credential if token.startswith("mft1.") else token
    response: hub_pb2.RegisterResponse = await stub(fleet_hub_channel).Register(
        hub_pb2.RegisterRequest(cluster=cluster, token=credential, csr_pem=csr_pem(cluster)), timeout=10)
    return response


async def in_sync_stream(fleet: Fleet, channel: grpc.aio.Channel, cluster: str
                         ) -> grpc.aio.StreamStreamCall[hub_pb2.AgentMessage, hub_pb2.HubMessage]:
    """A hand-driven Sync stream of `cluster`'s identity, hello sent with the current version applied."""
    call: grpc.aio.StreamStreamCall[hub_pb2.AgentMessage, hub_pb2.HubMessage] = stub(channel).Sync()
    await call.write(hub_pb2.AgentMessage(hello=hub_pb2.Hello(
        cluster=cluster, protocol_version=PROTOCOL_VERSION, applied_version=fleet.hub.intents[cluster].version)))
    return call


def test_bootstrap_issues_identity_and_keeps_keys_private(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            for c in fleet.clusters:
                state = tmp_path / "agents" / c.name
                assert mode(state / "agent.key") == 0o600
                cert = x509.load_pem_x509_certificate((state / "agent.crt").read_bytes())
                assert identities.cluster_of(cert) == c.name
                record = fleet.hub.registry.cluster(c.name)
                assert record is not None and record.cert_fingerprint == identities.fingerprint(cert)
                # the key never left: the certificate carries the agent's own public key
                key = serialization.load_pem_private_key((state / "agent.key").read_bytes(), None)
                assert cert.public_key() == key.public_key()
            for name in ("ca.key", "server.key", "hub.db"):
                assert mode(tmp_path / "hub" / name) == 0o600
    run(scenario())


def test_register_refuses_reused_expired_unknown_and_garbage_tokens(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            hub = fleet.hub
            state = hub.settings.state_dir
            add_cluster(hub.registry, state, "late", "us-east", "us-east-1b", "net-us-east")
            expired = issue_token(hub.registry, state, "late", ttl=0.01)
            other = issue_token(hub.registry, state, "late")
            await asyncio.sleep(0.05)
            cases = {
                "reused": ("us-east-1", fleet.tokens["us-east-1"], "already used"),
                "expired": ("late", str(expired.token), "expired"),
                "garbage": ("late", "garbage", "malformed bootstrap token"),
                "unknown": ("late", "0123456789abcdef." + "A" * 43, "unknown bootstrap token"),
                "wrong-secret": ("late", f"{other.token.token_id}." + "B" * 43, "unknown bootstrap token"),
                "other-cluster": ("eu-west-1", str(other.token), "issued for cluster 'late'"),
            }
            async with bootstrap_channel(fleet) as channel:
                for name, (cluster, token, message) in cases.items():
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await register(channel, cluster, token)
                    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
                    assert message in (err.value.details() or ""), (name, err.value.details())
                # a refused attempt burns nothing: the right token still works, once
                resp = await register(channel, "late", str(other.token))
                cert = x509.load_pem_x509_certificate(resp.certificate_pem)
                assert identities.cluster_of(cert) == "late"
                with pytest.raises(grpc.aio.AioRpcError, match="already used"):
                    await register(channel, "late", str(other.token))
    run(scenario())


def test_register_refuses_bad_csr(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path, clusters=1) as fleet:
            hub = fleet.hub
            add_cluster(hub.registry, hub.settings.state_dir, "late", "us-east", "us-east-1b", "net")
            token = issue_token(hub.registry, hub.settings.state_dir, "late")
            async with bootstrap_channel(fleet) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub(channel).Register(hub_pb2.RegisterRequest(
                        cluster="late", token=token.token.credential, csr_pem=b"not a csr"))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "CSR" in (err.value.details() or "")
                # the token survives a refused CSR
                await register(channel, "late", str(token.token))
    run(scenario())


def test_sync_without_client_certificate_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path, clusters=1) as fleet:
            async with bootstrap_channel(fleet) as channel:  # server-TLS port: no client cert
                call = stub(channel).Sync()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    # the hub refuses before reading: the write itself may already see the status
                    await call.write(hub_pb2.AgentMessage(hello=hub_pb2.Hello(cluster="us-east-1",
                                                                             protocol_version=PROTOCOL_VERSION)))
                    await call.read()
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # the mutual-TLS port does not complete a handshake without a client certificate
            ca = (fleet.hub.settings.state_dir / "ca.crt").read_bytes()
            async with grpc.aio.secure_channel(f"127.0.0.1:{fleet.hub.port}",
                                               grpc.ssl_channel_credentials(ca)) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    call = stub(channel).Sync(timeout=5)
                    await call.write(hub_pb2.AgentMessage(hello=hub_pb2.Hello(cluster="us-east-1")))
                    await call.read()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    run(scenario())


def test_certificate_from_a_foreign_ca_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path, clusters=1) as fleet:
            now = dt.datetime.now(dt.UTC)
            foreign = identities.new_authority(now)
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
                   .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
            cert = identities.sign_cluster_csr(foreign, csr, "us-east-1", now, dt.timedelta(days=1))
            creds = grpc.ssl_channel_credentials(
                (fleet.hub.settings.state_dir / "ca.crt").read_bytes(),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
                cert.public_bytes(serialization.Encoding.PEM))
            async with grpc.aio.secure_channel(f"127.0.0.1:{fleet.hub.port}", creds) as channel:
                call = stub(channel).Sync(timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call.write(hub_pb2.AgentMessage(hello=hub_pb2.Hello(cluster="us-east-1")))
                    await call.read()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "us-east-1" in fleet.hub.sessions  # the real agent's stream is untouched
    run(scenario())


@pytest.mark.parametrize("message, code, text", [
    pytest.param(hub_pb2.AgentMessage(hello=hub_pb2.Hello(cluster="eu-west-1", protocol_version=PROTOCOL_VERSION)),
                 grpc.StatusCode.PERMISSION_DENIED, "cannot sync as 'eu-west-1'", id="hello-as-other-cluster"),
    pytest.param(hub_pb2.AgentMessage(hello=hub_pb2.Hello(cluster="us-east-1", protocol_version="2.0")),
                 grpc.StatusCode.FAILED_PRECONDITION, "protocol version '2.0' not supported", id="unknown-major"),
    pytest.param(hub_pb2.AgentMessage(heartbeat=hub_pb2.Heartbeat()),
                 grpc.StatusCode.INVALID_ARGUMENT, "first message on Sync must be hello", id="no-hello"),
])
def test_sync_refuses_wrong_identity_or_protocol(tmp_path: Path, message: hub_pb2.AgentMessage,
                                                 code: grpc.StatusCode, text: str) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            before = dict(fleet.hub.sessions)
            async with agent_channel(fleet, "us-east-1") as channel:
                call = stub(channel).Sync()
                await call.write(message)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    while True:
                        msg = await call.read()
                        assert msg is EOF or msg.WhichOneof("kind") != "intent", "intent leaked"
                        if msg is EOF:
                            break
                assert err.value.code() == code
                assert text in (err.value.details() or "")
            assert fleet.hub.sessions == before
    run(scenario())


def test_discovery_for_another_cluster_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            discovery_before = fleet.hub.discovery["eu-west-1"]
            await fleet.stop_agent("us-east-1")
            async with agent_channel(fleet, "us-east-1") as channel:
                call = await in_sync_stream(fleet, channel, "us-east-1")
                await call.write(hub_pb2.AgentMessage(discovery=hub_pb2.DiscoveryReport(
                    cluster="eu-west-1", gateway=hub_pb2.Gateway(address="evil.example", port=15443))))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    while await call.read() is not EOF:
                        pass
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "cannot report for 'eu-west-1'" in (err.value.details() or "")
            assert fleet.hub.discovery["eu-west-1"] == discovery_before
    run(scenario())


def test_policy_change_reaches_every_agent_exactly_once_per_version(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            policy = tmp_path / "policies" / "reviews-split.yaml"
            for east, west in ((70, 30), (60, 40), (50, 50)):
                policy.write_text(REVIEWS.format(east=east, west=west))
                await rescan(fleet)
                assert await fleet.wait_converged(10.0)
                for c in fleet.clusters:
                    vs = (fleet.output(c.name) / "bookinfo" / "virtualservice-reviews-global.yaml").read_text()
                    assert f"weight: {east}" in vs and f"weight: {west}" in vs
            await asyncio.sleep(1.0)  # several heartbeats: nothing more may arrive
            for c in fleet.clusters:
                received = fleet.agents[c.name].received
                assert received, c.name
                dupes = [v for v, n in Counter(received).items() if n > 1]
                assert not dupes, f"{c.name} received {dupes} more than once"
                assert received[-1] == fleet.hub.intents[c.name].version
    run(scenario())


def test_nack_text_is_visible_in_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> None:
        fleet = make_fleet(tmp_path)
        # someone else's file where the agent of eu-west-1 would write: it must not be overwritten
        theirs = fleet.output("eu-west-1") / "bookinfo" / "virtualservice-reviews-global.yaml"
        theirs.parent.mkdir(parents=True)
        theirs.write_text("# hand-written, not meshfleet's\n")
        await fleet.start()
        try:
            await until(lambda: bool(fleet.hub.statuses["eu-west-1"].nack_error), what="a NACK")
            assert "refusing to overwrite" in fleet.hub.statuses["eu-west-1"].nack_error
            assert theirs.read_text() == "# hand-written, not meshfleet's\n"
            fleet.hub._flush_status()
            assert main(["status", "--state-dir", str(tmp_path / "hub")]) == 0
            out = capsys.readouterr().out
            line = next(ln for ln in out.splitlines() if ln.startswith("eu-west-1"))
            assert "refusing to overwrite" in line and "virtualservice-reviews-global.yaml" in line
            # after the NACK the hub backs off instead of hammering the agent
            pushes = len(fleet.agents["eu-west-1"].received)
            await asyncio.sleep(0.5)
            assert len(fleet.agents["eu-west-1"].received) <= pushes + 1
            # the others are unaffected
            assert all(fleet.hub.statuses[c].acked_version == fleet.hub.intents[c].version
                       for c in ("us-east-1", "ap-south-1"))
        finally:
            await fleet.stop()
    run(scenario())


def test_hub_restart_agents_reconnect_without_reregistering_or_reapplying(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            hub = fleet.hub
            registered = {c.name: hub.registry.cluster(c.name).registered_at  # type: ignore[union-attr]
                          for c in fleet.clusters}
            received = {c: list(a.received) for c, a in fleet.agents.items()}
            before = {c.name: tree(fleet.output(c.name)) for c in fleet.clusters}
            await hub.stop(grace=0)
            await until(lambda: not any(a.connected.is_set() for a in fleet.agents.values()), what="disconnect")
            fleet.hub = restarted_hub(hub)
            await fleet.hub.start()
            await until(lambda: len(fleet.hub.sessions) == 3, within=15, what="reconnect")
            assert await fleet.wait_converged(10)
            await asyncio.sleep(0.5)
            for c in fleet.clusters:
                record = fleet.hub.registry.cluster(c.name)
                assert record is not None and record.registered_at == registered[c.name]
                assert fleet.agents[c.name].received == received[c.name], "intent re-sent after hub restart"
                assert tree(fleet.output(c.name)) == before[c.name]
                assert fleet.hub.statuses[c.name].connection == "Connected"
    run(scenario())


def test_agent_restart_with_hub_down_leaves_output_untouched(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            name = "eu-west-1"
            applied = fleet.agents[name].applied_version
            before = tree(fleet.output(name))
            assert before
            await fleet.hub.stop(grace=0)
            await fleet.stop_agent(name)
            agent = fleet.start_agent(name)
            await asyncio.sleep(1.5)  # several reconnect attempts against a dead hub
            assert not agent.connected.is_set()
            assert agent.applied_version == applied
            assert tree(fleet.output(name)) == before
    run(scenario())


def test_malformed_policy_file_is_reported_and_previous_intent_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            versions = {c: i.version for c, i in fleet.hub.intents.items()}
            received = {c: len(a.received) for c, a in fleet.agents.items()}
            policy = tmp_path / "policies" / "reviews-split.yaml"
            policy.write_text(REVIEWS.format(east=80, west=20).replace("weight: 20", "weigth: 20"))
            await rescan(fleet)
            assert fleet.hub.source is not None
            errors = [str(e) for e in fleet.hub.source.errors]
            assert any(e.startswith("reviews-split.yaml:13:") and "weigth" in e for e in errors), errors
            assert {c: i.version for c, i in fleet.hub.intents.items()} == versions
            await asyncio.sleep(0.3)
            assert {c: len(a.received) for c, a in fleet.agents.items()} == received
            problems = fleet.hub.registry.get_meta("policy_problems")
            assert any("weigth" in e for e in problems["source_errors"])
    run(scenario())


def test_lost_agent_goes_disconnected_then_unreachable_at_the_deadline(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path, heartbeat=0.2, grace=1.0) as fleet:
            st = fleet.hub.statuses["ap-south-1"]
            assert st.connection == "Connected"
            await fleet.stop_agent("ap-south-1")
            await until(lambda: st.connection == "Disconnected", within=2, what="Disconnected")
            stopped = time.monotonic()
            await until(lambda: st.connection == "Unreachable", within=3, what="Unreachable")
            assert time.monotonic() - stopped <= 1.5
            assert fleet.hub.statuses["us-east-1"].connection == "Connected"
    run(scenario())


def test_watchdog_ends_a_silent_stream(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path, heartbeat=0.2, grace=1.0) as fleet:
            await fleet.stop_agent("us-east-1")
            async with agent_channel(fleet, "us-east-1") as channel:
                call = stub(channel).Sync()
                await call.write(hub_pb2.AgentMessage(hello=hub_pb2.Hello(
                    cluster="us-east-1", protocol_version=PROTOCOL_VERSION)))
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    while await call.read() is not EOF:
                        pass
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "watchdog" in (err.value.details() or "")
                assert time.monotonic() - started < fleet.hub.settings.stream_timeout + 2
    run(scenario())


def test_removed_cluster_agent_stops_with_a_clear_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            fleet.hub.registry.remove_cluster("ap-south-1")
            fleet.hub.refresh_clusters()
            task = fleet.tasks["ap-south-1"]
            with pytest.raises(AgentFatal, match=r"removed|not registered"):
                await asyncio.wait_for(task, 10)
            del fleet.tasks["ap-south-1"]
    run(scenario())


def test_agent_without_identity_or_token_fails_clearly(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = make_fleet(tmp_path, clusters=1)
        settings = fleet.agent_settings("us-east-1")
        agent = Agent(type(settings)(**{**settings.__dict__, "token": None}))
        with pytest.raises(AgentFatal, match="no --token"):
            await agent.run()
        agent = Agent(type(settings)(**{**settings.__dict__, "token": "mft1.nope"}))
        with pytest.raises(AgentFatal, match="malformed join token"):
            await agent.run()
        fleet.hub.registry.close()
    run(scenario())


def test_malformed_discovery_report_keeps_the_previous_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            before = fleet.hub.discovery["us-east-1"]
            await fleet.stop_agent("us-east-1")
            async with agent_channel(fleet, "us-east-1") as channel:
                call = await in_sync_stream(fleet, channel, "us-east-1")
                await call.write(hub_pb2.AgentMessage(discovery=hub_pb2.DiscoveryReport(
                    cluster="us-east-1", gateway=hub_pb2.Gateway(address="gw", port=15443),
                    services=[hub_pb2.Service(namespace="Bad_NS", name="x",
                                              ports=[hub_pb2.ServicePort(name="http", number=80)])])))
                await call.write(hub_pb2.AgentMessage(heartbeat=hub_pb2.Heartbeat()))
                await until(lambda: "us-east-1" in fleet.hub.sessions, what="session")
                await asyncio.sleep(0.3)
                assert fleet.hub.discovery["us-east-1"] == before
                assert "us-east-1" in fleet.hub.sessions  # a bad report is refused, the stream stays
                call.cancel()
    run(scenario())


def restarted_hub(hub: Hub) -> Hub:
    """A new hub on the same state directory and ports (agents dial fixed addresses)."""
    return Hub(dataclasses.replace(hub.settings, listen=f"127.0.0.1:{hub.port}",
                                   bootstrap_listen=f"127.0.0.1:{hub.bootstrap_port}"))


def test_removed_and_re_added_cluster_loses_its_old_stream(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            hub = fleet.hub
            hub.registry.remove_cluster("ap-south-1")
            add_cluster(hub.registry, hub.settings.state_dir, "ap-south-1", "ap-south", "ap-south-1a", "net")
            hub.refresh_clusters()  # within one poll interval of both commands
            with pytest.raises(AgentFatal, match="removed from the hub"):
                await asyncio.wait_for(fleet.tasks.pop("ap-south-1"), 10)
            assert "ap-south-1" not in hub.sessions
            assert hub.statuses["ap-south-1"].connection == "Pending"
    run(scenario())


def test_a_refused_stream_is_closed_and_shown_disconnected(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            await fleet.stop_agent("us-east-1")
            async with agent_channel(fleet, "us-east-1") as channel:
                call = await in_sync_stream(fleet, channel, "us-east-1")
                await until(lambda: "us-east-1" in fleet.hub.sessions, what="session")
                await call.write(hub_pb2.AgentMessage(hello=hub_pb2.Hello(cluster="us-east-1")))
                with pytest.raises(grpc.aio.AioRpcError, match="hello sent twice"):
                    while await call.read() is not EOF:
                        pass
            await until(lambda: "us-east-1" not in fleet.hub.sessions, within=3, what="session closed")
            assert fleet.hub.statuses["us-east-1"].connection == "Disconnected"
    run(scenario())


def test_after_a_hub_restart_a_cluster_that_stays_away_becomes_unreachable(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path, heartbeat=0.2, grace=1.0) as fleet:
            await fleet.stop_agent("ap-south-1")
            await until(lambda: fleet.hub.statuses["ap-south-1"].connection == "Disconnected", what="Disconnected")
            await fleet.hub.stop(grace=0)
            fleet.hub = restarted_hub(fleet.hub)
            await fleet.hub.start()
            st = fleet.hub.statuses["ap-south-1"]
            await until(lambda: st.connection == "Unreachable", within=3, what="Unreachable after restart")
    run(scenario())


def test_a_policy_file_broken_while_the_hub_is_down_keeps_its_last_good_content(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_fleet(tmp_path) as fleet:
            versions = {c: i.version for c, i in fleet.hub.intents.items()}
            await fleet.hub.stop(grace=0)
            policy = tmp_path / "policies" / "reviews-split.yaml"
            policy.write_text(policy.read_text().replace("weight: 20", "weigth: 20"))
            fleet.hub = restarted_hub(fleet.hub)
            await fleet.hub.start()
            assert fleet.hub.source is not None
            assert any("weigth" in str(e) for e in fleet.hub.source.errors)
            assert {c: i.version for c, i in fleet.hub.intents.items()} == versions
            assert await fleet.wait_converged(15)
            assert (fleet.output("eu-west-1") / "bookinfo" / "virtualservice-reviews-global.yaml").exists()
    run(scenario())


# fail-static removal ---------------------------------------------------------------------------------------
PRODUCTPAGE = """\
apiVersion: meshfleet.io/v1alpha1
kind: MulticlusterService
metadata:
  name: productpage
  namespace: bookinfo
spec:
  backends:
    clusters: [us-east-1, eu-west-1]
  ports:
    - {name: http, number: 9080, protocol: HTTP}
"""
RATINGS_SERVED = ("bookinfo/serviceentry-ratings-global.yaml", "bookinfo/destinationrule-ratings-global.yaml")


def start_agent(fleet: Fleet, cluster: str, removal_grace: float, inventory: Path | None = None) -> Agent:
    """Start `cluster`'s agent with a removal grace of its own (and an inventory file of its own, if given)."""
    settings = dataclasses.replace(fleet.agent_settings(cluster), removal_grace=removal_grace)
    if inventory is not None:
        settings = dataclasses.replace(settings, inventory=inventory)
    agent = Agent(settings)
    fleet.agents[cluster] = agent
    fleet.tasks[cluster] = asyncio.create_task(agent.run(), name=f"agent-{cluster}")
    return agent


async def ratings_no_longer_served_in_ap_south(fleet: Fleet, tmp_path: Path, removal_grace: float) -> Path:
    """Converge with ap-south-1 reading a copy of its inventory, then drop ratings from it: the hub stops sending
    ap-south-1 the ratings host it served, without anyone deleting anything. Returns the inventory copy."""
    inventory = tmp_path / "ap-south-1.yaml"
    shutil.copy(EXAMPLES / "inventories" / "ap-south-1.yaml", inventory)
    await fleet.start(agents=[])
    for c in fleet.clusters:
        start_agent(fleet, c.name, removal_grace, inventory if c.name == "ap-south-1" else None)
    assert await fleet.wait_converged(20), "fleet did not converge"
    out = fleet.output("ap-south-1")
    assert all((out / f).exists() for f in RATINGS_SERVED)
    doc = yaml.safe_load(inventory.read_text())
    doc["services"] = [s for s in doc["services"] if s["name"] != "ratings"]
    inventory.write_text(yaml.safe_dump(doc))
    agent = fleet.agents["ap-south-1"]
    await until(lambda: set(RATINGS_SERVED) <= set(agent.retained), within=10, what="ratings kept in ap-south-1")
    assert await fleet.wait_converged(10)  # the push that dropped ratings was ACKed
    return inventory


@pytest.mark.slow
def test_a_deleted_multicluster_service_is_removed_at_once_everywhere(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = make_fleet(tmp_path)  # the default removal grace: 600 s
        (tmp_path / "policies" / "productpage.yaml").write_text(PRODUCTPAGE)
        await fleet.start()
        try:
            assert await fleet.wait_converged(20), "fleet did not converge"
            files = ("bookinfo/serviceentry-productpage-global.yaml",
                     "bookinfo/destinationrule-productpage-global.yaml")
            for c in fleet.clusters:
                assert all((fleet.output(c.name) / f).exists() for f in files), c.name
            (tmp_path / "policies" / "productpage.yaml").unlink()
            await rescan(fleet)
            await until(lambda: not any((fleet.output(c.name) / f).exists() for c in fleet.clusters for f in files),
                        within=10, what="productpage's objects removed from every cluster")
            assert await fleet.wait_converged(10)
            for c in fleet.clusters:
                assert (fleet.output(c.name) / "bookinfo" / "serviceentry-reviews-global.yaml").exists()
                assert fleet.agents[c.name].retained == {}
        finally:
            await fleet.stop()
    run(scenario())


@pytest.mark.slow
def test_an_object_that_leaves_the_intent_is_kept_then_removed_by_the_tick_after_the_grace(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = make_fleet(tmp_path)
        try:
            await ratings_no_longer_served_in_ap_south(fleet, tmp_path, removal_grace=1.5)
            agent, out = fleet.agents["ap-south-1"], fleet.output("ap-south-1")
            missed = min(m.since for m in agent.retained.values())  # when the push that dropped them was applied
            assert all((out / f).exists() for f in RATINGS_SERVED)  # the push dropped them, and they are still there
            received, version = list(agent.received), agent.applied_version
            await until(lambda: not agent.retained, within=10, what="ratings removed after the grace")
            assert time.time() >= missed + 1.5  # not before the grace ran out
            assert not any((out / f).exists() for f in RATINGS_SERVED)
            assert agent.received == received and agent.applied_version == version  # no push needed
            assert (out / "bookinfo" / "serviceentry-details-global.yaml").exists()
        finally:
            await fleet.stop()
    run(scenario())


@pytest.mark.slow
def test_hub_down_changes_nothing_in_any_cluster(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = make_fleet(tmp_path)
        try:
            await ratings_no_longer_served_in_ap_south(fleet, tmp_path, removal_grace=2.0)
            await fleet.hub.stop(grace=0)  # with ratings kept in ap-south-1, its grace still running
            await until(lambda: not any(a.connected.is_set() for a in fleet.agents.values()), what="disconnect")
            before = {c.name: tree(fleet.output(c.name)) for c in fleet.clusters}
            assert all(before.values())
            await asyncio.sleep(3.0)  # six heartbeat intervals, and past the removal grace
            for c in fleet.clusters:
                assert tree(fleet.output(c.name)) == before[c.name], c.name  # same bytes, same mtimes
            assert set(RATINGS_SERVED) <= set(fleet.agents["ap-south-1"].retained)
        finally:
            await fleet.stop()
    run(scenario())


@pytest.mark.slow
def test_agent_restart_with_hub_down_deletes_nothing_even_with_removals_pending(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = make_fleet(tmp_path)
        try:
            inventory = await ratings_no_longer_served_in_ap_south(fleet, tmp_path, removal_grace=1.0)
            name, out = "ap-south-1", fleet.output("ap-south-1")
            applied = fleet.agents[name].applied_version
            await fleet.hub.stop(grace=0)
            await fleet.stop_agent(name)
            before = tree(out)
            assert all(f in before for f in RATINGS_SERVED)
            await asyncio.sleep(1.2)  # the grace runs out while the agent is down
            agent = start_agent(fleet, name, removal_grace=1.0, inventory=inventory)
            assert agent.applied_version == applied  # kept objects do not void the cached intent
            await asyncio.sleep(2.0)  # several reconnect attempts against a dead hub
            assert not agent.connected.is_set()
            assert tree(out) == before
            # the hub back, with nothing new to push: that is the first sync, and what is overdue goes
            fleet.hub = restarted_hub(fleet.hub)
            await fleet.hub.start()
            await until(lambda: not any((out / f).exists() for f in RATINGS_SERVED), within=15,
                        what="overdue removals once the hub is back")
            assert agent.applied_version == applied
        finally:
            await fleet.stop()
    run(scenario())
