"""Gateway probes: verdicts with a failure threshold, when a report is worth sending, real TCP connects on
127.0.0.1, and an agent telling a real hub what it can reach."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from agent.probes import Attempt, Probes, Result, Target, targets_of
from agent.probing import Lookups, Prober, report_of, tcp_connect
from agent.settings import AgentSettings
from agent.syncing import Agent
from meshfleet.cli import main
from meshfleet.demo import EXAMPLES, DemoCluster, Fleet, demo_clusters
from meshfleet.intents import Backend, ClusterIntent, ClusterRef, Port, ServiceIntent
from meshfleet.v1 import hub_pb2
from mgmt.serving import Hub
from tests.fleets import run, until
from tests.test_layering import test_pure_cores_import_no_io as check_pure_core

ME = ClusterRef("us-east-1", "us-east", "us-east-1a", "net-us-east")
WEST = ClusterRef("eu-west-1", "eu-west", "eu-west-1a", "net-eu-west")
SOUTH = ClusterRef("ap-south-1", "ap-south", "ap-south-1a", "net-ap-south")
GW = Target("eu-west-1", "10.0.0.1", 15443)
OK = Attempt(True, "", 7)
REFUSED = Attempt(False, "Connection refused")
SLOW = Attempt(False, "no connection within 1 s")


def test_the_core_does_no_io() -> None:
    check_pure_core("agent/probes.py")


# verdicts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold, attempts, verdicts", [
    pytest.param(2, [OK], [True], id="one-success"),
    pytest.param(2, [REFUSED, REFUSED], [None, False], id="undecided-until-threshold"),
    pytest.param(2, [OK, REFUSED, REFUSED], [True, True, False], id="one-failure-is-not-enough"),
    pytest.param(2, [OK, REFUSED, OK, REFUSED], [True, True, True, True], id="failures-must-be-consecutive"),
    pytest.param(2, [OK, REFUSED, REFUSED, OK], [True, True, False, True], id="one-success-recovers"),
    pytest.param(1, [OK, REFUSED, OK], [True, False, True], id="threshold-1"),
    pytest.param(3, [OK, SLOW, REFUSED, SLOW, SLOW], [True, True, True, False, False], id="threshold-3"),
])
def test_reachability_follows_the_failure_threshold(threshold: int, attempts: list[Attempt],
                                                    verdicts: list[bool | None]) -> None:
    probes = Probes(threshold)
    probes.retarget([GW])
    seen: list[bool | None] = []
    for attempt in attempts:
        probes.record(GW, attempt)
        results = probes.results()
        seen.append(results[0].reachable if results else None)
    assert seen == verdicts


def test_a_result_carries_the_last_error_when_unreachable_and_the_last_latency() -> None:
    probes = Probes(2)
    probes.retarget([GW])
    probes.record(GW, OK)
    probes.record(GW, REFUSED)
    assert probes.results() == (Result(GW, True, "", 7),)  # reachable: no error, though the last attempt failed
    probes.record(GW, SLOW)
    assert probes.results() == (Result(GW, False, "no connection within 1 s", 7),)
    probes.record(GW, Attempt(True, "", 3))
    assert probes.results() == (Result(GW, True, "", 3),)


def test_a_threshold_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Probes(0)


def test_retarget_keeps_the_state_of_kept_targets_only() -> None:
    other = Target("ap-south-1", "10.0.0.2", 15443)
    probes = Probes(2)
    probes.retarget([GW, other])
    probes.record(GW, OK)
    probes.record(other, OK)
    moved = dataclasses.replace(GW, address="10.0.0.9")
    probes.retarget([moved, other])
    assert probes.results() == (Result(other, True, "", 7),)  # a new address is a gateway not yet probed
    probes.record(GW, REFUSED)  # a late attempt at a dropped target changes nothing
    assert probes.targets == (moved, other)
    assert probes.results() == (Result(other, True, "", 7),)


# when to send -----------------------------------------------------------------------------------

def step(probes: Probes, *attempts: tuple[Target, Attempt]) -> tuple[Result, ...] | None:
    for target, attempt in attempts:
        probes.record(target, attempt)
    return probes.unsent()


def test_a_report_goes_out_when_a_verdict_or_a_target_changes_not_for_latency_or_error_text() -> None:
    other = Target("ap-south-1", "10.0.0.2", 15443)
    probes = Probes(2)
    probes.retarget([GW])
    assert probes.unsent() is None  # nothing decided: nothing to say
    assert step(probes, (GW, REFUSED)) is None  # still undecided
    assert step(probes, (GW, OK)) == (Result(GW, True, "", 7),)
    assert step(probes, (GW, Attempt(True, "", 90))) is None  # latency alone
    assert step(probes, (GW, REFUSED)) is None  # one failure: still reachable
    assert step(probes, (GW, REFUSED)) == (Result(GW, False, "Connection refused", 90),)
    assert step(probes, (GW, SLOW)) is None  # another cause, same verdict
    probes.retarget([GW, other])
    assert step(probes, (other, OK)) == (Result(other, True, "", 7), Result(GW, False, "no connection within 1 s", 90))
    probes.retarget([other])
    assert probes.unsent() == (Result(other, True, "", 7),)  # a target dropped
    moved = dataclasses.replace(other, port=443)
    probes.retarget([moved])
    assert step(probes, (moved, OK)) == (Result(moved, True, "", 7),)  # the address changed
    probes.retarget([])
    assert probes.unsent() == ()  # nothing left to probe: the hub hears that too
    assert probes.unsent() is None


def test_a_new_stream_hears_the_results_again_but_not_an_empty_report() -> None:
    probes = Probes(2)
    probes.forget_sent()
    assert probes.unsent() is None
    probes.retarget([GW])
    assert step(probes, (GW, OK)) is not None
    assert probes.unsent() is None
    probes.forget_sent()
    assert probes.unsent() == (Result(GW, True, "", 7),)


# targets ----------------------------------------------------------------------------------------

def service(name: str, *backends: Backend) -> ServiceIntent:
    return ServiceIntent("bookinfo", name, (Port("http", 9080, "HTTP"),), backends)


def test_targets_are_the_remote_gateways_one_per_cluster() -> None:
    intent = ClusterIntent(ME, services=(
        service("reviews", Backend(ME, "eastwest.us-east-1", 15443), Backend(WEST, "gw-b.eu-west-1", 15443),
                Backend(SOUTH, "gw.ap-south-1", 15443)),
        # another service knows eu-west-1's gateway by another address: the first in sorted order wins
        service("ratings", Backend(WEST, "gw-a.eu-west-1", 15443), Backend(WEST, "gw-b.eu-west-1", 15443)),
        service("details", Backend(ClusterRef("no-gateway", "r", "z", "n"), "", 15443),
                Backend(ClusterRef("no-port", "r", "z", "n"), "gw.no-port", 0)),
    ))
    assert targets_of(intent) == (Target("ap-south-1", "gw.ap-south-1", 15443),
                                  Target("eu-west-1", "gw-a.eu-west-1", 15443))
    swapped = dataclasses.replace(intent, services=tuple(reversed(intent.services)))
    assert targets_of(swapped) == targets_of(intent)
    assert targets_of(ClusterIntent(ME)) == ()


def test_the_report_message_carries_every_field() -> None:
    report = report_of([Result(GW, False, "Connection refused", 12)])
    assert report == hub_pb2.ProbeReport(results=[hub_pb2.ProbeResult(
        cluster="eu-west-1", address="10.0.0.1", port=15443, reachable=False, error="Connection refused",
        latency_ms=12)])


# real connects ----------------------------------------------------------------------------------

async def listener() -> tuple[asyncio.Server, int, list[bytes]]:
    """A TCP server on 127.0.0.1 that records what each connection sent before it closed."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read())  # until the prober closes its side
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_listening_gateway_is_reached_and_the_connection_closed(host: str) -> None:
    async def scenario() -> None:
        server, port, received = await listener()
        async with server:
            attempt = await tcp_connect(host, port, 2.0)
            assert attempt.ok and attempt.error == ""
            assert 0 <= attempt.latency_ms < 2000
            await until(lambda: received == [b""], 2.0, "the probe to close its connection without sending")
    run(scenario())


def test_a_closed_port_is_refused() -> None:
    attempt = run(tcp_connect("127.0.0.1", free_port(), 2.0))
    assert attempt == Attempt(False, "Connection refused")


def test_a_connect_that_never_completes_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(*args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio, "open_connection", never)
    started = time.monotonic()
    attempt = run(tcp_connect("127.0.0.1", 15443, 0.1))
    assert attempt == Attempt(False, "no connection within 0.1 s")
    assert time.monotonic() - started < 1.0


def fake_getaddrinfo(calls: list[str], answer: Callable[[], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        return await answer()
    return getaddrinfo


def test_a_hung_name_lookup_is_not_started_again_while_it_runs() -> None:
    async def scenario() -> None:
        calls: list[str] = []
        release = asyncio.Event()

        async def slow() -> Any:
            await release.wait()
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

        server, port, _ = await listener()
        async with server:
            lookups = Lookups(fake_getaddrinfo(calls, slow))
            for _ in range(3):  # three rounds while the resolver hangs: one lookup
                attempt = await tcp_connect("gw.example", port, 0.05, lookups)
                assert attempt == Attempt(False, "no connection within 0.05 s")
            assert calls == ["gw.example"]
            release.set()
            assert (await tcp_connect("gw.example", port, 1.0, lookups)).ok
            assert calls == ["gw.example"]  # the next round joined the lookup that was running
            assert (await tcp_connect("gw.example", port, 1.0, lookups)).ok
            assert calls == ["gw.example", "gw.example"]  # a finished lookup is not cached
    run(scenario())


def test_a_name_that_does_not_resolve_says_so() -> None:
    async def scenario() -> Attempt:
        async def unknown() -> Any:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        return await tcp_connect("gw.example", 15443, 1.0, Lookups(fake_getaddrinfo([], unknown)))
    assert run(scenario()) == Attempt(False, "cannot resolve the address: Name or service not known")


# rounds -----------------------------------------------------------------------------------------

def test_a_round_probes_every_target_at_once_and_a_probe_bug_is_a_failed_attempt() -> None:
    other = Target("ap-south-1", "10.0.0.2", 15443)
    running: list[str] = []
    peak = [0]

    async def connect(target: Target, within: float) -> Attempt:
        running.append(target.cluster)
        peak[0] = max(peak[0], len(running))
        await asyncio.sleep(0.01)
        running.remove(target.cluster)
        if target == other:
            raise RuntimeError("boom")
        return Attempt(True, "", 1)

    async def scenario() -> None:
        now = [100.0]
        prober = Prober(5.0, 1.0, 1, connect=connect, clock=lambda: now[0])
        assert prober.due_in() == 0
        await prober.round([GW, other])
        assert peak[0] == 2 and prober.rounds == 1
        assert prober.report() == report_of([Result(other, False, "probe error: RuntimeError('boom')", 0),
                                             Result(GW, True, "", 1)])
        assert prober.report() is None
        now[0] += 2.0
        assert prober.due_in() == 3.0
        now[0] += 4.0
        assert prober.due_in() == 0
    logging.getLogger("agent.probing").disabled = True  # the traceback of the staged bug is expected
    try:
        run(scenario())
    finally:
        logging.getLogger("agent.probing").disabled = False


def agent(tmp_path: Path, **settings: Any) -> Agent:
    return Agent(AgentSettings(hub="127.0.0.1:1", cluster="us-east-1", state_dir=tmp_path / "state",
                               inventory=tmp_path / "inventory.yaml", output=tmp_path / "out", **settings))


def test_the_probe_task_outlives_its_failures(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        a = agent(tmp_path, probe_interval=0.02)
        calls = [0]

        async def broken(targets: Any) -> None:
            calls[0] += 1
            raise RuntimeError("boom")

        a.prober.round = broken  # type: ignore[method-assign]
        outbox: asyncio.Queue[hub_pb2.AgentMessage] = asyncio.Queue()
        task = asyncio.create_task(a._probe(outbox))
        await until(lambda: calls[0] >= 3, 2.0, "three rounds")
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert outbox.empty()

    with caplog.at_level(logging.ERROR, "agent.syncing"):
        run(scenario())
    assert "probing the gateways of remote clusters failed" in caplog.text


# flags ------------------------------------------------------------------------------------------

AGENT = ["agent", "--hub", "127.0.0.1:1", "--cluster", "us-east-1"]


@pytest.mark.parametrize("flags, message", [
    pytest.param(["--probe-interval", "-1"], "--probe-interval must be 0 (probing off) or a positive", id="interval"),
    pytest.param(["--probe-interval", "nan"], "--probe-interval must be", id="interval-nan"),
    pytest.param(["--probe-timeout", "0"], "--probe-timeout must be a positive number of seconds", id="timeout"),
    pytest.param(["--probe-timeout", "inf"], "--probe-timeout must be", id="timeout-inf"),
    pytest.param(["--probe-failures", "0"], "--probe-failures must be at least 1", id="failures"),
])
def test_bad_probe_flags_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                                message: str) -> None:
    argv = [*AGENT, "--state-dir", str(tmp_path / "state"), "--inventory", str(tmp_path / "inv.yaml"),
            "--output", str(tmp_path / "out"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "state").exists()


def test_probe_flags_reach_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[AgentSettings] = []

    class Stub:
        def __init__(self, settings: AgentSettings, **adapters: Any) -> None:
            seen.append(settings)

        async def run(self) -> None:
            return None

    monkeypatch.setattr("agent.cli.Agent", Stub)
    base = [*AGENT, "--state-dir", str(tmp_path), "--inventory", str(tmp_path / "i"), "--output", str(tmp_path / "o")]
    assert main(base) == 0
    assert main([*base, "--probe-interval", "0", "--probe-timeout", "0.25", "--probe-failures", "4"]) == 0
    assert [(s.probe_interval, s.probe_timeout, s.probe_failures) for s in seen] == [(5.0, 1.0, 2), (0.0, 0.25, 4)]


# against a real hub -----------------------------------------------------------------------------

EAST, WEST_NAME = "us-east-1", "eu-west-1"
FAILURES = 2


class ProbingFleet(Fleet):
    """us-east-1's agent probes fast; eu-west-1's has probing off."""

    def agent_settings(self, cluster: str) -> AgentSettings:
        probing = cluster == EAST
        return dataclasses.replace(super().agent_settings(cluster), probe_interval=0.1 if probing else 0.0,
                                   probe_timeout=0.5, probe_failures=FAILURES)


def clusters_with_gateway(workdir: Path, cluster: str, port: int) -> list[DemoCluster]:
    """The first two demo clusters, `cluster`'s east-west gateway at 127.0.0.1:port."""
    out = []
    for c in demo_clusters(2, workdir):
        if c.name == cluster:
            inv = yaml.safe_load(c.inventory.read_text())
            inv["gateway"] = {"address": "127.0.0.1", "port": port}
            path = workdir / "inventories" / f"{c.name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(inv))
            c = dataclasses.replace(c, inventory=path)
        out.append(c)
    return out


@dataclasses.dataclass(frozen=True)
class Heard:
    cluster: str
    session: object
    report: hub_pb2.ProbeReport
    rounds: int  # probe rounds the sending agent had completed when the hub handled it


def test_the_hub_hears_what_an_agent_reaches_and_again_on_each_stream(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[Heard] = []
    fleets: list[Fleet] = []
    original = Hub._handle

    def spy(hub: Hub, session: Any, msg: hub_pb2.AgentMessage) -> None:
        if msg.WhichOneof("kind") == "probes":
            agent = fleets[0].agents[session.cluster]
            heard.append(Heard(session.cluster, session, msg.probes, agent.prober.rounds))
        original(hub, session, msg)

    monkeypatch.setattr(Hub, "_handle", spy)

    def west(h: Heard) -> hub_pb2.ProbeResult:
        [result] = [r for r in h.report.results if r.cluster == WEST_NAME]
        return result

    async def scenario() -> None:
        server, port, _ = await listener()
        policies = tmp_path / "policies"
        shutil.copytree(EXAMPLES / "policies", policies)
        fleet = ProbingFleet(tmp_path, clusters_with_gateway(tmp_path, WEST_NAME, port), policies,
                             heartbeat=0.5, grace=3.0)
        fleets.append(fleet)
        await fleet.start()
        try:
            assert await fleet.wait_converged(20.0), "fleet did not converge"
            east = fleet.agents[EAST]
            assert east.probe_targets == (Target(WEST_NAME, "127.0.0.1", port),)
            await until(lambda: any(west(h).reachable for h in heard), 10.0, "a report that eu-west-1 is reachable")
            first = next(h for h in heard if west(h).reachable)
            assert (first.cluster, west(first).address, west(first).port, west(first).error) == \
                (EAST, "127.0.0.1", port, "")
            assert west(first).latency_ms < 500

            # a new stream hears the current results at once, though nothing changed
            fleet.hub._refuse(fleet.hub.sessions[EAST], grpc.StatusCode.UNAVAILABLE, "test: reconnect")
            await until(lambda: heard[-1].session is not first.session, 10.0, "a report on the new stream")
            again = heard[-1]
            assert west(again).reachable and again.session is fleet.hub.sessions.get(EAST)

            # the gateway goes away: unreachable, only after FAILURES failed rounds
            server.close()
            await server.wait_closed()
            closed_at = east.prober.rounds
            await until(lambda: not west(heard[-1]).reachable, 10.0, "a report that eu-west-1 is unreachable")
            lost = heard[-1]
            assert west(lost).error == "Connection refused"
            assert lost.rounds - closed_at >= FAILURES
            # the stream carried every report: no reconnect since, and the hub still serves it
            assert lost.session is again.session is fleet.hub.sessions.get(EAST)
            assert fleet.hub.statuses[EAST].connection == "Connected"
            assert {h.cluster for h in heard} == {EAST}  # eu-west-1 probes nothing: interval 0
            assert len([h for h in heard if h.session is again.session]) == 2  # no report for unchanged results
        finally:
            await fleet.stop()
            server.close()
    run(scenario())


def test_name_lookups_run_in_threads_of_their_own() -> None:
    """A hung resolver must not take the default executor, which the agent's applies run in."""
    async def scenario() -> str:
        seen: list[str] = []
        real = socket.getaddrinfo

        def spy(*args: Any, **kwargs: Any) -> Any:
            import threading
            seen.append(threading.current_thread().name)
            return real(*args, **kwargs)

        socket.getaddrinfo = spy
        try:
            await Lookups().addresses("localhost")
        finally:
            socket.getaddrinfo = real
        return seen[0]
    assert run(scenario()).startswith("gateway-lookup")
