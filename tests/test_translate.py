"""mgmt.translate: what each cluster must know, from one frozen snapshot (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshfleet.intents import (
    EAST_WEST_PORT,
    Backend,
    ClusterRef,
    Port,
    Subset,
    TrafficSplit,
    WeightedTarget,
    encode,
)
from mgmt.model import DiscoveredService, Discovery, RouteTarget, Snapshot, TrafficPolicy
from mgmt.translate import Problem, redistribute, translate

US, EU, AP = "us-east-1", "eu-west-1", "ap-south-1"
CLUSTERS: dict[str, ClusterRef] = {
    US: ClusterRef(US, "us-east", "us-east-1a", "net-us-east"),
    EU: ClusterRef(EU, "eu-west", "eu-west-1a", "net-eu-west"),
    AP: ClusterRef(AP, "ap-south", "ap-south-1a", "net-ap-south"),
}
HTTP = (Port("http", 9080, "HTTP"),)
NS = "bookinfo"
K = TypeVar("K")
V = TypeVar("V")


def gateway(cluster: str) -> str:
    return f"eastwest.{cluster}.example"


def service(name: str, *subsets: str, ports: tuple[Port, ...] = HTTP) -> DiscoveredService:
    return DiscoveredService(NS, name, ports, tuple(Subset(s, {"version": s}) for s in subsets))


def discovery(cluster: str, *services: DiscoveredService, address: str | None = None) -> Discovery:
    return Discovery(gateway(cluster) if address is None else address, EAST_WEST_PORT,
                     {(s.namespace, s.name): s for s in services})


def policy(name: str, svc: str, route: Sequence[tuple[str, int]], clients: Sequence[str] | None = None,
           namespace: str = NS) -> TrafficPolicy:
    return TrafficPolicy(namespace, name, svc, tuple(RouteTarget(c, w) for c, w in route),
                         None if clients is None else tuple(clients), f"policies.yaml:{len(name)}")


# reviews runs in us-east-1 (v1, v2) and eu-west-1 (v3), not in ap-south-1.
REVIEWS_US = service("reviews", "v1", "v2")
REVIEWS_EU = service("reviews", "v3")
DEFAULT_DISCOVERY: dict[str, Discovery] = {
    US: discovery(US, REVIEWS_US),
    EU: discovery(EU, REVIEWS_EU),
    AP: discovery(AP, service("productpage")),
}
SPLIT_80_20 = policy("reviews-split", "reviews", [(US, 80), (EU, 20)])


def snapshot(*policies: TrafficPolicy, discovery: Mapping[str, Discovery] | None = None) -> Snapshot:
    return Snapshot(CLUSTERS, DEFAULT_DISCOVERY if discovery is None else discovery, policies)


def targets(*pairs: tuple[str, int]) -> tuple[WeightedTarget, ...]:
    return tuple(WeightedTarget(c, w) for c, w in pairs)


# --- the nominal case: one split, rendered for every client cluster --------------------------------------------


@pytest.mark.parametrize("client", [
    pytest.param(US, id="us-east-1-runs-one-copy"),
    pytest.param(EU, id="eu-west-1-runs-the-other-copy"),
    pytest.param(AP, id="ap-south-1-runs-none"),
])
def test_split_80_20_is_rendered_for_every_client_cluster(client: str) -> None:
    result = translate(snapshot(SPLIT_80_20), client)

    assert result.problems == ()
    assert result.intent.cluster == CLUSTERS[client]
    [svc] = result.intent.services
    assert (svc.namespace, svc.name, svc.ports) == (NS, "reviews", HTTP)
    # backends come sorted by cluster name, each with its gateway; the client spots its own copy by name
    expected = tuple(Backend(CLUSTERS[name], address=gateway(name), port=EAST_WEST_PORT, subsets=found.subsets)
                     for name, found in ((EU, REVIEWS_EU), (US, REVIEWS_US)))
    assert svc.backends == expected
    split = TrafficSplit("bookinfo/reviews-split", NS, "reviews", targets((US, 80), (EU, 20)))
    assert result.intent.traffic == (split,)


def test_every_client_shares_one_service_object() -> None:
    """What makes encoding a fleet cost one serialization per service (intents.Encoder)."""
    snap = snapshot(SPLIT_80_20)
    services = {id(translate(snap, c).intent.services[0]) for c in (US, EU, AP)}
    assert len(services) == 1


def test_remote_backend_carries_network_and_locality_of_its_cluster() -> None:
    [svc] = translate(snapshot(SPLIT_80_20), AP).intent.services
    remote = {b.cluster.name: b for b in svc.backends}
    assert (remote[US].cluster.network, remote[US].cluster.region, remote[US].cluster.zone) == (
        "net-us-east", "us-east", "us-east-1a")
    assert remote[US].cluster.locality == "us-east/us-east-1a"
    assert (remote[EU].address, remote[EU].port, remote[EU].cluster.network) == (
        gateway(EU), EAST_WEST_PORT, "net-eu-west")


# --- clients.clusters scoping -----------------------------------------------------------------------------------

SCOPED = policy("reviews-for-eu", "reviews", [(US, 100)], clients=[EU])


@pytest.mark.parametrize(
    ("client", "services", "backends"),
    [
        pytest.param(EU, ["reviews"], [EU, US], id="selected-cluster-gets-policy-and-service"),
        # the serving side: us-east-1's gateway must know the global host to route eu-west-1's calls
        pytest.param(US, ["reviews"], [US], id="unselected-cluster-running-the-service-serves-it-only"),
        pytest.param(AP, [], [], id="unselected-cluster-gets-nothing"),
    ],
)
def test_clients_clusters_scopes_policy_and_service(client: str, services: list[str], backends: list[str]) -> None:
    result = translate(snapshot(SCOPED), client)

    assert result.problems == ()
    assert result.intent.cluster == CLUSTERS[client]
    assert [s.name for s in result.intent.services] == services
    assert [b.cluster.name for s in result.intent.services for b in s.backends] == backends
    assert [t.policy for t in result.intent.traffic] == (["bookinfo/reviews-for-eu"] if client == EU else [])


def test_unselected_cluster_still_gets_other_policies() -> None:
    everyone = policy("productpage-all", "productpage", [(AP, 100)])
    result = translate(snapshot(SCOPED, everyone), US)
    assert [s.name for s in result.intent.services] == ["productpage", "reviews"]
    assert [t.policy for t in result.intent.traffic] == ["bookinfo/productpage-all"]


# --- problems and redistribution --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    policies: tuple[TrafficPolicy, ...]
    client: str
    services: tuple[str, ...]  # names of the services the intent carries
    traffic: Mapping[str, tuple[WeightedTarget, ...]]  # policy key -> targets
    problems: tuple[tuple[str, str], ...]  # (policy key, substring of the message), one per expected problem
    discovery: Mapping[str, Discovery] = field(default_factory=lambda: DEFAULT_DISCOVERY)
    backends: tuple[str, ...] | None = None  # cluster names backing the (single) service, when checked


PROBLEM_CASES = [
    pytest.param(Case(
        policies=(policy("r", "reviews", [(US, 60), (EU, 20), ("mars-1", 20)]),),
        client=AP, services=("reviews",),
        traffic={"bookinfo/r": targets((US, 75), (EU, 25))},
        problems=(("bookinfo/r", "route names unknown cluster 'mars-1'"),),
    ), id="unknown-route-cluster-weight-redistributed"),
    pytest.param(Case(
        policies=(policy("r", "reviews", [(US, 50), (EU, 30), (AP, 20)]),),
        client=US, services=("reviews",),
        # 50:30 scaled is 62.5:37.5; the tie on the remainder goes to the first
        traffic={"bookinfo/r": targets((US, 63), (EU, 37))},
        problems=(("bookinfo/r", "cluster ap-south-1 has no reachable backend of bookinfo/reviews"),),
    ), id="route-cluster-without-the-service-proportional-redistribution"),
    pytest.param(Case(
        policies=(policy("r", "reviews", [(US, 10), (EU, 20), (AP, 70)]),),
        client=EU, services=("reviews",),
        traffic={"bookinfo/r": targets((US, 33), (EU, 67))},
        problems=(("bookinfo/r", "cluster ap-south-1 has no reachable backend"),),
    ), id="most-weight-on-missing-cluster-still-sums-to-100"),
    pytest.param(Case(
        policies=(SPLIT_80_20,),
        client=AP, services=("reviews",),
        discovery={**DEFAULT_DISCOVERY, EU: discovery(EU, REVIEWS_EU, address="")},
        traffic={"bookinfo/reviews-split": targets((US, 100))},
        problems=(
            ("bookinfo/reviews-split", "cluster eu-west-1 backs bookinfo/reviews but reports no east-west gateway"),
            ("bookinfo/reviews-split", "cluster eu-west-1 has no reachable backend of bookinfo/reviews"),
        ),
        backends=(US,),
    ), id="backend-without-gateway-left-out"),
    pytest.param(Case(
        policies=(SPLIT_80_20,),
        client=EU, services=("reviews",),
        discovery={**DEFAULT_DISCOVERY, EU: discovery(EU, REVIEWS_EU, address="")},
        traffic={"bookinfo/reviews-split": targets((US, 80), (EU, 20))},
        # still worth reporting: every other client loses that backend
        problems=(("bookinfo/reviews-split", "only its own clients reach it"),),
        backends=(EU, US),
    ), id="own-copy-needs-no-gateway"),
    pytest.param(Case(
        policies=(SPLIT_80_20,),
        client=AP, services=("reviews",),
        discovery={US: DEFAULT_DISCOVERY[US], AP: DEFAULT_DISCOVERY[AP]},
        traffic={"bookinfo/reviews-split": targets((US, 100))},
        problems=(("bookinfo/reviews-split", "cluster eu-west-1 has no reachable backend"),),
        backends=(US,),
    ), id="route-cluster-without-discovery-report"),
    pytest.param(Case(
        # listed out of order on purpose: the winner is chosen by namespace/name, not by position
        policies=(policy("b-split", "reviews", [(EU, 100)]), policy("a-split", "reviews", [(US, 100)])),
        client=AP, services=("reviews",),
        traffic={"bookinfo/a-split": targets((US, 100))},
        problems=(("bookinfo/b-split", "conflicts with TrafficPolicy bookinfo/a-split in cluster ap-south-1"),),
    ), id="two-policies-same-destination-first-by-name-wins"),
    pytest.param(Case(
        # the route's only target does not run the service: exporting it without the route would
        # spread traffic over clusters the policy excludes
        policies=(policy("r", "reviews", [(AP, 100)]),),
        # us-east-1 still serves its own copy (local endpoint only), with no route to other clusters
        client=US, services=("reviews",), traffic={}, backends=(US,),
        discovery={US: DEFAULT_DISCOVERY[US], EU: DEFAULT_DISCOVERY[EU]},
        problems=(("bookinfo/r", "cluster ap-south-1 has no reachable backend"),
                  ("bookinfo/r", "no weighted route target is reachable; the policy is not applied")),
    ), id="no-reachable-target-no-service"),
    pytest.param(Case(
        policies=(policy("ghost", "ghost", [(US, 100)]),),
        client=US, services=(), traffic={},
        problems=(("bookinfo/ghost", "no cluster reports service bookinfo/ghost"),),
    ), id="no-backends-no-service"),
    pytest.param(Case(
        policies=(policy("ghost", "ghost", [(US, 100)]), SPLIT_80_20),
        client=AP, services=("reviews",),
        traffic={"bookinfo/reviews-split": targets((US, 80), (EU, 20))},
        problems=(("bookinfo/ghost", "no cluster reports service bookinfo/ghost"),),
    ), id="problem-in-one-policy-leaves-the-other-intact"),
]


@pytest.mark.parametrize("case", PROBLEM_CASES)
def test_problems_and_redistribution(case: Case) -> None:
    result = translate(Snapshot(CLUSTERS, case.discovery, case.policies), case.client)

    assert tuple(s.name for s in result.intent.services) == case.services
    assert {t.policy: t.targets for t in result.intent.traffic} == case.traffic
    for split in result.intent.traffic:
        assert sum(t.weight for t in split.targets) == 100
    assert len(result.problems) == len(case.problems), result.problems
    for key, text in case.problems:
        assert any(p.policy == key and text in p.message for p in result.problems), (key, text, result.problems)
    if case.backends is not None:
        [svc] = result.intent.services
        assert tuple(b.cluster.name for b in svc.backends) == case.backends


def test_problems_are_sorted_and_unique() -> None:
    policies = (policy("z", "ghost", [(US, 100)]), policy("a", "nothing", [(US, 100)]))
    problems = translate(snapshot(*policies), US).problems
    assert problems == tuple(sorted(set(problems)))
    assert [p.policy for p in problems] == ["bookinfo/a", "bookinfo/z"]
    assert all(isinstance(p, Problem) for p in problems)


# --- determinism -------------------------------------------------------------------------------------------------


def _ordered(items: list[tuple[K, V]], reverse: bool) -> dict[K, V]:
    return dict(reversed(items) if reverse else items)


def _rich_snapshot(reverse: bool) -> Snapshot:
    """The same content with every dict and the policy tuple built in opposite orders."""

    def disc(cluster: str, *names: str) -> Discovery:
        services = [((NS, n), DiscoveredService(NS, n, HTTP, (
            Subset("v1", _ordered([("version", "v1"), ("app", n), ("tier", "backend")], reverse)),)))
            for n in names]
        return Discovery(gateway(cluster), EAST_WEST_PORT, _ordered(services, reverse))

    found = _ordered([(US, disc(US, "reviews", "details")), (EU, disc(EU, "reviews", "ratings")),
                      (AP, disc(AP, "details", "ratings"))], reverse)
    policies = [
        policy("reviews-split", "reviews", [(US, 80), (EU, 20)]),
        policy("details-split", "details", [(US, 50), (AP, 50)], clients=[US, EU]),
        policy("ratings-eu", "ratings", [(AP, 30), (EU, 70)], clients=[EU]),
        policy("zz-conflict", "reviews", [(EU, 100)]),
        policy("ghost", "ghost", [(US, 100)]),
    ]
    return Snapshot(_ordered(list(CLUSTERS.items()), reverse), found,
                    tuple(reversed(policies)) if reverse else tuple(policies))


@pytest.mark.parametrize("client", [pytest.param(c, id=c) for c in CLUSTERS])
def test_same_snapshot_gives_identical_bytes(client: str) -> None:
    snap = _rich_snapshot(reverse=False)
    first, second = translate(snap, client), translate(snap, client)
    assert encode(first.intent) == encode(second.intent)
    assert first.problems == second.problems


@pytest.mark.parametrize("client", [pytest.param(c, id=c) for c in CLUSTERS])
def test_insertion_order_does_not_change_the_bytes(client: str) -> None:
    a, b = translate(_rich_snapshot(reverse=False), client), translate(_rich_snapshot(reverse=True), client)
    assert a.intent.services  # the case is not vacuous
    assert encode(a.intent) == encode(b.intent)
    assert a.problems == b.problems


def test_translate_does_not_mutate_snapshot() -> None:
    snap = _rich_snapshot(reverse=False)
    before = repr(snap)
    for client in CLUSTERS:
        translate(snap, client)
    assert repr(snap) == before


# --- redistribute ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        pytest.param([("a", 80), ("b", 20)], [("a", 80), ("b", 20)], id="already-100-unchanged"),
        pytest.param([("a", 50), ("b", 30)], [("a", 63), ("b", 37)], id="tie-on-remainder-goes-to-first"),
        pytest.param([("a", 1), ("b", 1), ("c", 1)], [("a", 34), ("b", 33), ("c", 33)], id="thirds"),
        pytest.param([("a", 0), ("b", 5)], [("b", 100)], id="zero-weight-dropped"),
        pytest.param([("a", 0), ("b", 0)], [], id="all-zero-gives-nothing"),
        pytest.param([], [], id="empty"),
        pytest.param([("b", 1), ("a", 2)], [("b", 33), ("a", 67)], id="order-kept-not-sorted"),
    ],
)
def test_redistribute_examples(weights: list[tuple[str, int]], expected: list[tuple[str, int]]) -> None:
    assert redistribute(weights) == targets(*expected)


weight_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=10).map(
    lambda ws: [(f"c{i}", w) for i, w in enumerate(ws)])


@given(weight_lists)
def test_redistribute_sums_to_100_when_any_weight_positive(weights: list[tuple[str, int]]) -> None:
    out = redistribute(weights)
    if any(w > 0 for _, w in weights):
        assert sum(t.weight for t in out) == 100
    else:
        assert out == ()


@given(weight_lists)
def test_redistribute_keeps_order_and_drops_zero_weights(weights: list[tuple[str, int]]) -> None:
    out = redistribute(weights)
    assert [t.cluster for t in out] == [c for c, w in weights if w > 0]


@given(weight_lists)
def test_redistribute_stays_within_1_of_exact_share(weights: list[tuple[str, int]]) -> None:
    total = sum(w for _, w in weights)
    given_weight = dict(weights)
    for t in redistribute(weights):
        exact = Fraction(given_weight[t.cluster] * 100, total)
        assert abs(t.weight - exact) < 1, (t, exact)


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=5).map(
    lambda ws: [(f"c{i}", w) for i, w in enumerate(ws)]))
def test_redistribute_never_zeroes_a_target_when_weights_are_percentages(weights: list[tuple[str, int]]) -> None:
    # what is left of a route (weights 0-100 summing to at most 100) only grows when scaled up to 100
    assert all(t.weight >= w for t, (_, w) in zip(redistribute(weights), weights, strict=True))


@given(weight_lists)
def test_redistribute_rounds_up_the_largest_remainders(weights: list[tuple[str, int]]) -> None:
    total = sum(w for _, w in weights)
    given_weight = dict(weights)
    up: list[Fraction] = []
    down: list[Fraction] = []
    for t in redistribute(weights):
        exact = Fraction(given_weight[t.cluster] * 100, total)
        (up if t.weight > exact else down).append(exact - int(exact))
    assert not up or not down or min(up) >= max(down)
