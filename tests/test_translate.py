"""mgmt.translate: what each cluster must know, from one frozen snapshot (pure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshfleet.intents import (
    EAST_WEST_PORT,
    AccessOperation,
    AccessRule,
    AccessSource,
    Backend,
    ClusterIntent,
    Mirror,
    MtlsRule,
    OutlierDetection,
    Port,
    RequestMatch,
    RouteRule,
    StringMatch,
    TrafficRoute,
    WeightedTarget,
    encode,
)
from mgmt.model import (
    AccessFrom,
    AccessPolicy,
    ClusterSelector,
    Destination,
    DiscoveredService,
    Discovery,
    FailoverPolicy,
    HttpRule,
    MulticlusterService,
    Requirement,
    Resource,
    Resources,
    Snapshot,
    TrafficPolicy,
)
from mgmt.topology import concerned, topology
from mgmt.translate import Problem, Translation, redistribute, resource_problems, translate
from tests.snapshots import (
    AP,
    CLUSTERS,
    DISCOVERY,
    EU,
    HTTP,
    LABELS,
    NS,
    REVIEWS_EU,
    REVIEWS_US,
    TCP,
    US,
    clusters,
    gateway,
    mcs,
    meta,
    report,
    rules,
    service,
    snapshot,
    split,
    targets_of,
    to_mcs,
    to_service,
    weighted,
)

TP = "TrafficPolicy/bookinfo/"
MCS = "MulticlusterService/bookinfo/"
FP = "FailoverPolicy/bookinfo/"
AC = "AccessPolicy/bookinfo/"
EARLY, LATE = "2025-06-01T00:00:00Z", "2026-01-01T00:00:00Z"
REVIEWS_PODS = (("app", "reviews"),)


def backend(cluster: str, found: DiscoveredService, address: str | None = None) -> Backend:
    return Backend(CLUSTERS[cluster], gateway(cluster) if address is None else address, EAST_WEST_PORT, found.subsets)


def route(policy: str, svc: str, *rule_list: RouteRule) -> TrafficRoute:
    return TrafficRoute(f"{NS}/{policy}", NS, svc, rule_list)


def default(*pairs: tuple[str, int] | tuple[str, int, str]) -> RouteRule:
    return RouteRule("default", weighted(*pairs))


def translate_all(snap: Snapshot) -> dict[str, Translation]:
    return {c: translate(snap, c) for c in sorted(snap.clusters)}


def services_of(intent: ClusterIntent) -> dict[str, tuple[str, ...]]:
    """Service name -> the clusters backing it, as the intent lists them."""
    return {s.name: tuple(b.cluster.name for b in s.backends) for s in intent.services}


def assert_problems(found: tuple[Problem, ...], expected: list[tuple[str, str]]) -> None:
    """Exactly the expected problems: one per (resource key, substring of its message)."""
    assert len(found) == len(expected), found
    for key, text in expected:
        assert any(p.policy == key and text in p.message for p in found), (key, text, found)


# --- a TrafficPolicy on a plain Service (spec.route) -----------------------------------------------------------

SPLIT = split("reviews-split", "reviews", [(US, 80), (EU, 20)])


@pytest.mark.parametrize("client", [
    pytest.param(US, id="runs-one-copy"),
    pytest.param(EU, id="runs-the-other-copy"),
    pytest.param(AP, id="runs-none"),
])
def test_split_reaches_every_client_with_its_weights(client: str) -> None:
    result = translate(snapshot(SPLIT), client)

    assert result.problems == ()
    assert result.intent.cluster == CLUSTERS[client]
    [svc] = result.intent.services
    assert (svc.namespace, svc.name, svc.host, svc.service, svc.ports) == (
        NS, "reviews", "reviews.bookinfo.global", "reviews", HTTP)
    # every backend with its gateway, sorted by cluster; a client spots its own copy by name
    assert svc.backends == (backend(EU, REVIEWS_EU), backend(US, REVIEWS_US))
    assert result.intent.traffic == (route("reviews-split", "reviews", default((US, 80), (EU, 20))),)
    assert result.applied == {TP + "reviews-split"}


def test_remote_backend_carries_network_and_locality_of_its_cluster() -> None:
    [svc] = translate(snapshot(SPLIT), AP).intent.services
    remote = {b.cluster.name: b for b in svc.backends}
    assert remote[US].cluster.locality == "us-east/us-east-1a"
    assert (remote[EU].address, remote[EU].port, remote[EU].cluster.network) == (
        gateway(EU), EAST_WEST_PORT, "net-eu-west")


@pytest.mark.parametrize(("client", "services", "routed"), [
    pytest.param(EU, {"reviews": (EU, US)}, True, id="client-gets-service-and-route"),
    # us-east-1's gateway must know the global host to route eu-west-1's calls by SNI
    pytest.param(US, {"reviews": (US,)}, False, id="non-client-backing-it-serves-its-own-copy-only"),
    pytest.param(AP, {}, False, id="non-client-gets-nothing"),
])
def test_clients_restrict_a_split(client: str, services: dict[str, tuple[str, ...]], routed: bool) -> None:
    result = translate(snapshot(split("for-eu", "reviews", [(US, 100)], clients=[EU])), client)
    assert result.problems == ()
    assert services_of(result.intent) == services
    assert [t.policy for t in result.intent.traffic] == (["bookinfo/for-eu"] if routed else [])
    assert (TP + "for-eu" in result.applied) is routed


@dataclass(frozen=True)
class Case:
    policies: tuple[TrafficPolicy, ...]
    client: str
    services: Mapping[str, tuple[str, ...]]  # service name -> backing clusters in the intent
    traffic: Mapping[str, tuple[RouteRule, ...]]  # TrafficRoute.policy -> its rules
    problems: list[tuple[str, str]]  # (resource key, substring of the message), one per expected problem
    discovery: Mapping[str, Discovery] = field(default_factory=lambda: DISCOVERY)


EU_NO_GATEWAY = {**DISCOVERY, EU: report(EU, REVIEWS_EU, service("ratings"), address="")}

ROUTE_CASES = [
    pytest.param(Case(
        (split("r", "reviews", [(US, 60), (EU, 20), ("mars-1", 20)]),), AP, {"reviews": (EU, US)},
        {"bookinfo/r": (default((US, 75), (EU, 25)),)},
        [(TP + "r", "spec.route names unknown cluster 'mars-1'")],
    ), id="unknown-route-cluster-weight-redistributed"),
    pytest.param(Case(
        (split("r", "reviews", [(US, 50), (EU, 30), (AP, 20)]),), US, {"reviews": (EU, US)},
        # 50:30 is 62.5:37.5; the tie on the remainder goes to the first
        {"bookinfo/r": (default((US, 63), (EU, 37)),)},
        [(TP + "r", "spec.route: cluster ap-south-1 has no reachable backend of bookinfo/reviews; its weight goes "
                    "to the others")],
    ), id="target-not-running-the-service-largest-remainder"),
    pytest.param(Case(
        (split("r", "reviews", [(US, 10), (EU, 20), (AP, 70)]),), EU, {"reviews": (EU, US)},
        {"bookinfo/r": (default((US, 33), (EU, 67)),)},
        [(TP + "r", "cluster ap-south-1 has no reachable backend")],
    ), id="most-weight-unreachable-still-sums-to-100"),
    pytest.param(Case(
        (split("r", "reviews", [(AP, 100)]),), AP, {}, {},
        [(TP + "r", "cluster ap-south-1 has no reachable backend"),
         (TP + "r", "spec.route: no route target is reachable; the policy is not applied")],
    ), id="nothing-reachable-not-applied-and-service-not-sent"),
    pytest.param(Case(
        (split("r", "reviews", [(AP, 100)]),), US, {"reviews": (US,)}, {},
        [(TP + "r", "cluster ap-south-1 has no reachable backend"),
         (TP + "r", "spec.route: no route target is reachable; the policy is not applied")],
    ), id="nothing-reachable-a-backing-cluster-still-serves-its-copy"),
    pytest.param(Case(
        (SPLIT,), AP, {"reviews": (US,)}, {"bookinfo/reviews-split": (default((US, 100)),)},
        [(TP + "reviews-split", "cluster eu-west-1 backs bookinfo/reviews but reports no east-west gateway "
                                "address; only its own clients reach it"),
         (TP + "reviews-split", "cluster eu-west-1 has no reachable backend of bookinfo/reviews")],
        EU_NO_GATEWAY,
    ), id="backend-without-gateway-unreachable-from-others"),
    pytest.param(Case(
        (SPLIT,), EU, {"reviews": (EU, US)}, {"bookinfo/reviews-split": (default((US, 80), (EU, 20)),)},
        [(TP + "reviews-split", "only its own clients reach it")],  # still worth saying: others lose it
        EU_NO_GATEWAY,
    ), id="backend-without-gateway-reachable-by-its-own-cluster"),
    pytest.param(Case(
        (SPLIT,), AP, {"reviews": (US,)}, {"bookinfo/reviews-split": (default((US, 100)),)},
        [(TP + "reviews-split", "cluster eu-west-1 has no reachable backend")],
        {US: DISCOVERY[US], AP: DISCOVERY[AP]},
    ), id="target-cluster-without-discovery-report"),
    pytest.param(Case(
        (split("ghost", "ghost", [(US, 100)]),), US, {}, {},
        [(TP + "ghost", "no cluster offers a reachable backend of bookinfo/ghost; nothing to route to")],
    ), id="service-nobody-runs"),
    pytest.param(Case(
        (split("ghost", "ghost", [(US, 100)]), SPLIT), AP, {"reviews": (EU, US)},
        {"bookinfo/reviews-split": (default((US, 80), (EU, 20)),)},
        [(TP + "ghost", "nothing to route to")],
    ), id="a-broken-policy-leaves-the-other-intact"),
]


@pytest.mark.parametrize("case", ROUTE_CASES)
def test_routes_and_redistribution(case: Case) -> None:
    result = translate(snapshot(*case.policies, discovery=case.discovery), case.client)

    assert services_of(result.intent) == case.services
    assert {t.policy: t.rules for t in result.intent.traffic} == case.traffic
    assert all(sum(t.weight for t in r.targets) == 100 for t in result.intent.traffic for r in t.rules)
    assert_problems(result.problems, case.problems)
    assert result.applied == {TP + t.policy.split("/")[1] for t in result.intent.traffic}


def test_a_backend_without_gateway_is_reachable_only_by_its_own_cluster() -> None:
    found = translate_all(snapshot(SPLIT, discovery=EU_NO_GATEWAY))
    assert {c: services_of(t.intent)["reviews"] for c, t in found.items()} == {AP: (US,), EU: (EU, US), US: (US,)}
    [own] = [b for b in found[EU].intent.services[0].backends if b.cluster.name == EU]
    assert own.address == ""  # the agent reaches it directly, not through a gateway


# --- MulticlusterService -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backends", "expected"), [
    pytest.param(clusters(US, AP), (AP, US), id="explicit-clusters"),
    pytest.param(ClusterSelector(match_labels=(("env", "prod"),)), (EU, US), id="match-labels"),
    pytest.param(ClusterSelector(match_expressions=(Requirement("canary", "Exists"),)), (EU,), id="expression"),
])
def test_multicluster_service_backends_reach_every_receiver(backends: ClusterSelector,
                                                            expected: tuple[str, ...]) -> None:
    found = translate_all(snapshot(mcs("ratings", backends)))
    for cluster, result in found.items():
        assert services_of(result.intent) == {"ratings": expected}, cluster
        assert result.applied == {MCS + "ratings"}
        assert result.problems == ()


@pytest.mark.parametrize(("client", "services"), [
    pytest.param(EU, {"reviews": (EU, US)}, id="exported-to-it"),
    pytest.param(US, {"reviews": (US,)}, id="not-exported-but-backing-it-serves-its-own-copy"),
    pytest.param(AP, {}, id="neither"),
])
def test_export_to_restricts_receivers(client: str, services: dict[str, tuple[str, ...]]) -> None:
    result = translate(snapshot(mcs("reviews", clusters(US, EU), clusters(EU))), client)
    assert services_of(result.intent) == services
    assert (MCS + "reviews" in result.applied) is bool(services)


def test_custom_host_and_backing_service_are_carried() -> None:
    declared = (Port("http-alt", 8080, "HTTP"),)
    snap = snapshot(mcs("reviews-global", clusters(US, EU), svc="reviews", host="reviews.mesh.example",
                        ports=declared))
    [svc] = translate(snap, AP).intent.services
    assert (svc.namespace, svc.name, svc.host, svc.service, svc.ports) == (
        NS, "reviews-global", "reviews.mesh.example", "reviews", declared)


def test_a_selected_cluster_not_reporting_the_service_is_no_backend() -> None:
    found = translate_all(snapshot(mcs("reviews", clusters(US, EU, AP))))
    assert {c: services_of(t.intent) for c, t in found.items()} == {c: {"reviews": (EU, US)} for c in found}
    assert [p.policy for p in resource_problems(snapshot(mcs("reviews", clusters(US, EU, AP))))] == [MCS + "reviews"]


def test_two_multicluster_services_with_one_host_only_the_older_is_sent() -> None:
    snap = snapshot(mcs("b-old", clusters(US), svc="ratings", host="ratings.example", created=EARLY),
                    mcs("a-new", clusters(EU), svc="ratings", host="ratings.example", created=LATE))
    for cluster, result in translate_all(snap).items():
        assert services_of(result.intent) == {"b-old": (US,)}, cluster
        assert MCS + "a-new" not in result.applied
    assert concerned(snap)[MCS + "a-new"] == ()
    assert_problems(resource_problems(snap), [(MCS + "a-new", "host ratings.example is already served by")])


def test_a_plain_service_whose_host_a_multicluster_service_holds_is_reported() -> None:
    snap = snapshot(mcs("other", clusters(US), svc="ratings", host="reviews.bookinfo.global"),
                    split("s", "reviews", [(US, 100)]))
    for result in translate_all(snap).values():
        hosts = [s.host for s in result.intent.services]
        assert len(hosts) == len(set(hosts))
    assert resource_problems(snap) != ()


# --- what destination.service / destination.multiclusterService resolve to ---------------------------------------

REVIEWS_GLOBAL = mcs("reviews-global", clusters(US, EU), svc="reviews")


def test_destination_service_routes_the_multicluster_service_exporting_it() -> None:
    snap = snapshot(REVIEWS_GLOBAL, split("s", "reviews", [(US, 80), (EU, 20)]))
    for cluster, result in translate_all(snap).items():
        assert services_of(result.intent) == {"reviews-global": (EU, US)}, cluster
        assert result.intent.traffic == (route("s", "reviews-global", default((US, 80), (EU, 20))),)
        assert result.applied == {MCS + "reviews-global", TP + "s"}


@pytest.mark.parametrize(("resources", "message"), [
    pytest.param((REVIEWS_GLOBAL, mcs("reviews-backup", clusters(EU), svc="reviews"),
                  split("s", "reviews", [(US, 100)])), "is exported by several MulticlusterServices", id="ambiguous"),
    pytest.param((REVIEWS_GLOBAL, split("s", to_mcs("reviews"), [(US, 100)])),
                 "MulticlusterService bookinfo/reviews does not exist", id="missing-multicluster-service"),
])
def test_unresolvable_destination_is_routed_nowhere(resources: tuple[Resource, ...], message: str) -> None:
    snap = snapshot(*resources)
    for result in translate_all(snap).values():
        assert result.intent.traffic == ()
        assert TP + "s" not in result.applied
        assert all(p.policy != TP + "s" for p in result.problems)  # a resource-level problem, not per cluster
    assert any(p.policy == TP + "s" and message in p.message for p in resource_problems(snap))
    assert concerned(snap)[TP + "s"] == ()


# --- TrafficPolicy spec.http ---------------------------------------------------------------------------------------

JASON = (RequestMatch(headers=(("end-user", StringMatch("exact", "jason")),)),)


def http(name: str, *route_targets: tuple[str, int] | tuple[str, int, str], matches: tuple[RequestMatch, ...] = (),
         mirror: Mirror | None = None, timeout: str = "") -> HttpRule:
    return HttpRule(name, targets_of(route_targets), matches, timeout=timeout, mirror=mirror)


@pytest.mark.parametrize(("policy", "rule_list", "problems"), [
    pytest.param(
        rules("c", "reviews", http("jason", (US, 100, "v2"), matches=JASON, timeout="3s"),
              http("default", (US, 90, "v1"), (EU, 10, "v3"))),
        (RouteRule("jason", weighted((US, 100, "v2")), JASON, "3s"),
         RouteRule("default", weighted((US, 90, "v1"), (EU, 10, "v3")))),
        [], id="subsets-routed-rules-in-order"),
    pytest.param(
        rules("c", "reviews", http("default", (US, 60, "v1"), (US, 20, "v2"), (EU, 20, "v9"))),
        (RouteRule("default", weighted((US, 75, "v1"), (US, 25, "v2"))),),
        [(TP + "c", "rule default: cluster eu-west-1 reports no subset 'v9' of bookinfo/reviews; its weight goes "
                    "to the others")], id="unknown-subset-weight-redistributed"),
    pytest.param(
        rules("c", "reviews", http("jason", (AP, 100, "v1"), matches=JASON), http("default", (EU, 100, "v3"))),
        (RouteRule("default", weighted((EU, 100, "v3"))),),
        [(TP + "c", "cluster ap-south-1 has no reachable backend"),
         (TP + "c", "rule jason: no route target is reachable; requests it matches go to the next rule")],
        id="match-rule-without-reachable-target-dropped"),
    pytest.param(
        rules("c", "reviews", http("default", (US, 100, "v1"), mirror=Mirror(AP, "v3", 5.0))),
        (RouteRule("default", weighted((US, 100, "v1"))),),
        [(TP + "c", "rule default mirror: cluster ap-south-1 has no reachable backend of bookinfo/reviews; "
                    "nothing is mirrored")], id="mirror-to-unreachable-cluster-dropped"),
    pytest.param(
        rules("c", "reviews", http("default", (US, 100, "v1"), mirror=Mirror(EU, "v1", 5.0))),
        (RouteRule("default", weighted((US, 100, "v1"))),),
        [(TP + "c", "rule default mirror: cluster eu-west-1 reports no subset 'v1' of bookinfo/reviews; nothing is "
                    "mirrored")], id="mirror-to-unknown-subset-dropped"),
    pytest.param(
        rules("c", "reviews", http("default", (US, 100, "v1"), mirror=Mirror(EU, "v3", 5.0))),
        (RouteRule("default", weighted((US, 100, "v1")), mirror=Mirror(EU, "v3", 5.0)),),
        [], id="reachable-mirror-kept"),
    pytest.param(
        rules("c", "reviews", http("jason", (US, 100, "v2"), matches=JASON), http("default", (AP, 100, "v1"))),
        None,
        [(TP + "c", "cluster ap-south-1 has no reachable backend"),
         (TP + "c", "rule default: no route target is reachable; the policy is not applied")],
        id="catch-all-without-reachable-target-not-applied"),
    pytest.param(
        rules("c", "reviews", http("jason", (AP, 100, "v1"), matches=JASON)),
        None,
        [(TP + "c", "cluster ap-south-1 has no reachable backend"),
         (TP + "c", "rule jason: no route target is reachable; requests it matches go to the next rule"),
         (TP + "c", "no rule has a reachable target; the policy is not applied")],
        id="only-match-rules-none-reachable-not-applied"),
])
def test_http_rules(policy: TrafficPolicy, rule_list: tuple[RouteRule, ...] | None,
                    problems: list[tuple[str, str]]) -> None:
    result = translate(snapshot(policy), AP)  # a client backing nothing: sees the service only with a route
    if rule_list is None:
        assert result.intent.traffic == ()
        assert result.intent.services == ()
        assert result.applied == frozenset()
    else:
        assert result.intent.traffic == (route("c", "reviews", *rule_list),)
        assert result.applied == {TP + "c"}
    assert_problems(result.problems, problems)


def test_spec_http_on_a_tcp_service_is_not_applied_but_spec_route_is() -> None:
    discovery = {**DISCOVERY, US: report(US, REVIEWS_US, service("mysql", ports=TCP))}
    snap = snapshot(rules("http", "mysql", http("default", (US, 100))), discovery=discovery)
    result = translate(snap, EU)
    assert (result.intent.traffic, result.intent.services) == ((), ())
    assert_problems(result.problems, [(TP + "http", "spec.http needs an HTTP port, but bookinfo/mysql has only TCP "
                                                    "ports; use spec.route; not applied")])

    result = translate(snapshot(split("route", "mysql", [(US, 100)]), discovery=discovery), EU)
    assert result.intent.traffic == (route("route", "mysql", default((US, 100))),)
    assert result.problems == ()


@pytest.mark.parametrize(("a_created", "b_created", "winner"), [
    pytest.param(EARLY, LATE, "a", id="older-cr-wins"),
    pytest.param(LATE, EARLY, "b", id="older-cr-wins-whatever-its-name"),
    pytest.param(LATE, "", "b", id="policy-file-is-older-than-any-cr"),
    pytest.param(EARLY, EARLY, "a", id="same-age-first-key-wins"),
])
def test_two_policies_on_one_destination_and_client_the_older_wins(a_created: str, b_created: str,
                                                                  winner: str) -> None:
    a = split("a", "reviews", [(US, 100)], created=a_created)
    b = split("b", "reviews", [(EU, 100)], created=b_created)
    loser = "b" if winner == "a" else "a"
    for cluster, result in translate_all(snapshot(a, b)).items():
        assert [t.policy for t in result.intent.traffic] == [f"{NS}/{winner}"]
        assert result.applied == {TP + winner}
        assert_problems(result.problems, [(
            TP + loser, f"TrafficPolicy {NS}/{winner} (older) already routes bookinfo/reviews in {cluster}; "
                        f"not applied in {cluster}")])


def test_a_losing_policy_applies_where_the_winner_has_no_client() -> None:
    older = split("a", "reviews", [(US, 100)], clients=[US, EU], created=EARLY)
    newer = split("b", "reviews", [(EU, 100)], clients=[EU, AP], created=LATE)
    found = translate_all(snapshot(older, newer))
    assert {c: [t.policy for t in r.intent.traffic] for c, r in found.items()} == {
        US: ["bookinfo/a"], EU: ["bookinfo/a"], AP: ["bookinfo/b"]}
    assert found[AP].problems == found[US].problems == ()
    assert_problems(found[EU].problems, [(TP + "b", "(older) already routes bookinfo/reviews in eu-west-1")])


# --- FailoverPolicy ------------------------------------------------------------------------------------------------

STRICT_OUTLIER = OutlierDetection(consecutive_5xx_errors=2, interval="5s", base_ejection_time="1m",
                                  max_ejection_percent=50)


def failover(name: str, dest: Destination, outlier: OutlierDetection = STRICT_OUTLIER,
             created: str = "") -> FailoverPolicy:
    return FailoverPolicy(meta("FailoverPolicy", name, created), dest, outlier)


def test_outlier_detection_lands_on_the_service_for_receivers() -> None:
    snap = snapshot(mcs("reviews", clusters(US, EU), clusters(EU, AP)), failover("f", to_mcs("reviews")))
    for cluster in (EU, AP):
        result = translate(snap, cluster)
        [svc] = result.intent.services
        assert svc.outlier == STRICT_OUTLIER
        assert FP + "f" in result.applied
    assert concerned(snap)[FP + "f"] == (AP, EU)


def test_without_failover_policy_clients_get_the_default_outlier_detection() -> None:
    snap = snapshot(mcs("reviews", clusters(US, EU), export_to=clusters(AP)))
    [svc] = translate(snap, AP).intent.services
    assert svc.outlier == OutlierDetection(5, "10s", "30s", 100)
    assert svc.priority == ()
    [served] = translate(snap, US).intent.services  # serving only: outlier detection acts on callers
    assert served.outlier is None


def test_two_failover_policies_the_older_one_is_applied() -> None:
    weak = OutlierDetection(consecutive_5xx_errors=9)
    snap = snapshot(mcs("reviews", clusters(US, EU)), failover("z-old", to_mcs("reviews"), created=EARLY),
                    failover("a-new", to_mcs("reviews"), weak, created=LATE))
    for result in translate_all(snap).values():
        assert [s.outlier for s in result.intent.services] == [STRICT_OUTLIER]
        assert FP + "a-new" not in result.applied
    assert_problems(resource_problems(snap), [(FP + "a-new", "FailoverPolicy bookinfo/z-old (older) already sets")])


def test_failover_on_a_plain_service_travels_with_its_route() -> None:
    snap = snapshot(split("s", "reviews", [(US, 100)], clients=[AP]), failover("f", to_service("reviews")))
    result = translate(snap, AP)
    assert [s.outlier for s in result.intent.services] == [STRICT_OUTLIER]
    assert result.applied == {TP + "s", FP + "f"}


# --- AccessPolicy --------------------------------------------------------------------------------------------------


def access(name: str, dest: Destination, *sources: AccessFrom, action: str = "ALLOW", mtls: str = "STRICT",
           operations: tuple[AccessOperation, ...] = (), created: str = "") -> AccessPolicy:
    return AccessPolicy(meta("AccessPolicy", name, created), dest, action, sources, operations, mtls)


READERS = access("readers", to_service("reviews"), AccessFrom(namespaces=(NS,), service_accounts=("productpage",)),
                 operations=(AccessOperation((9080,), ("GET",)),))


def test_access_rules_land_only_in_clusters_serving_the_service() -> None:
    found = translate_all(snapshot(READERS))
    rule = AccessRule("bookinfo/readers", NS, "ALLOW", REVIEWS_PODS,
                      (AccessSource((), ("*/ns/bookinfo/sa/productpage",)),), (AccessOperation((9080,), ("GET",)),))
    for cluster in (US, EU):
        assert found[cluster].intent.access == (rule,)
        assert found[cluster].intent.mtls == (MtlsRule("bookinfo/readers", NS, "STRICT", REVIEWS_PODS),)
        assert found[cluster].applied == {AC + "readers"}
        assert found[cluster].intent.services == ()  # guarding a Service does not export it
    assert (found[AP].intent.access, found[AP].intent.mtls, found[AP].applied) == ((), (), frozenset())


@pytest.mark.parametrize(("sources", "expected"), [
    pytest.param((AccessFrom(namespaces=("a", "b"), service_accounts=("x",)),),
                 (AccessSource((), ("*/ns/a/sa/x", "*/ns/b/sa/x")),), id="namespaces-and-service-accounts"),
    pytest.param((AccessFrom(service_accounts=("x", "y")),), (AccessSource((), ("*/sa/x", "*/sa/y")),),
                 id="service-accounts-of-any-namespace"),
    pytest.param((AccessFrom(namespaces=("a",)),), (AccessSource(("a",), ()),), id="namespaces-only"),
    pytest.param((AccessFrom(clusters=(AP, EU, US)),), (AccessSource(),), id="every-cluster-any-caller"),
    pytest.param((AccessFrom(namespaces=("a",)), AccessFrom(service_accounts=("x",))),
                 (AccessSource(("a",), ()), AccessSource((), ("*/sa/x",))), id="several-entries"),
    pytest.param((), (), id="no-from-any-caller"),
])
def test_access_sources_become_principals(sources: tuple[AccessFrom, ...],
                                          expected: tuple[AccessSource, ...]) -> None:
    result = translate(snapshot(access("a", to_service("reviews"), *sources)), US)
    [rule] = result.intent.access
    assert rule.sources == expected
    assert result.problems == ()


def test_namespace_wide_access_policy_reaches_every_cluster() -> None:
    snap = snapshot(access("deny-sandbox", Destination(all=True), AccessFrom(namespaces=("sandbox",)),
                           action="DENY"))
    for result in translate_all(snap).values():
        assert result.intent.access == (AccessRule("bookinfo/deny-sandbox", NS, "DENY", (),
                                                   (AccessSource(("sandbox",), ()),)),)
        assert result.intent.mtls == (MtlsRule("bookinfo/deny-sandbox", NS, "STRICT", ()),)
        assert result.applied == {AC + "deny-sandbox"}


def test_access_policy_narrowed_by_cluster_is_refused_everywhere() -> None:
    snap = snapshot(access("narrow", to_service("reviews"), AccessFrom(clusters=(US,))))
    for result in translate_all(snap).values():
        assert (result.intent.access, result.intent.mtls, result.applied) == ((), (), frozenset())
    assert_problems(resource_problems(snap), [(AC + "narrow", "from[0].clusters leaves out ap-south-1, eu-west-1")])
    assert concerned(snap)[AC + "narrow"] == ()


def test_service_without_pod_selector_is_guarded_nowhere_in_that_cluster() -> None:
    discovery = {**DISCOVERY, EU: report(EU, service("reviews", "v3", selector={}))}
    found = translate_all(snapshot(READERS, discovery=discovery))
    assert (found[EU].intent.access, found[EU].applied) == ((), frozenset())
    assert_problems(found[EU].problems, [(AC + "readers", "Service bookinfo/reviews in eu-west-1 has no pod "
                                                          "selector, so no workload can be guarded; not applied")])
    assert [r.policy for r in found[US].intent.access] == ["bookinfo/readers"]
    assert found[US].problems == ()


def test_two_access_policies_with_different_mtls_the_older_mode_wins() -> None:
    older = access("z-strict", to_service("reviews"), AccessFrom(namespaces=("a",)), created=EARLY)
    newer = access("a-permissive", to_service("reviews"), AccessFrom(namespaces=("b",)), mtls="PERMISSIVE",
                   created=LATE)
    result = translate(snapshot(older, newer), US)
    assert [r.policy for r in result.intent.access] == ["bookinfo/a-permissive", "bookinfo/z-strict"]
    assert result.intent.mtls == (MtlsRule("bookinfo/z-strict", NS, "STRICT", REVIEWS_PODS),)
    assert result.applied == {AC + "z-strict", AC + "a-permissive"}
    assert_problems(result.problems, [(AC + "a-permissive", (
        "mtls PERMISSIVE conflicts with AccessPolicy bookinfo/z-strict (older, mtls STRICT) for the same workloads "
        "in us-east-1; its access rules apply, its mtls mode does not"))])


def test_mtls_conflict_between_services_selecting_the_same_pods_is_reported() -> None:
    discovery = {**DISCOVERY, US: report(US, REVIEWS_US, service("reviews-canary", selector={"app": "reviews"}))}
    snap = snapshot(access("a", to_service("reviews"), created=EARLY),
                    access("b", to_service("reviews-canary"), mtls="PERMISSIVE", created=LATE), discovery=discovery)
    result = translate(snap, US)
    assert [m.mode for m in result.intent.mtls] == ["STRICT"]
    assert [p.policy for p in result.problems] == [AC + "b"]


def test_two_access_policies_with_the_same_mtls_give_one_mode_and_no_problem() -> None:
    result = translate(snapshot(access("a", to_service("reviews")), access("b", to_service("reviews"))), US)
    assert [m.policy for m in result.intent.mtls] == ["bookinfo/a"]
    assert result.problems == ()


# --- applied and concerned agree with the intent --------------------------------------------------------------------


def rich_resources() -> list[Resource]:
    """Every kind of resource, with conflicts, a refusal, gatewayless and selectorless cases."""
    return [
        mcs("reviews", clusters(US, EU), clusters(EU, AP)),
        mcs("ratings", ClusterSelector(match_labels=(("tier", "primary"),)), host="ratings.mesh.example"),
        mcs("ratings-copy", clusters(AP), svc="ratings", host="ratings.mesh.example", created=LATE),
        split("reviews-split", to_mcs("reviews"), [(US, 70), (EU, 30)], clients=[AP]),
        rules("reviews-canary", to_mcs("reviews"), http("default", (US, 90, "v1"), (EU, 10, "v3")), created=EARLY),
        split("productpage", "productpage", [(AP, 100)], clients=[US, EU]),
        split("details", "details", [(US, 100)], clients=[AP]),  # nobody runs details
        failover("reviews-failover", to_mcs("reviews")),
        failover("ratings-failover", to_mcs("ratings"), OutlierDetection(7)),
        failover("ratings-failover-2", to_mcs("ratings"), created=LATE),
        failover("productpage-failover", to_service("productpage"), OutlierDetection(3)),
        READERS,
        access("reviews-permissive", to_mcs("reviews"), mtls="PERMISSIVE", created=LATE),
        access("ratings-guard", to_mcs("ratings"), AccessFrom(clusters=(US,))),
        access("productpage-guard", to_service("productpage"), AccessFrom(namespaces=("web",))),
        access("deny-sandbox", Destination(all=True), AccessFrom(namespaces=("sandbox",)), action="DENY"),
    ]


RICH_DISCOVERY = {
    US: report(US, REVIEWS_US, service("ratings")),
    EU: report(EU, REVIEWS_EU, service("ratings", selector={})),
    AP: report(AP, service("productpage"), service("ratings"), address=""),
}
GATEWAYS_EVERYWHERE = {**RICH_DISCOVERY, AP: report(AP, service("productpage"), service("ratings"))}


def effect_in(resource: Resource, intent: ClusterIntent, received: set[str]) -> bool:
    """Whether the intent carries what `resource` asks of this cluster (`received`: names of the services it calls)."""
    name = f"{resource.meta.namespace}/{resource.meta.name}"
    if isinstance(resource, MulticlusterService):
        return any(s.name == resource.meta.name and s.namespace == resource.meta.namespace for s in intent.services)
    if isinstance(resource, TrafficPolicy):
        return any(t.policy == name for t in intent.traffic)
    if isinstance(resource, AccessPolicy):
        return any(a.policy == name for a in intent.access)
    # outlier detection acts on callers; a backing cluster's own copy is test_served_copy_* below
    dest = resource.destination.multicluster_service or resource.destination.service
    return dest in received and any(s.name == dest and s.outlier == resource.outlier for s in intent.services)


@pytest.mark.parametrize("discovery", [
    pytest.param(RICH_DISCOVERY, id="a-backend-without-gateway"),
    pytest.param(GATEWAYS_EVERYWHERE, id="gateways-everywhere"),
])
def test_applied_is_exactly_what_the_intent_carries(discovery: Mapping[str, Discovery]) -> None:
    snap = snapshot(*rich_resources(), discovery=discovery)
    scopes = concerned(snap)
    topo = topology(snap)
    for cluster, result in translate_all(snap).items():
        received = {name for (_, name), where in topo.receivers.items() if cluster in where}
        for resource in snap.resources.all():
            key = resource.meta.key
            carried = effect_in(resource, result.intent, received)
            assert (key in result.applied) is carried, (cluster, key, carried)
            if carried:
                assert cluster in scopes[key], (cluster, key)
        for p in result.problems:  # a cluster reports problems only of resources that concern it
            assert cluster in scopes[p.policy], (cluster, p)


def test_served_copy_carries_failover_only_where_the_policy_is_applied() -> None:
    snap = snapshot(mcs("reviews", clusters(US, EU), clusters(EU)), failover("f", to_mcs("reviews")))
    result = translate(snap, US)
    [svc] = result.intent.services
    assert (svc.outlier is not None) is (FP + "f" in result.applied)


@pytest.mark.parametrize("discovery", [
    pytest.param(GATEWAYS_EVERYWHERE, id="gateways-everywhere"),
    pytest.param(RICH_DISCOVERY, id="a-backend-without-gateway"),
])
def test_every_concerned_cluster_applies_the_resource_or_says_why(discovery: Mapping[str, Discovery]) -> None:
    """What the status of a resource shows per cluster: Applied, or a message."""
    snap = snapshot(*rich_resources(), discovery=discovery)
    found = translate_all(snap)
    for key, where in concerned(snap).items():
        for cluster in where:
            result = found[cluster]
            assert key in result.applied or any(p.policy == key for p in result.problems), (key, cluster)


def test_a_receiver_left_without_backend_is_told_why() -> None:
    discovery = {**DISCOVERY, AP: report(AP, service("productpage"), address="")}
    snap = snapshot(mcs("productpage", clusters(AP)), discovery=discovery)
    result = translate(snap, US)
    assert result.intent.services == ()
    assert [p.policy for p in (*result.problems, *resource_problems(snap))] == [MCS + "productpage"]


# --- purity and determinism ----------------------------------------------------------------------------------------


def fresh(snap: Snapshot) -> Snapshot:
    return dataclasses.replace(snap, memo={})


def reordered(snap: Snapshot) -> Snapshot:
    """The same content with every mapping and every resource tuple in the opposite order."""
    res = snap.resources
    return Snapshot(
        dict(reversed(list(snap.clusters.items()))),
        {c: Discovery(d.gateway_address, d.gateway_port, dict(reversed(list(d.services.items()))))
         for c, d in reversed(list(snap.discovery.items()))},
        Resources(tuple(reversed(res.services)), tuple(reversed(res.traffic)), tuple(reversed(res.failover)),
                  tuple(reversed(res.access))),
        {c: dict(reversed(list(labels.items()))) for c, labels in reversed(list(snap.labels.items()))},
    )


def encoded(found: Mapping[str, Translation]) -> dict[str, tuple[str, tuple[Problem, ...], frozenset[str]]]:
    return {c: (encode(t.intent)[0], t.problems, t.applied) for c, t in found.items()}


def test_translate_is_deterministic() -> None:
    snap = snapshot(*rich_resources(), discovery=RICH_DISCOVERY)
    first = encoded(translate_all(snap))
    assert encoded(translate_all(snap)) == first  # again, from the memo
    assert encoded(translate_all(fresh(snap))) == first  # again, from scratch


def test_resource_and_insertion_order_do_not_change_the_result() -> None:
    snap = snapshot(*rich_resources(), discovery=RICH_DISCOVERY)
    assert encoded(translate_all(reordered(snap))) == encoded(translate_all(snap))
    assert resource_problems(reordered(snap)) == resource_problems(snap)
    assert dict(concerned(reordered(snap))) == dict(concerned(snap))


def test_translate_does_not_mutate_its_input() -> None:
    snap = snapshot(*rich_resources(), discovery=RICH_DISCOVERY, labels={c: dict(v) for c, v in LABELS.items()})
    before = repr(snap)
    translate_all(snap)
    assert repr(snap) == before


def test_every_client_of_a_service_gets_the_same_object() -> None:
    """What makes encoding a fleet cost one serialization per service (intents.Encoder)."""
    snap = snapshot(mcs("ratings", ClusterSelector()), SPLIT)
    found = translate_all(snap)
    ratings = [next(s for s in r.intent.services if s.name == "ratings") for r in found.values()]
    reviews = [next(s for s in r.intent.services if s.name == "reviews") for r in found.values()]
    assert all(s is ratings[0] for s in ratings)
    assert all(s is reviews[0] for s in reviews)
    assert all(r.intent.traffic[0] is found[US].intent.traffic[0] for r in found.values())


# --- redistribute --------------------------------------------------------------------------------------------------


def keyed(*pairs: tuple[str, int]) -> list[tuple[tuple[str, str], int]]:
    return [((c, ""), w) for c, w in pairs]


@pytest.mark.parametrize(("weights", "expected"), [
    pytest.param(keyed(("a", 80), ("b", 20)), weighted(("a", 80), ("b", 20)), id="already-100-unchanged"),
    pytest.param(keyed(("a", 50), ("b", 30)), weighted(("a", 63), ("b", 37)), id="tie-on-remainder-goes-to-first"),
    pytest.param(keyed(("a", 1), ("b", 1), ("c", 1)), weighted(("a", 34), ("b", 33), ("c", 33)), id="thirds"),
    pytest.param(keyed(("a", 0), ("b", 5)), weighted(("b", 100)), id="zero-weight-dropped"),
    pytest.param(keyed(("a", 0), ("b", 0)), (), id="all-zero-gives-nothing"),
    pytest.param([], (), id="empty"),
    pytest.param(keyed(("b", 1), ("a", 2)), weighted(("b", 33), ("a", 67)), id="order-kept-not-sorted"),
    pytest.param([(("a", "v1"), 30), (("a", "v2"), 10)], weighted(("a", 75, "v1"), ("a", 25, "v2")),
                 id="subsets-of-one-cluster-are-separate-targets"),
])
def test_redistribute_examples(weights: list[tuple[tuple[str, str], int]],
                               expected: tuple[WeightedTarget, ...]) -> None:
    assert redistribute(weights) == expected


weight_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=10).map(
    lambda ws: [((f"c{i}", ""), w) for i, w in enumerate(ws)])


@given(weight_lists)
def test_redistribute_sums_to_100_keeps_order_and_drops_zeroes(weights: list[tuple[tuple[str, str], int]]) -> None:
    out = redistribute(weights)
    assert [t.cluster for t in out] == [c for (c, _), w in weights if w > 0]
    assert sum(t.weight for t in out) == (100 if out else 0)


@given(weight_lists)
def test_redistribute_rounds_the_largest_remainders_up(weights: list[tuple[tuple[str, str], int]]) -> None:
    total = sum(w for _, w in weights)
    given_weight = {c: w for (c, _), w in weights}
    up: list[Fraction] = []
    down: list[Fraction] = []
    for t in redistribute(weights):
        exact = Fraction(given_weight[t.cluster] * 100, total)
        assert abs(t.weight - exact) < 1, (t, exact)
        (up if t.weight > exact else down).append(exact - int(exact))
    assert not up or not down or min(up) >= max(down)


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=5).map(
    lambda ws: [((f"c{i}", ""), w) for i, w in enumerate(ws)]))
def test_redistribute_never_lowers_what_is_left_of_a_route(weights: list[tuple[tuple[str, str], int]]) -> None:
    # what is left of a route (weights summing to at most 100) only grows when scaled up to 100
    assert all(t.weight >= w for t, (_, w) in zip(redistribute(weights), weights, strict=True))
