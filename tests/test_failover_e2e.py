"""Failover end to end: a real hub and six real agents (three regions, two clusters each) over mutual TLS on
127.0.0.1, each cluster's east-west gateway a real TCP port its peers probe (`Fleet(gateways=True)`).

What is checked is what reaches the surviving clusters: the ServiceEntry endpoints, DestinationRule subsets and
VirtualService weights their agents render for `reviews` (weights 30/20/20/10/10/10 by a TrafficPolicy), while
clusters, gateways and the hub go down and come back. Heartbeat 0.2 s, liveness grace 1 s: a lost cluster is
Unreachable a second after its last message.

A whole-cluster loss closes the gateway first and stops the agent once every peer reports the gateway
unreachable: the planner then sees the hub's loss and the peers' confirmation together, so the decision does
not depend on whether the probes or the liveness deadline fire first (a Partitioned event before the eviction
would be correct too, but not what these tests are about).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from kubernetes.client import CustomObjectsApi

from meshfleet.crdschemas import CRDSchemas
from meshfleet.demo import DemoCluster, Fleet
from meshfleet.intents import PROTOCOL_VERSION
from meshfleet.v1 import hub_pb2
from mgmt import evicting
from mgmt.failover import Event
from mgmt.kubewatching import PLURALS, KubePolicySource, WatchSettings
from mgmt.serving import Hub, StreamRefused
from mgmt.status import collect, render_text
from mgmt.statuswriting import PolicyStatusWriter
from tests.fakekube import FakeKube
from tests.fleets import EOF, agent_channel, run, stub, tree, until

HEARTBEAT, GRACE = 0.2, 1.0
WEIGHTS = {"us-east-1": 30, "us-east-2": 20, "eu-west-1": 20, "eu-west-2": 10, "ap-south-1": 10, "ap-south-2": 10}
NAMES = tuple(WEIGHTS)
NS, V1A1 = "bookinfo", "meshfleet.io/v1alpha1"
FP_KEY = f"FailoverPolicy/{NS}/reviews-failover"
CRDS = Path(__file__).resolve().parents[1] / "crds"
REVIEWS_FILES = tuple(f"{NS}/{kind}-reviews-global.yaml" for kind in ("serviceentry", "destinationrule",
                                                                       "virtualservice"))
INVENTORY = {"gateway": {"address": "replaced.by.the.fleet", "port": 15443},
             "services": [{"namespace": NS, "name": "reviews",
                           "ports": [{"name": "http", "number": 9080, "protocol": "HTTP"}],
                           "labels": {"app": "reviews"}, "selector": {"app": "reviews"},
                           "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}]}


def six_clusters(workdir: Path) -> list[DemoCluster]:
    """us-east-1/2, eu-west-1/2, ap-south-1/2: two zones of one network per region, each serving reviews (v1)."""
    out = []
    for name in NAMES:
        region, number = name.rsplit("-", 1)
        inventory = workdir / "inventories" / f"{name}.yaml"
        inventory.parent.mkdir(parents=True, exist_ok=True)
        inventory.write_text(yaml.safe_dump(INVENTORY))
        out.append(DemoCluster(name, region, f"{region}-{'ab'[int(number) - 1]}", f"net-{region}", inventory))
    return out


def policies(hold_down: str, peer_confirmation: bool) -> list[dict[str, Any]]:
    """The TrafficPolicy splitting reviews over all six clusters and the FailoverPolicy evicting lost ones."""
    split = {"apiVersion": V1A1, "kind": "TrafficPolicy", "metadata": {"name": "reviews-split", "namespace": NS},
             "spec": {"destination": {"service": "reviews"},
                      "route": [{"cluster": c, "weight": w} for c, w in WEIGHTS.items()]}}
    failover = {"apiVersion": V1A1, "kind": "FailoverPolicy", "metadata": {"name": "reviews-failover", "namespace": NS},
                "spec": {"destination": {"service": "reviews"}, "evictLostClusters": True,
                         "peerConfirmation": peer_confirmation, "holdDown": hold_down}}
    return [split, failover]


def new_fleet(workdir: Path, hold_down: str = "1s", peer_confirmation: bool = True,
              source: KubePolicySource | None = None) -> Fleet:
    """The six clusters with real gateways; policies from a directory, or from `source` if given."""
    directory = None
    if source is None:
        directory = workdir / "policies"
        directory.mkdir()
        for doc in policies(hold_down, peer_confirmation):
            (directory / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))
    return Fleet(workdir, six_clusters(workdir), directory, heartbeat=HEARTBEAT, grace=GRACE, source=source,
                 gateways=True)


def all_reached(fleet: Fleet) -> bool:
    """Every cluster's probe report reached the hub and says every peer's gateway is reachable."""
    return all(fleet.hub.evictions.probes.get(c) == {p: True for p in NAMES if p != c} for c in NAMES)


def all_reached_but(fleet: Fleet, lost: str) -> bool:
    """Every connected cluster's last probe report says every peer it probes is reachable (`lost`'s forgotten)."""
    probes = fleet.hub.evictions.probes
    return lost not in probes and all(all(results.values()) for results in probes.values())


async def ready(fleet: Fleet) -> None:
    """Converged, and every probe report in. (The hub's planner decides nothing for a grace period after its
    start; a loss takes a grace period to notice, so the first decision comes after that anyway.)"""
    assert await fleet.wait_converged(20), "fleet did not converge"
    await until(lambda: all_reached(fleet), within=10, what="every peer's probes reaching every gateway")


@asynccontextmanager
async def running(workdir: Path, hold_down: str = "1s", peer_confirmation: bool = True) -> AsyncIterator[Fleet]:
    fleet = new_fleet(workdir, hold_down, peer_confirmation)
    await fleet.start()
    try:
        await ready(fleet)
        yield fleet
    finally:
        await fleet.stop()


# what the survivors render ----------------------------------------------------------------------------------
def rendered(fleet: Fleet, cluster: str, kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((fleet.output(cluster) / NS / f"{kind}-reviews-global.yaml").read_text())
    return doc


def endpoint_clusters(fleet: Fleet, cluster: str) -> set[str]:
    """The clusters `cluster`'s reviews ServiceEntry has endpoints of (whole-cluster and version endpoints)."""
    labels = [e["labels"] for e in rendered(fleet, cluster, "serviceentry")["spec"]["endpoints"]]
    return {x.get("meshfleet.io/cluster") or x["meshfleet.io/subset-of"] for x in labels}


def subsets(fleet: Fleet, cluster: str) -> set[str]:
    return {s["name"] for s in rendered(fleet, cluster, "destinationrule")["spec"]["subsets"]}


def weights(fleet: Fleet, cluster: str) -> dict[str, int]:
    [rule] = rendered(fleet, cluster, "virtualservice")["spec"]["http"]
    return {r["destination"]["subset"]: r["weight"] for r in rule["route"]}


def reviews_files(fleet: Fleet, cluster: str) -> dict[str, bytes]:
    out = fleet.output(cluster)
    return {f: (out / f).read_bytes() for f in REVIEWS_FILES}


def assert_failed_over(fleet: Fleet, lost: Iterable[str], expected: Mapping[str, int]) -> None:
    """Every survivor renders exactly the survivors' endpoints and subsets, and exactly `expected` weights."""
    survivors = set(NAMES) - set(lost)
    assert sum(expected.values()) == 100 and set(expected) == survivors
    for c in survivors:
        assert endpoint_clusters(fleet, c) == survivors, c
        assert subsets(fleet, c) == survivors | {f"{s}-v1" for s in survivors}, c
        assert weights(fleet, c) == expected, c


def events(fleet: Fleet, kind: str | None = None, cluster: str | None = None) -> list[Event]:
    return [e for e in fleet.hub.evictions.events
            if (kind is None or e.kind == kind) and (cluster is None or e.cluster == cluster)]


def kinds(fleet: Fleet) -> list[tuple[str, str]]:
    return [(e.kind, e.cluster) for e in fleet.hub.evictions.events]


async def counted(fleet: Fleet, kind: str, cluster: str, count: int, within: float) -> None:
    """Wait until the hub has said `kind` of `cluster` `count` times."""
    await until(lambda: len(events(fleet, kind, cluster)) == count, within=within, what=f"{kind} {cluster} #{count}")


# outages ---------------------------------------------------------------------------------------------------
async def lose(fleet: Fleet, *names: str) -> None:
    """Whole-cluster loss: gateways closed (every peer's probes see it), then the agents stopped."""
    for name in names:
        await fleet.gateways[name].close()
    peers = [p for p in NAMES if p not in names]
    await until(lambda: all(fleet.hub.evictions.probes.get(p, {}).get(n) is False for p in peers for n in names),
                within=5, what="every peer's probes failing")
    for name in names:
        await fleet.stop_agent(name)


async def reopen(fleet: Fleet, name: str) -> None:
    """Open `name`'s gateway again (same port: no intent changes), and wait until no peer's last report still
    says it is unreachable: the planner holds a returning cluster evicted while one does (and none reaches it)."""
    await fleet.gateways[name].open()
    await until(lambda: all(r.get(name) is not False for p, r in fleet.hub.evictions.probes.items() if p != name),
                within=5, what=f"no peer reporting {name}'s gateway unreachable")


async def failed_over(fleet: Fleet, *names: str) -> None:
    survivors = [c for c in NAMES if c not in names]
    await until(lambda: set(names) <= fleet.evicted() and fleet.settled(survivors), within=GRACE + 5,
                what=f"{', '.join(names)} evicted and every survivor's intent ACKed")


async def restored(fleet: Fleet, name: str, within: float) -> None:
    await until(lambda: name not in fleet.evicted() and fleet.settled(NAMES), within=within,
                what=f"{name} restored and every intent ACKed")


@asynccontextmanager
async def never_back(fleet: Fleet, name: str) -> AsyncIterator[list[str]]:
    """Until the hub restores `name` (a Restored event) or the block ends, sample every 10 ms whether `name` is
    back in the hub's translation or in any other cluster's rendered reviews endpoints. Yields the sightings
    (empty: it stayed out). The event comes before the translation that puts it back, so that one is not seen."""
    sightings: list[str] = []
    restorations = len(events(fleet, "Restored", name))

    async def watch() -> None:
        while len(events(fleet, "Restored", name)) == restorations:
            if name not in fleet.evicted():
                sightings.append(f"hub translated with {name} back")
            sightings.extend(f"{c} renders {name}'s endpoints" for c in NAMES
                             if c != name and name in endpoint_clusters(fleet, c))
            await asyncio.sleep(0.01)

    task = asyncio.create_task(watch())
    try:
        yield sightings
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# 1. whole-cluster loss --------------------------------------------------------------------------------------
def test_a_lost_cluster_is_evicted_from_every_survivor_with_its_weight_shared_in_proportion(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as fleet:
            everyone = set(NAMES)
            for c in NAMES:
                assert endpoint_clusters(fleet, c) == everyone and weights(fleet, c) == WEIGHTS, c
            await lose(fleet, "us-east-1")
            await failed_over(fleet, "us-east-1")
            assert fleet.hub.statuses["us-east-1"].connection == "Unreachable"
            # 20, 20, 10, 10, 10 of 70 = 28.57, 28.57, 14.29 x3: floors 28, 28, 14 x3 (98); the 2 points left go
            # to the largest remainders, us-east-2 and eu-west-1
            assert_failed_over(fleet, ["us-east-1"],
                               {"us-east-2": 29, "eu-west-1": 29, "eu-west-2": 14, "ap-south-1": 14, "ap-south-2": 14})
            assert kinds(fleet) == [("Evicted", "us-east-1")]
            [evicted] = events(fleet)
            assert evicted.policy == FP_KEY
            assert "ap-south-1, ap-south-2, eu-west-1, eu-west-2, us-east-2 cannot reach its east-west gateway " \
                   "either" in evicted.message
            # `meshfleet status` shows it, from hub.db
            fleet.hub._flush_status()
            doc = collect(fleet.hub.registry)
            assert [(e["policy"], e["cluster"]) for e in doc["evictions"]] == [(FP_KEY, "us-east-1")]
            assert [(e["kind"], e["cluster"]) for e in doc["failoverEvents"]] == [("Evicted", "us-east-1")]
            text = render_text(doc)
            lines = text.splitlines()
            assert next(ln for ln in lines if ln.startswith("us-east-1 ")).split()[3] == "Unreachable"
            section = lines.index("evicted by failover (endpoints out of other clusters' intents):")
            assert lines[section + 1].startswith(f"  us-east-1 from {FP_KEY} (since ")
            assert f"{FP_KEY}: Evicted us-east-1: no message from us-east-1" in text
    run(scenario())


# 2. region loss ---------------------------------------------------------------------------------------------
def test_a_lost_region_takes_both_its_clusters_out_and_is_one_more_event(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as fleet:
            await lose(fleet, "us-east-1", "us-east-2")
            await failed_over(fleet, "us-east-1", "us-east-2")
            # 20, 10, 10, 10 of 50: exactly 40, 20, 20, 20
            assert_failed_over(fleet, ["us-east-1", "us-east-2"],
                               {"eu-west-1": 40, "eu-west-2": 20, "ap-south-1": 20, "ap-south-2": 20})
            assert sorted(kinds(fleet)) == [("Evicted", "us-east-1"), ("Evicted", "us-east-2"), ("RegionEvicted", "")]
            [region] = events(fleet, "RegionEvicted")
            assert region.policy == FP_KEY
            assert "region us-east is lost: all 2 of its clusters backing the destination (us-east-1, us-east-2)" \
                in region.message
    run(scenario())


# 3. partition -----------------------------------------------------------------------------------------------
def test_a_cluster_only_the_hub_lost_is_not_evicted_until_its_peers_lose_it_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as fleet:
            name = "eu-west-2"
            survivors = [c for c in NAMES if c != name]
            before = {c: tree(fleet.output(c)) for c in survivors}
            versions = {c: fleet.hub.intents[c].version for c in survivors}
            received = {c: list(fleet.agents[c].received) for c in survivors}
            await fleet.stop_agent(name)  # the hub's link is gone; the gateway still serves its peers
            await until(lambda: bool(events(fleet, "Partitioned", name)), within=GRACE + 3, what="Partitioned")
            assert fleet.hub.statuses[name].connection == "Unreachable"
            [partitioned] = events(fleet, "Partitioned", name)
            assert "ap-south-1, ap-south-2, eu-west-1, us-east-1, us-east-2 still reach its east-west gateway" \
                in partitioned.message
            await asyncio.sleep(2 * GRACE)  # three grace periods since the loss, in all
            assert kinds(fleet) == [("Partitioned", name)]  # said once per episode
            assert fleet.evicted() == frozenset()
            for c in survivors:
                assert fleet.hub.intents[c].version == versions[c], c
                assert fleet.agents[c].received == received[c], c
                assert tree(fleet.output(c)) == before[c], c  # same bytes, same mtimes
            # the gateway goes too: the peers' probes now fail, and that evicts it
            await fleet.gateways[name].close()
            await failed_over(fleet, name)
            # 30, 20, 20, 10, 10 of 90 = 33.3, 22.2, 22.2, 11.1, 11.1: floors 33, 22, 22, 11, 11 (99); the point left
            # goes to the largest remainder, us-east-1
            assert_failed_over(fleet, [name],
                               {"us-east-1": 34, "us-east-2": 22, "eu-west-1": 22, "ap-south-1": 11, "ap-south-2": 11})
            assert kinds(fleet) == [("Partitioned", name), ("Evicted", name)]
            assert "cannot reach its east-west gateway either" in events(fleet, "Evicted")[0].message
    run(scenario())


# 4. flapping ------------------------------------------------------------------------------------------------
def test_a_flapping_cluster_stays_evicted_until_it_stays_up_for_the_hold_down(tmp_path: Path) -> None:
    hold_down = 2.0  # longer than the grace plus a restart: a stop during the hold-down is seen within it

    async def scenario() -> None:
        async with running(tmp_path, hold_down=f"{hold_down:g}s") as fleet:
            name = "ap-south-2"
            survivors = [c for c in NAMES if c != name]
            healthy = {c: reviews_files(fleet, c) for c in survivors}
            await lose(fleet, name)
            await failed_over(fleet, name)
            # losing a 10 of 100 again: 34, 22, 22, 11, 11 as in the partition test
            shared = {"us-east-1": 34, "us-east-2": 22, "eu-west-1": 22, "eu-west-2": 11, "ap-south-1": 11}
            assert_failed_over(fleet, [name], shared)
            await reopen(fleet, name)
            async with never_back(fleet, name) as sightings:
                for flap in (1, 2):
                    fleet.start_agent(name)
                    await counted(fleet, "Returned", name, flap, within=5)
                    await asyncio.sleep(0.1)
                    await fleet.stop_agent(name)
                    await counted(fleet, "Flapped", name, flap, within=GRACE + 1)
                    assert fleet.hub.statuses[name].connection == "Unreachable"
                    assert_failed_over(fleet, [name], shared)
                fleet.start_agent(name)
                await counted(fleet, "Returned", name, 3, within=5)
                await counted(fleet, "Restored", name, 1, within=hold_down + 2)
            assert sightings == []
            await restored(fleet, name, within=5)
            assert kinds(fleet) == [("Evicted", name), ("Returned", name), ("Flapped", name), ("Returned", name),
                                    ("Flapped", name), ("Returned", name), ("Restored", name)]
            assert "lost again during its hold-down; it stays evicted" in events(fleet, "Flapped")[0].message
            back, done = events(fleet, "Returned", name)[-1], events(fleet, "Restored", name)[0]
            assert done.at - back.at >= hold_down
            for c in survivors:  # endpoints and weights exactly as before the loss
                assert reviews_files(fleet, c) == healthy[c], c
                assert weights(fleet, c) == WEIGHTS
    run(scenario())


# 5. no peer confirmation ------------------------------------------------------------------------------------
def test_without_peer_confirmation_the_hubs_loss_alone_evicts(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, peer_confirmation=False) as fleet:
            name = "eu-west-1"
            await fleet.stop_agent(name)  # its gateway stays open, and every peer still reaches it
            await failed_over(fleet, name)
            assert all_reached_but(fleet, name)
            # 30, 20, 10, 10, 10 of 80 = 37.5, 25, 12.5 x3: floors 37, 25, 12 x3 (98); of the four .5 remainders the
            # first two in route order, us-east-1 and eu-west-2, get the 2 points left
            assert_failed_over(fleet, [name],
                               {"us-east-1": 38, "us-east-2": 25, "eu-west-2": 13, "ap-south-1": 12, "ap-south-2": 12})
            assert kinds(fleet) == [("Evicted", name)]
            assert events(fleet)[0].message.endswith("peer confirmation is off")
    run(scenario())


# 6. hub restart ---------------------------------------------------------------------------------------------
def restarted_hub(hub: Hub) -> Hub:
    """A new hub on the same state directory and ports (agents dial fixed addresses)."""
    return Hub(dataclasses.replace(hub.settings, listen=f"127.0.0.1:{hub.port}",
                                   bootstrap_listen=f"127.0.0.1:{hub.bootstrap_port}"))


def test_a_restarted_hub_keeps_evictions_until_the_cluster_and_its_gateway_return(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, hold_down="1s") as fleet:
            name = "us-east-2"
            survivors = [c for c in NAMES if c != name]
            healthy = {c: reviews_files(fleet, c) for c in survivors}
            await lose(fleet, name)
            await failed_over(fleet, name)
            # losing a 20 of 100 (not the first): 38, 25, 13, 12, 12 as in the peer-confirmation test
            shared = {"us-east-1": 38, "eu-west-1": 25, "eu-west-2": 13, "ap-south-1": 12, "ap-south-2": 12}
            assert_failed_over(fleet, [name], shared)
            before = {c: tree(fleet.output(c)) for c in survivors}
            received = {c: list(fleet.agents[c].received) for c in survivors}
            await fleet.hub.stop(grace=0)
            fleet.hub = restarted_hub(fleet.hub)
            await fleet.hub.start()
            async with never_back(fleet, name) as sightings:
                await until(lambda: set(fleet.hub.sessions) == set(survivors) and fleet.settled(survivors),
                            within=10, what="the survivors back on the restarted hub")
                # past the restarted hub's settling: its planner decides again, and still evicts
                await asyncio.sleep(max(0.0, fleet.hub._started_at + GRACE + 0.3 - time.time()))
                assert fleet.hub.evictions.evicted() == {FP_KEY: frozenset({name})}
                for c in survivors:  # no flip-flop: nothing was pushed, nothing rewritten
                    assert fleet.agents[c].received == received[c], c
                    assert tree(fleet.output(c)) == before[c], c
                # its agent is back before its gateway: the survivors, still watching the gateway of the cluster
                # they no longer call, cannot reach it, and it stays out past its hold-down
                fleet.start_agent(name)
                await counted(fleet, "Returned", name, 1, within=5)
                assert "cannot reach its east-west gateway; it stays evicted until they do" \
                    in events(fleet, "Returned", name)[0].message
                await asyncio.sleep(1.5)
                assert fleet.hub.evictions.evicted() == {FP_KEY: frozenset({name})}
                opened = time.time()
                await reopen(fleet, name)
                await counted(fleet, "Restored", name, 1, within=5)
            assert sightings == []
            await restored(fleet, name, within=5)
            back, done = events(fleet, "Returned", name)[-1], events(fleet, "Restored", name)[-1]
            assert done.at - back.at >= 1.0 and done.at >= opened
            assert [k for k in kinds(fleet) if k[1] == name] == [("Evicted", name), ("Returned", name),
                                                                 ("Restored", name)]
            for c in survivors:
                assert reviews_files(fleet, c) == healthy[c], c
    run(scenario())


# 7. Kubernetes mode: the FailoverPolicy's status -------------------------------------------------------------
@pytest.fixture
def hub_api_server() -> Iterator[FakeKube]:
    with FakeKube(crds=meshfleet_crds()) as fake:
        yield fake


def meshfleet_crds() -> CRDSchemas:
    return CRDSchemas.from_documents(d for p in sorted(CRDS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()))


def test_the_failover_policy_status_shows_evictions_and_events_and_validates(tmp_path: Path,
                                                                              hub_api_server: FakeKube) -> None:
    async def scenario() -> None:
        with hub_api_server.api_client() as api:
            source = KubePolicySource.for_api(api, settings=WatchSettings(resync=30.0, watch_timeout=1,
                                                                          backoff_initial=0.01, backoff_max=0.05))
            fleet = new_fleet(tmp_path, source=source)
            source.on_change = fleet.hub.policy_changed
            writer = PolicyStatusWriter(fleet.hub, source, api, interval=0.1)
            task: asyncio.Task[None] | None = None
            custom = CustomObjectsApi(api)
            for doc in policies("1s", True):  # in place before the hub starts: its first translation has them
                custom.create_namespaced_custom_object("meshfleet.io", "v1alpha1", NS, PLURALS[doc["kind"]], doc)
            try:
                source.start()
                await until(lambda: source.synced() and len(source.objects()) == 2, within=10, what="CRs listed")
                await fleet.start()
                task = asyncio.create_task(writer.run())
                await ready(fleet)
                assert all(weights(fleet, c) == WEIGHTS for c in NAMES)

                def policy() -> dict[str, Any]:
                    return hub_api_server.get(V1A1, "FailoverPolicy", "reviews-failover", NS) or {}

                await until(lambda: "evicted" in policy().get("status", {}), within=5, what="a failover status")
                assert policy()["status"]["evicted"] == [] and policy()["status"]["events"] == []
                await lose(fleet, "ap-south-1")
                await failed_over(fleet, "ap-south-1")
                await until(lambda: bool(policy()["status"]["evicted"]), within=5, what="evicted[] in the status")
                status = policy()["status"]
                [evicted] = status["evicted"]
                assert evicted["cluster"] == "ap-south-1"
                assert "cannot reach its east-west gateway either" in evicted["reason"]
                assert [(e["type"], e["cluster"]) for e in status["events"]] == [("Evicted", "ap-south-1")]
                assert status["events"][0]["message"] == evicted["reason"]
                assert [str(e) for e in meshfleet_crds().validate(policy())] == []
            finally:
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                await fleet.stop()
                await asyncio.to_thread(source.stop)
    run(scenario())


# 8. bad probe reports ---------------------------------------------------------------------------------------
def probes(fleet: Fleet, *results: tuple[str, bool] | tuple[str, bool, int]) -> hub_pb2.AgentMessage:
    """A probe report: (cluster, reachable) at the cluster's gateway, or (cluster, reachable, port) at 127.0.0.1."""
    def port(r: tuple[str, bool] | tuple[str, bool, int]) -> int:
        return r[2] if len(r) == 3 else fleet.gateways[r[0]].port if r[0] in fleet.gateways else 15443

    return hub_pb2.AgentMessage(probes=hub_pb2.ProbeReport(results=[
        hub_pb2.ProbeResult(cluster=r[0], address="127.0.0.1", port=port(r), reachable=r[1]) for r in results]))


def bad_reports(fleet: Fleet) -> dict[str, tuple[hub_pb2.AgentMessage, str]]:
    """Reports us-east-1 might send, each refused as a whole, with the reason logged."""
    too_many = evicting.MAX_PROBE_RESULTS + 1
    return {
        "itself": (probes(fleet, ("eu-west-1", True), ("us-east-1", True)),
                   "us-east-1 reported a probe of its own gateway"),
        "not-a-name": (probes(fleet, ("Not_A_Cluster", False)), "probe result for 'Not_A_Cluster': not a cluster name"),
        "twice": (probes(fleet, ("eu-west-1", True), ("eu-west-1", False)),
                  "cluster eu-west-1 probed twice in one report"),
        "too-many": (probes(fleet, *((f"c{i}", False) for i in range(too_many))),
                     f"{too_many} probe results (at most {evicting.MAX_PROBE_RESULTS})"),
    }


def logged(caplog: pytest.LogCaptureFixture, text: str) -> Callable[[], bool]:
    return lambda: any(text in r.getMessage() for r in caplog.records)


def test_a_bad_probe_report_is_refused_and_logged_and_the_stream_stays_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as fleet:
            name = "us-east-1"
            await fleet.stop_agent(name)
            async with agent_channel(fleet, name) as channel:
                call: grpc.aio.StreamStreamCall[hub_pb2.AgentMessage, hub_pb2.HubMessage] = stub(channel).Sync()
                await call.write(hub_pb2.AgentMessage(hello=hub_pb2.Hello(
                    cluster=name, protocol_version=PROTOCOL_VERSION, applied_version=fleet.hub.intents[name].version)))
                await until(lambda: name in fleet.hub.sessions, what="session")
                session = fleet.hub.sessions[name]
                # a good report; what it says of an address that is not eu-west-2's gateway, and of a cluster the
                # hub does not know, is ignored (not an error)
                wrong_port = fleet.gateways["eu-west-2"].port + 1
                await call.write(probes(fleet, ("eu-west-1", False), ("eu-west-2", True, wrong_port),
                                        ("gone-cluster", True)))
                await until(lambda: fleet.hub.evictions.probes.get(name) == {"eu-west-1": False}, what="good report")
                for case, (message, text) in bad_reports(fleet).items():
                    caplog.clear()
                    with caplog.at_level(logging.ERROR, logger="mgmt.serving"):
                        await call.write(message)
                        await call.write(hub_pb2.AgentMessage(heartbeat=hub_pb2.Heartbeat()))
                        await until(logged(caplog, text), within=3, what=f"the refusal of {case} logged")
                    [record] = [r for r in caplog.records if "probe report" in r.getMessage()]
                    assert record.getMessage().startswith(f"probe report of {name} refused, keeping the previous "
                                                          "one: "), case
                    assert fleet.hub.evictions.probes[name] == {"eu-west-1": False}, case
                    assert fleet.hub.sessions.get(name) is session, case
                # the stream still carries the hub's messages, and the next good report counts
                msg = await asyncio.wait_for(call.read(), 5)
                assert msg is not EOF
                await call.write(probes(fleet, ("eu-west-1", True)))
                await until(lambda: fleet.hub.evictions.probes.get(name) == {"eu-west-1": True}, what="report taken")
                assert fleet.hub.sessions.get(name) is session
                assert fleet.hub.statuses[name].connection == "Connected"
                call.cancel()
    run(scenario())


# the hub's own link -----------------------------------------------------------------------------------
def test_the_hub_losing_every_link_evicts_no_one(tmp_path: Path) -> None:
    """Every stream refused for longer than the grace period, clusters and gateways fine: the clusters that
    probe each gateway are lost to the hub as well, so nothing confirms an outage and nothing is evicted
    (without this, each deadline evicts one more cluster, and traffic goes to whichever returns first)."""
    async def scenario() -> None:
        async with running(tmp_path, hold_down="2s") as fleet:
            hub = fleet.hub

            def link_down(context: Any) -> tuple[str, str]:
                raise StreamRefused(grpc.StatusCode.UNAVAILABLE, "the hub's link is down")

            before = {c: weights(fleet, c) for c in NAMES}
            hub._identity = link_down  # type: ignore[method-assign]  # every new stream refused
            for session in list(hub.sessions.values()):  # and every open one ends
                hub._refuse(session, grpc.StatusCode.UNAVAILABLE, "the hub's link is down")
            await until(lambda: all(hub.statuses[c].connection == "Unreachable" for c in NAMES), within=GRACE + 3)
            await asyncio.sleep(0.3)
            assert fleet.evicted() == frozenset() and hub.evictions.evicted() == {}
            assert {k for k, _ in kinds(fleet)} == {"Partitioned"}
            del hub._identity  # the link is back
            await until(lambda: fleet.settled(NAMES) and all(c in hub.sessions for c in NAMES), within=10)
            assert {c: weights(fleet, c) for c in NAMES} == before
            assert not [k for k in kinds(fleet) if k[0] == "Evicted"]
    run(scenario())
