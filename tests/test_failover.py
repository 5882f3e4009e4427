"""Failover's pure cores: the eviction planner (mgmt.failover), the region graph (mgmt.regions), and what
translation makes of evictions (endpoints out of other clusters' intents, weights shared in proportion)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from agent.render import RenderContext, render
from meshfleet.intents import ClusterRef, Gateway, OutlierDetection, ServiceIntent, WeightedTarget, decode, encode
from mgmt import changes, failover
from mgmt.failover import Eviction, Health, Rule, State
from mgmt.model import ClusterSelector, FailoverPolicy, Snapshot
from mgmt.regions import RegionCostsError, parse_costs, region_graph
from mgmt.translate import translate
from tests.istio_support import istio_schemas
from tests.snapshots import NS, meta, report, service, snapshot, split, to_mcs
from tests.snapshots import mcs as multicluster

# a 3-region, 6-cluster fleet: two clusters (two zones) per region
FLEET: dict[str, ClusterRef] = {
    "use1": ClusterRef("use1", "us-east", "us-east-a", "net-us"),
    "use2": ClusterRef("use2", "us-east", "us-east-b", "net-us"),
    "euw1": ClusterRef("euw1", "eu-west", "eu-west-a", "net-eu"),
    "euw2": ClusterRef("euw2", "eu-west", "eu-west-b", "net-eu"),
    "aps1": ClusterRef("aps1", "ap-south", "ap-south-a", "net-ap"),
    "aps2": ClusterRef("aps2", "ap-south", "ap-south-b", "net-ap"),
}
DISCOVERY = {name: report(name, service("reviews")) for name in FLEET}
WEIGHTS = {"use1": 30, "use2": 20, "euw1": 20, "euw2": 10, "aps1": 10, "aps2": 10}
FP_KEY = f"FailoverPolicy/{NS}/reviews-failover"


def policy(evict: bool = True, hold_down: str = "1m", peer_confirmation: bool = True) -> FailoverPolicy:
    return FailoverPolicy(meta("FailoverPolicy", "reviews-failover"), to_mcs("reviews"), OutlierDetection(),
                          evict_lost_clusters=evict, hold_down=hold_down, peer_confirmation=peer_confirmation)


def fleet(evicted: frozenset[str] = frozenset(), *, evict: bool = True, costs: tuple[tuple[str, str, float], ...] = ()
          ) -> Snapshot:
    base = snapshot(multicluster("reviews", ClusterSelector()), split("reviews-split", to_mcs("reviews"),
                                                             list(WEIGHTS.items())),
                    policy(evict), discovery=DISCOVERY, fleet=FLEET, labels={})
    return Snapshot(base.clusters, base.discovery, base.resources, base.labels, region_costs=costs,
                    evicted={FP_KEY: evicted} if evicted else {})


def reviews(snap: Snapshot, cluster: str) -> tuple[ServiceIntent, tuple[WeightedTarget, ...]]:
    result = translate(snap, cluster)
    [svc] = [s for s in result.intent.services if s.name == "reviews"]
    [route] = [t for t in result.intent.traffic if t.service == "reviews"]
    [rule] = route.rules
    return svc, rule.targets


def weights(targets: tuple[WeightedTarget, ...]) -> dict[str, int]:
    return {t.cluster: t.weight for t in targets}


# translation of evictions ---------------------------------------------------------------------------
def test_without_eviction_every_client_sees_every_backend_and_the_written_weights() -> None:
    snap = fleet()
    for name in FLEET:
        svc, targets = reviews(snap, name)
        assert {b.cluster.name for b in svc.backends} == set(FLEET)
        assert weights(targets) == WEIGHTS


def test_losing_one_cluster_removes_its_endpoints_and_shares_its_weight_in_proportion() -> None:
    snap = fleet(frozenset({"use1"}))
    for name in set(FLEET) - {"use1"}:
        svc, targets = reviews(snap, name)
        assert {b.cluster.name for b in svc.backends} == set(FLEET) - {"use1"}
        # 20, 20, 10, 10, 10 of 70 -> 28.57, 28.57, 14.29 x3; largest remainders (ties by order) get the 2 left
        assert weights(targets) == {"use2": 29, "euw1": 29, "euw2": 14, "aps1": 14, "aps2": 14}
        assert sum(weights(targets).values()) == 100
        assert not translate(snap, name).problems  # an eviction is an event, not a problem of the policy


def test_losing_a_region_removes_all_its_clusters_and_shares_their_weight_in_proportion() -> None:
    snap = fleet(frozenset({"use1", "use2"}))
    for name in ("euw1", "euw2", "aps1", "aps2"):
        svc, targets = reviews(snap, name)
        assert {b.cluster.name for b in svc.backends} == {"euw1", "euw2", "aps1", "aps2"}
        assert weights(targets) == {"euw1": 40, "euw2": 20, "aps1": 20, "aps2": 20}


def test_an_evicted_cluster_keeps_its_own_copy_for_its_own_clients() -> None:
    snap = fleet(frozenset({"use1"}))
    svc, targets = reviews(snap, "use1")
    assert {b.cluster.name for b in svc.backends} == set(FLEET)
    assert weights(targets) == WEIGHTS


def test_eviction_never_takes_the_last_backends() -> None:
    snap = fleet(frozenset(FLEET))
    for name in FLEET:
        svc, targets = reviews(snap, name)
        assert {b.cluster.name for b in svc.backends} == set(FLEET)
        assert weights(targets) == WEIGHTS


def test_a_policy_that_does_not_evict_keeps_lost_clusters() -> None:
    base = fleet(frozenset({"use1"}), evict=False)
    svc, targets = reviews(base, "euw1")
    assert "use1" in {b.cluster.name for b in svc.backends}
    assert weights(targets) == WEIGHTS


def test_an_eviction_retranslates_exactly_the_clients_and_servers_and_matches_a_full_translation() -> None:
    old, new = fleet(), fleet(frozenset({"use1"}))
    for name in FLEET:  # fill the old memo as the hub would
        translate(old, name)
    reads = {name: translate(old, name).reads for name in FLEET}
    changes.seed(old, new)
    delta = changes.changed(old, new)
    assert delta is not None
    changes.carry(old, new, delta)
    assert changes.affected(reads, delta, new) == set(FLEET)
    for name in FLEET:
        assert translate(new, name).intent == translate(fleet(frozenset({"use1"})), name).intent


def test_region_costs_order_the_other_regions_nearest_first() -> None:
    costs = parse_costs({"costs": {"us-east": {"eu-west": 80, "ap-south": 200}, "eu-west": {"ap-south": 120}}})
    snap = fleet(costs=costs)
    assert translate(snap, "use1").intent.regions == (("eu-west",), ("ap-south",))
    assert translate(snap, "aps2").intent.regions == (("eu-west",), ("us-east",))
    # without costs every other region is equally near
    assert translate(fleet(), "use1").intent.regions == (("ap-south", "eu-west"),)


def test_a_change_of_region_costs_retranslates_every_cluster() -> None:
    old = fleet()
    new = fleet(costs=parse_costs({"costs": {"us-east": {"eu-west": 1}}}))
    assert changes.changed(old, new) is None


# the region graph -----------------------------------------------------------------------------------
def test_tiers_group_equally_near_regions_and_put_unconnected_ones_last() -> None:
    costs = parse_costs({"costs": {"a": {"b": 10, "c": 10, "d": 30}, "c": {"d": 5}}})
    graph = region_graph({"a", "b", "c", "d", "e"}, costs)
    assert graph.tiers("a", {"a", "b", "c", "d", "e"}) == (("b", "c"), ("d",), ("e",))  # d via c: 15
    assert graph.tiers("e", {"a", "b", "e"}) == (("a", "b"),)  # nothing connects e: all last, together
    assert region_graph({"a", "b"}, ()).tiers("a", {"a", "b"}) == (("b",),)


@pytest.mark.parametrize(("doc", "message"), [
    ({"links": {}}, "expected a mapping with the single key 'costs'"),
    ({"costs": ["a"]}, "costs: expected a mapping of region to {region: cost}"),
    ({"costs": {"a": 5}}, "costs.a: expected a mapping of region to cost"),
    ({"costs": {"a": {"a": 1}}}, "costs.a.a: a region's cost to itself is always 0"),
    ({"costs": {"a": {"b": -1}}}, "costs.a.b: expected a finite number >= 0, got -1"),
    ({"costs": {"a": {"b": "fast"}}}, "costs.a.b: expected a finite number >= 0, got 'fast'"),
    ({"costs": {"a": {"b": True}}}, "costs.a.b: expected a finite number >= 0, got True"),
    ({"costs": {"a": {"b": 1}, "b": {"a": 2}}}, "the link a-b is declared twice with different costs (1 and 2)"),
    ({"costs": {"Bad_Region": {"b": 1}}}, "region 'Bad_Region'"),
], ids=["wrong-key", "costs-not-mapping", "row-not-mapping", "self-link", "negative", "string", "bool",
        "conflicting-directions", "bad-name"])
def test_region_costs_errors_name_the_place(doc: object, message: str) -> None:
    with pytest.raises(RegionCostsError) as err:
        parse_costs(doc, "regions.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("regions.yaml: ")


def test_the_same_link_declared_both_ways_with_one_cost_is_fine() -> None:
    assert parse_costs({"costs": {"b": {"a": 3}, "a": {"b": 3}}}) == (("a", "b", 3.0),)


# the planner ----------------------------------------------------------------------------------------
RULE = Rule("FailoverPolicy/ns/f", frozenset({"a", "b", "c"}), hold_down=60.0)
UP = Health(True, 0.0)
NOTHING = State()


def healthy(**changes: Health) -> dict[str, Health]:
    return {"a": UP, "b": UP, "c": UP, **changes}


def run(health: Mapping[str, Health], state: State = NOTHING, now: float = 100.0, rule: Rule = RULE,
        regions: Mapping[str, str] | None = None) -> failover.Step:
    return failover.step([rule], health, state, now, regions)


def kinds(result: failover.Step) -> list[tuple[str, str]]:
    return [(e.kind, e.cluster) for e in result.events]


def test_a_healthy_fleet_evicts_nothing_and_says_nothing() -> None:
    result = run(healthy())
    assert result.state.evicted() == {}
    assert result.events == ()
    assert result.wake_at is None


def test_a_lost_cluster_nobody_probes_is_evicted() -> None:
    result = run(healthy(a=Health(False, 80.0)))
    assert result.state.evicted() == {RULE.policy: frozenset({"a"})}
    assert kinds(result) == [("Evicted", "a")]
    assert "no connected cluster probes its east-west gateway" in result.events[0].message
    assert "20.0 s ago" in result.events[0].message


def test_a_lost_cluster_its_peers_cannot_reach_is_evicted() -> None:
    result = run(healthy(a=Health(False, 80.0, missed_by=frozenset({"b", "c"}))))
    assert result.state.evicted() == {RULE.policy: frozenset({"a"})}
    assert "b, c cannot reach its east-west gateway either" in result.events[0].message


def test_a_partition_where_a_peer_still_reaches_the_gateway_evicts_nothing() -> None:
    lost = healthy(a=Health(False, 80.0, reached_by=frozenset({"b"}), missed_by=frozenset({"c"})))
    result = run(lost)
    assert result.state.evicted() == {}
    assert kinds(result) == [("Partitioned", "a")]
    assert "b still reach its east-west gateway" in result.events[0].message
    again = run(lost, result.state, now=101.0)  # one event per episode
    assert again.events == () and again.state.evicted() == {}
    # the peer loses it too: now it is an outage
    gone = run(healthy(a=Health(False, 80.0, missed_by=frozenset({"b", "c"}))), again.state, now=102.0)
    assert kinds(gone) == [("Evicted", "a")]


def test_without_peer_confirmation_the_hubs_loss_alone_evicts() -> None:
    rule = Rule(RULE.policy, RULE.clusters, 60.0, peer_confirmation=False)
    result = run(healthy(a=Health(False, 80.0, reached_by=frozenset({"b"}))), rule=rule)
    assert result.state.evicted() == {RULE.policy: frozenset({"a"})}
    assert "peer confirmation is off" in result.events[0].message


def test_a_returning_cluster_is_restored_only_after_the_hold_down() -> None:
    evicted = run(healthy(a=Health(False, 80.0))).state
    back = run(healthy(a=Health(True, 150.0)), evicted, now=150.0)
    assert back.state.evicted() == {RULE.policy: frozenset({"a"})}
    assert kinds(back) == [("Returned", "a")]
    assert back.wake_at == 210.0
    waiting = run(healthy(a=Health(True, 150.0)), back.state, now=209.9)
    assert waiting.state.evicted() == {RULE.policy: frozenset({"a"})} and waiting.events == ()
    restored = run(healthy(a=Health(True, 150.0)), waiting.state, now=210.0)
    assert restored.state.evicted() == {}
    assert kinds(restored) == [("Restored", "a")]
    assert restored.wake_at is None


def test_a_flapping_cluster_stays_evicted_and_its_hold_down_starts_over() -> None:
    state = run(healthy(a=Health(False, 80.0))).state
    state = run(healthy(a=Health(True, 150.0)), state, now=150.0).state  # back...
    flap = run(healthy(a=Health(False, 170.0)), state, now=185.0)  # ...lost again within the hold-down
    assert flap.state.evicted() == {RULE.policy: frozenset({"a"})}
    assert kinds(flap) == [("Flapped", "a")]
    back = run(healthy(a=Health(True, 190.0)), flap.state, now=190.0)  # back again: 60 s from now
    assert back.wake_at == 250.0
    assert run(healthy(a=Health(True, 190.0)), back.state, now=249.0).state.evicted() != {}
    assert run(healthy(a=Health(True, 190.0)), back.state, now=250.0).state.evicted() == {}


def test_a_returning_cluster_whose_gateway_its_peers_cannot_reach_stays_evicted() -> None:
    state = run(healthy(a=Health(False, 80.0))).state
    blocked = run(healthy(a=Health(True, 100.0, missed_by=frozenset({"b"}))), state, now=500.0)
    assert blocked.state.evicted() == {RULE.policy: frozenset({"a"})}
    assert kinds(blocked) == [("Returned", "a")]
    assert "b cannot reach its east-west gateway" in blocked.events[0].message
    fixed = run(healthy(a=Health(True, 100.0, reached_by=frozenset({"b"}))), blocked.state, now=501.0)
    assert fixed.state.evicted() == {}


def test_a_region_losing_every_cluster_is_one_more_event() -> None:
    rule = Rule(RULE.policy, frozenset({"a", "b", "c"}), 60.0)
    regions = {"a": "r1", "b": "r1", "c": "r2"}
    result = run(healthy(a=Health(False, 80.0), b=Health(False, 81.0)), rule=rule, regions=regions)
    assert sorted(kinds(result)) == [("Evicted", "a"), ("Evicted", "b"), ("RegionEvicted", "")]
    assert "region r1 is lost: all 2 of its clusters" in result.events[-1].message


def test_dropping_the_policy_or_the_cluster_restores_it() -> None:
    state = run(healthy(a=Health(False, 80.0))).state
    gone = failover.step([], healthy(a=Health(False, 80.0)), state, 120.0)
    assert gone.state.evicted() == {}
    assert kinds(gone) == [("Restored", "a")]
    assert "no longer evicts" in gone.events[0].message
    removed = run({"b": UP, "c": UP}, state, now=120.0)
    assert removed.state.evicted() == {}
    assert "no longer backs the destination" in removed.events[0].message


def test_clusters_outside_the_destination_are_never_evicted_from_it() -> None:
    rule = Rule(RULE.policy, frozenset({"b", "c"}), 60.0)
    assert run(healthy(a=Health(False, 80.0)), rule=rule).state.evicted() == {}


def test_the_state_survives_a_round_trip_and_bad_documents_are_dropped() -> None:
    state = State({RULE.policy: {"a": Eviction(80.0, "lost")}}, {RULE.policy: {"b": "Partitioned"}})
    assert failover.state_from_json(failover.state_to_json(state)) == state
    assert failover.state_from_json(None) == State()
    assert failover.state_from_json({"evictions": {"p": {"a": {"since": "yesterday"}}}}) == State()


# from the hub's topology to what the agents render ---------------------------------------------------
COSTS = parse_costs({"costs": {"us-east": {"eu-west": 80, "ap-south": 200}, "eu-west": {"ap-south": 120}}})
# each client's expected preference among the six backends: own zone, own region, nearest region, the last
ORDER = {
    "use1": [{"use1"}, {"use2"}, {"euw1", "euw2"}, {"aps1", "aps2"}],
    "euw2": [{"euw2"}, {"euw1"}, {"use1", "use2"}, {"aps1", "aps2"}],  # us-east 80 before ap-south 120
    "aps1": [{"aps1"}, {"aps2"}, {"euw1", "euw2"}, {"use1", "use2"}],  # eu-west 120 before us-east 200
}


@pytest.mark.parametrize("client", sorted(ORDER))
def test_rendered_failover_settings_are_schema_valid_and_follow_the_topology(client: str) -> None:
    intent = translate(fleet(costs=COSTS), client).intent
    objects = render(decode(*encode(intent)), RenderContext(client))
    schemas = istio_schemas()
    for obj in objects:
        assert not [str(e) for e in schemas.validate(obj)], obj["metadata"]["name"]
    [se] = [o for o in objects if o["kind"] == "ServiceEntry" and o["metadata"]["name"] == "reviews-global"]
    [dr] = [o for o in objects if o["kind"] == "DestinationRule" and o["metadata"]["name"] == "reviews-global"]
    policy = dr["spec"]["trafficPolicy"]
    assert policy["outlierDetection"] == {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s",
                                          "maxEjectionPercent": 100}
    entries = policy["loadBalancer"]["localityLbSetting"]["failoverPriority"]
    assert entries == [f"meshfleet.io/failover-tier-{k}=true" for k in (1, 2, 3)]
    # Envoy's priority of an endpoint: N minus the number of leading entries its labels match
    priority: dict[str, int] = {}
    for e in se["spec"]["endpoints"]:
        matched = 0
        for label, value in (x.split("=", 1) for x in entries):
            if e["labels"].get(label) != value:
                break
            matched += 1
        cluster = e["labels"]["meshfleet.io/cluster"]
        priority[cluster] = len(entries) - matched
        assert e["locality"] == f"{FLEET[cluster].region}/{FLEET[cluster].zone}"
        assert e["network"] == FLEET[cluster].network
    assert [{c for c, p in priority.items() if p == level} for level in range(4)] == ORDER[client]


# review findings ------------------------------------------------------------------------------------
def test_losing_every_backend_evicts_none_and_says_so_once() -> None:
    lost = {c: Health(False, 80.0) for c in ("a", "b", "c")}
    result = run(lost)
    assert result.state.evicted() == {}
    assert sorted(kinds(result)) == [("NotEvicted", "a"), ("NotEvicted", "b"), ("NotEvicted", "c")]
    assert run(lost, result.state, now=101.0).events == ()
    # one comes back: the others are now evicted (one backend is left)
    back = run({**lost, "c": Health(True, 101.0)}, result.state, now=102.0)
    assert back.state.evicted() == {RULE.policy: frozenset({"a", "b"})}


def test_a_return_is_one_event_even_when_peers_confirm_it_late() -> None:
    state = run(healthy(a=Health(False, 80.0))).state
    blocked = run(healthy(a=Health(True, 100.0, missed_by=frozenset({"b"}))), state, now=101.0)
    waiting = run(healthy(a=Health(True, 100.0, reached_by=frozenset({"b"}))), blocked.state, now=102.0)
    assert kinds(blocked) == [("Returned", "a")] and waiting.events == ()
    assert run(healthy(a=Health(True, 100.0)), waiting.state, now=160.0).state.evicted() == {}


def test_long_peer_lists_are_cut_short_in_messages() -> None:
    peers = frozenset(f"peer-{i:03d}" for i in range(50))
    result = run(healthy(a=Health(False, 80.0, missed_by=peers)))
    assert "peer-000, peer-001" in result.events[0].message and "and 42 more" in result.events[0].message
    assert len(result.events[0].message) < 300


def test_survivors_keep_probing_an_evicted_cluster() -> None:
    snap = fleet(frozenset({"use1"}))
    for name in set(FLEET) - {"use1"}:
        [gateway] = translate(snap, name).intent.watch
        assert (gateway.cluster, gateway.address, gateway.port) == ("use1", *_gateway("use1"))
    assert translate(snap, "use1").intent.watch == ()
    assert translate(fleet(), "euw1").intent.watch == ()


def _gateway(cluster: str) -> tuple[str, int]:
    found = DISCOVERY[cluster]
    return found.gateway_address, found.gateway_port


def test_probe_results_count_only_for_the_gateways_the_probers_intent_names(tmp_path: Path) -> None:
    from meshfleet.v1 import hub_pb2
    from mgmt.evicting import Evictions, ProbeReportRefused
    from mgmt.registry import Registry

    registry = Registry(tmp_path)
    try:
        ev = Evictions(registry)
        targets = {"use1": {Gateway("use1", "eastwest.use1.example", 15443)}}

        def report(*results: tuple[str, str, int, bool]) -> hub_pb2.ProbeReport:
            return hub_pb2.ProbeReport(results=[hub_pb2.ProbeResult(cluster=c, address=a, port=p, reachable=r)
                                                for c, a, p, r in results])

        assert ev.report("aps1", report(("use1", "eastwest.use1.example", 15443, True),
                                        ("euw1", "eastwest.euw1.example", 15443, True),  # not a target of aps1
                                        ("use1x", "203.0.113.9", 1, True)), targets)
        assert ev.probes["aps1"] == {"use1": True}
        ev.report("aps1", report(("use1", "203.0.113.9", 1, True)), targets)  # not use1's gateway
        assert ev.probes["aps1"] == {}
        for bad, why in ((report(("aps1", "x", 1, True)), "its own gateway"),
                         (report(("Not_A_Name", "x", 1, True)), "not a cluster name"),
                         (report(("use1", "x", 1, True), ("use1", "y", 1, False)), "probed twice")):
            with pytest.raises(ProbeReportRefused, match=why):
                ev.report("aps1", bad, targets)
        # a prober the hub does not hear (Unreachable, stream not torn down yet) is no witness
        ev.report("aps1", report(("use1", "eastwest.use1.example", 15443, True)), targets)
        health = ev.health({"use1": False, "aps1": False}, {"use1": 1.0, "aps1": 1.0}, ["aps1"], 10.0, 0.0)
        assert health["use1"].reached_by == frozenset()
        health = ev.health({"use1": False, "aps1": True}, {"use1": 1.0, "aps1": 1.0}, ["aps1"], 10.0, 0.0)
        assert health["use1"].reached_by == frozenset({"aps1"})
        # a cluster whose liveness has not changed since the hub started counts from the start
        assert health["aps1"].since == 0.0
    finally:
        registry.close()


def test_a_resource_named_in_a_source_error_has_a_key() -> None:
    from mgmt.model import cr_ref, ref_key
    assert ref_key(cr_ref("MulticlusterService", "bookinfo", "ratings")) == "MulticlusterService/bookinfo/ratings"
    assert ref_key("policies/ratings.yaml") is None


def test_a_lost_cluster_whose_probers_the_hub_lost_too_is_not_evicted() -> None:
    unconfirmed = healthy(a=Health(False, 80.0, probers=frozenset({"b", "c"})))
    result = run(unconfirmed)
    assert result.state.evicted() == {}
    assert kinds(result) == [("Partitioned", "a")]
    assert "every cluster probing its east-west gateway (b, c) too" in result.events[0].message
    assert run(unconfirmed, result.state, now=101.0).events == ()
    # one prober is heard again and cannot reach it: confirmed
    confirmed = healthy(a=Health(False, 80.0, missed_by=frozenset({"b"}), probers=frozenset({"b", "c"})))
    assert kinds(run(confirmed, result.state, now=102.0)) == [("Evicted", "a")]
