"""mgmt.topology: which clusters back, receive and are clients of what, and what is wrong with a resource."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from mgmt.model import (
    AccessFrom,
    AccessPolicy,
    ClusterSelector,
    Destination,
    Discovery,
    FailoverPolicy,
    Requirement,
    Resource,
)
from mgmt.topology import concerned, topology
from mgmt.translate import resource_problems
from tests.snapshots import (
    AP,
    DISCOVERY,
    EU,
    NS,
    US,
    clusters,
    mcs,
    meta,
    report,
    service,
    snapshot,
    split,
    to_mcs,
)

ALL = (AP, EU, US)  # sorted, as topology and concerned give clusters
MCS = "MulticlusterService/bookinfo/"
TP = "TrafficPolicy/bookinfo/"
FP = "FailoverPolicy/bookinfo/"
AC = "AccessPolicy/bookinfo/"


def failover(name: str, dest: Destination, priority: tuple[str, ...] = (), created: str = "") -> FailoverPolicy:
    return FailoverPolicy(meta("FailoverPolicy", name, created), dest,
                          priority_mode="Explicit" if priority else "Topology", priority=priority)


def access(name: str, dest: Destination, *sources: AccessFrom, created: str = "") -> AccessPolicy:
    return AccessPolicy(meta("AccessPolicy", name, created), dest, sources=sources)


def labelled(*match_labels: tuple[str, str], expressions: tuple[Requirement, ...] = ()) -> ClusterSelector:
    return ClusterSelector(match_labels=match_labels, match_expressions=expressions)


# --- which clusters back a MulticlusterService -------------------------------------------------------------------
# ratings is reported by all three clusters, so the selector alone decides. Labels (tests/snapshots.py):
#   us-east-1 env=prod tier=primary; eu-west-1 env=prod tier=primary canary=true; ap-south-1 env=staging tier=edge


@pytest.mark.parametrize(("backends", "servers"), [
    pytest.param(clusters(US, AP), (AP, US), id="explicit-clusters"),
    pytest.param(labelled(("env", "prod")), (EU, US), id="match-labels"),
    pytest.param(labelled(("env", "prod"), ("canary", "true")), (EU,), id="match-labels-all-must-hold"),
    pytest.param(labelled(expressions=(Requirement("env", "In", ("staging", "qa")),)), (AP,), id="in"),
    pytest.param(labelled(expressions=(Requirement("tier", "NotIn", ("primary",)),)), (AP,), id="not-in"),
    pytest.param(labelled(expressions=(Requirement("canary", "NotIn", ("true",)),)), (AP, US),
                 id="not-in-holds-where-the-label-is-absent"),
    pytest.param(labelled(expressions=(Requirement("canary", "Exists"),)), (EU,), id="exists"),
    pytest.param(labelled(expressions=(Requirement("canary", "DoesNotExist"),)), (AP, US), id="does-not-exist"),
    pytest.param(labelled(("env", "prod"), expressions=(Requirement("canary", "DoesNotExist"),)), (US,),
                 id="labels-and-expressions-together"),
    pytest.param(ClusterSelector(), ALL, id="empty-selector-is-every-cluster"),
])
def test_backends_are_the_clusters_the_selector_picks(backends: ClusterSelector, servers: tuple[str, ...]) -> None:
    snap = snapshot(mcs("ratings", backends))
    topo = topology(snap)
    assert topo.servers[(NS, "ratings")] == servers
    assert resource_problems(snap) == ()


@pytest.mark.parametrize(("export_to", "receivers"), [
    pytest.param(None, ALL, id="default-every-cluster"),
    pytest.param(clusters(EU), (EU,), id="explicit-clusters"),
    pytest.param(labelled(("tier", "edge")), (AP,), id="by-labels"),
])
def test_export_to_decides_the_receivers(export_to: ClusterSelector | None, receivers: tuple[str, ...]) -> None:
    topo = topology(snapshot(mcs("reviews", clusters(US, EU), export_to)))
    assert tuple(sorted(topo.receivers[(NS, "reviews")])) == receivers
    assert topo.servers[(NS, "reviews")] == (EU, US)  # exportTo never changes who backs it


def test_a_selected_cluster_that_does_not_report_the_service_does_not_back_it() -> None:
    snap = snapshot(mcs("reviews", clusters(US, EU, AP)))
    assert topology(snap).servers[(NS, "reviews")] == (EU, US)
    [problem] = resource_problems(snap)
    assert problem.policy == MCS + "reviews"
    assert "cluster(s) ap-south-1 do not report Service bookinfo/reviews; they do not back it" in problem.message


# --- resource-level problems --------------------------------------------------------------------------------------

REVIEWS_GLOBAL = mcs("reviews-global", clusters(US, EU), svc="reviews")


@pytest.mark.parametrize(("resources", "expected"), [
    pytest.param((mcs("reviews", clusters(US, EU)),), {}, id="valid-no-problem"),
    pytest.param((mcs("ratings", labelled(("env", "qa"))),),
                 {MCS + "ratings": "backends clusterSelector {env=qa} match no cluster"}, id="backends-match-nothing"),
    pytest.param((mcs("ratings", clusters(US, "mars-1")),),
                 {MCS + "ratings": "backends name unknown cluster(s) mars-1"}, id="backends-unknown-cluster"),
    pytest.param((mcs("ratings", ClusterSelector(), labelled(("tier", "gpu"))),),
                 {MCS + "ratings": "exportTo clusterSelector {tier=gpu} matches no cluster"},
                 id="export-to-matches-nothing"),
    pytest.param((mcs("ratings", ClusterSelector(), clusters(US, "mars-1")),),
                 {MCS + "ratings": "exportTo names unknown cluster(s) mars-1"}, id="export-to-unknown-cluster"),
    pytest.param((mcs("productpage", clusters(US, EU)),),
                 {MCS + "productpage": "no selected cluster reports Service bookinfo/productpage"},
                 id="no-backing-cluster-reports-the-service"),
    pytest.param((mcs("r1", clusters(US), svc="ratings", host="ratings.example"),
                  mcs("r2", clusters(EU), svc="ratings", host="ratings.example", created="2026-01-01T00:00:00Z")),
                 {MCS + "r2": f"host ratings.example is already served by {MCS}r1 (older)"}, id="same-host"),
    pytest.param((split("s", to_mcs("nope"), [(US, 100)]),),
                 {TP + "s": "MulticlusterService bookinfo/nope does not exist"}, id="missing-multicluster-service"),
    pytest.param((REVIEWS_GLOBAL, mcs("reviews-backup", clusters(EU), svc="reviews"),
                  split("s", "reviews", [(US, 100)])),
                 {TP + "s": "Service reviews is exported by several MulticlusterServices (reviews-backup, "
                            "reviews-global)"}, id="destination-service-ambiguous"),
    pytest.param((mcs("ratings", clusters(US), svc="reviews"), split("s", "ratings", [(US, 100)])),
                 {TP + "s": "the name ratings is taken by MulticlusterService bookinfo/ratings, which exports "
                            "Service reviews"}, id="destination-service-name-taken"),
    pytest.param((split("s", "ghost", [(US, 100)]),),
                 {TP + "s": "no cluster reports Service bookinfo/ghost"}, id="plain-service-nobody-reports"),
    pytest.param((split("s", "reviews", [(US, 100)], clients=[EU, "mars-1"]),),
                 {TP + "s": "clients name unknown cluster(s) mars-1"}, id="clients-unknown-cluster"),
    pytest.param((mcs("reviews", clusters(US, EU), clusters(EU, AP)), split("s", to_mcs("reviews"), [(US, 100)],
                                                                            clients=[US, EU])),
                 {TP + "s": "client cluster(s) us-east-1 are not in the exportTo of MulticlusterService/bookinfo/"
                            "reviews; not routed there"}, id="clients-outside-export-to"),
    pytest.param((failover("f1", to_mcs("reviews-global")), REVIEWS_GLOBAL,
                  failover("f2", to_mcs("reviews-global"), created="2026-01-01T00:00:00Z")),
                 {FP + "f2": "FailoverPolicy bookinfo/f1 (older) already sets failover for bookinfo/reviews-global; "
                             "this policy is not applied"}, id="two-failover-policies"),
    pytest.param((REVIEWS_GLOBAL, failover("f", to_mcs("reviews-global"), priority=(EU, "mars-1", US))),
                 {FP + "f": "priority.clusters names unknown cluster(s) mars-1"}, id="failover-priority-unknown"),
    pytest.param((failover("f", Destination(service="reviews")),),
                 {FP + "f": "no cluster calls bookinfo/reviews through the mesh"}, id="failover-on-what-nobody-calls"),
    pytest.param((access("a", Destination(service="reviews"), AccessFrom(clusters=(US, EU))),),
                 {AC + "a": "from[0].clusters leaves out ap-south-1, but every cluster shares one trust domain"},
                 id="access-from-some-clusters"),
    pytest.param((access("a", Destination(service="reviews"), AccessFrom(namespaces=("x",)),
                         AccessFrom(clusters=(US, EU, AP))),), {}, id="access-from-every-cluster"),
])
def test_resource_problems(resources: tuple[Resource, ...], expected: Mapping[str, str]) -> None:
    found = resource_problems(snapshot(*resources))
    assert {p.policy for p in found} == set(expected), found
    assert len(found) == len(expected), found
    for p in found:
        assert expected[p.policy] in p.message


def test_resource_problems_are_sorted_and_unique() -> None:
    found = resource_problems(snapshot(split("z", "ghost", [(US, 100)]), split("a", "nowhere", [(US, 100)]),
                                       mcs("m", labelled(("env", "qa")))))
    assert found == tuple(sorted(set(found)))
    assert [p.policy for p in found] == [MCS + "m", TP + "a", TP + "z"]


# --- conflicts between whole resources: the older wins ----------------------------------------------------------

FILE = ""  # a resource from a policy file: older than any CR
EARLY, LATE = "2025-06-01T00:00:00Z", "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(("a_created", "b_created", "winner"), [
    pytest.param(EARLY, LATE, "a", id="older-cr-wins"),
    pytest.param(LATE, EARLY, "b", id="older-cr-wins-whatever-its-name"),
    pytest.param(LATE, FILE, "b", id="file-is-older-than-any-cr"),
    pytest.param(EARLY, EARLY, "a", id="same-age-first-key-wins"),
])
def test_two_multicluster_services_with_one_host(a_created: str, b_created: str, winner: str) -> None:
    a = mcs("a", clusters(US), clusters(US, EU), svc="ratings", host="ratings.example", created=a_created)
    b = mcs("b", clusters(AP), clusters(AP), svc="ratings", host="ratings.example", created=b_created)
    loser = "b" if winner == "a" else "a"
    snap = snapshot(a, b)
    topo = topology(snap)

    assert topo.refused == {MCS + loser}
    assert [s.name for s in topo.services.values()] == [winner]
    assert [p.policy for p in resource_problems(snap)] == [MCS + loser]
    assert concerned(snap)[MCS + loser] == ()
    assert concerned(snap)[MCS + winner] == ((EU, US) if winner == "a" else (AP,))


def test_two_failover_policies_the_older_wins_the_other_is_refused() -> None:
    snap = snapshot(REVIEWS_GLOBAL, failover("b-first", to_mcs("reviews-global"), created=EARLY),
                    failover("a-second", to_mcs("reviews-global"), created=LATE))
    assert topology(snap).refused == {FP + "a-second"}
    assert concerned(snap)[FP + "a-second"] == ()
    assert concerned(snap)[FP + "b-first"] == ALL


# --- what a policy's destination resolves to ---------------------------------------------------------------------


@pytest.mark.parametrize(("resources", "destination", "origin"), [
    pytest.param((REVIEWS_GLOBAL, split("s", "reviews", [(US, 100)])), (NS, "reviews-global"),
                 MCS + "reviews-global", id="service-exported-by-a-multicluster-service"),
    pytest.param((REVIEWS_GLOBAL, split("s", to_mcs("reviews-global"), [(US, 100)])), (NS, "reviews-global"),
                 MCS + "reviews-global", id="multicluster-service-by-name"),
    pytest.param((split("s", "reviews", [(US, 100)]),), (NS, "reviews"), "", id="plain-service-is-implicit"),
    pytest.param((mcs("reviews", clusters(US)), split("s", "reviews", [(US, 100)])), (NS, "reviews"),
                 MCS + "reviews", id="multicluster-service-of-the-same-name"),
    pytest.param((REVIEWS_GLOBAL, split("s", "ratings", [(US, 100)])), (NS, "ratings"), "",
                 id="other-service-stays-implicit"),
])
def test_destination_resolution(resources: tuple[Resource, ...], destination: tuple[str, str], origin: str) -> None:
    topo = topology(snapshot(*resources))
    assert topo.destinations[TP + "s"] == destination
    assert topo.services[destination].origin == origin


def test_a_refused_multicluster_service_is_no_destination() -> None:
    snap = snapshot(mcs("a", clusters(US), svc="ratings", host="x.example"),
                    mcs("b", clusters(EU), svc="ratings", host="x.example", created=LATE),
                    split("s", to_mcs("b"), [(EU, 100)]))
    assert TP + "s" not in topology(snap).destinations
    assert concerned(snap)[TP + "s"] == ()
    assert any(p.policy == TP + "s" and "does not exist (or is not applied)" in p.message
               for p in resource_problems(snap))


# --- receivers and clients -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("policies_clients", "receivers"), [
    pytest.param([None], ALL, id="no-clients-every-cluster"),
    pytest.param([[EU]], (EU,), id="one-policy"),
    pytest.param([[EU], [AP]], (AP, EU), id="union-of-the-policies-clients"),
    pytest.param([[]], (), id="no-client"),
])
def test_a_plain_service_is_received_by_the_clients_of_its_policies(
        policies_clients: list[list[str] | None], receivers: tuple[str, ...]) -> None:
    policies = [split(f"s{i}", "reviews", [(US, 100)], clients=c) for i, c in enumerate(policies_clients)]
    topo = topology(snapshot(*policies))
    assert tuple(sorted(topo.receivers[(NS, "reviews")])) == receivers
    assert topo.servers[(NS, "reviews")] == (EU, US)


def test_clients_of_a_multicluster_service_policy_are_cut_to_its_export_to() -> None:
    snap = snapshot(mcs("reviews", clusters(US, EU), clusters(EU, AP)),
                    split("in", to_mcs("reviews"), [(US, 100)], clients=[US, EU]),
                    split("every", to_mcs("reviews"), [(US, 100)], created=LATE))
    topo = topology(snap)
    assert topo.clients[TP + "in"] == {EU}
    assert topo.clients[TP + "every"] == {EU, AP}
    assert topo.receivers[(NS, "reviews")] == {EU, AP}  # a policy never widens the exportTo


def test_concerned_clusters_per_kind() -> None:
    """Where each resource reports its status: the clusters it is meant to take effect in."""
    snap = snapshot(
        mcs("reviews", clusters(US, EU), clusters(AP)),
        split("reviews-split", to_mcs("reviews"), [(US, 50), (EU, 50)]),
        split("ratings-split", "ratings", [(US, 100)], clients=[EU]),
        failover("f", to_mcs("reviews")),
        access("guard", to_mcs("reviews")),
        access("everything", Destination(all=True)),
        access("narrow", to_mcs("reviews"), AccessFrom(clusters=(US,))),
        split("ghost", "ghost", [(US, 100)]),
        split("lost", to_mcs("nope"), [(US, 100)]),
        discovery={**DISCOVERY, AP: report(AP, service("productpage"))},
    )
    assert concerned(snap) == {
        MCS + "reviews": (AP, EU, US),  # receivers and servers
        TP + "reviews-split": (AP,),  # its clients
        TP + "ratings-split": (EU,),
        FP + "f": (AP,),  # receivers
        AC + "guard": (EU, US),  # servers
        AC + "everything": ALL,
        AC + "narrow": (),  # refused
        TP + "ghost": ALL,  # resolved (to an implicit service nobody backs), so reported per cluster
        TP + "lost": (),  # unresolved: a resource-level problem only
    }


def test_topology_is_computed_once_per_snapshot() -> None:
    snap = snapshot(REVIEWS_GLOBAL)
    assert topology(snap) is topology(snap)


def test_cluster_without_discovery_backs_nothing() -> None:
    discovery: dict[str, Discovery] = {US: DISCOVERY[US], AP: DISCOVERY[AP]}
    snap = snapshot(mcs("ratings", ClusterSelector()), discovery=discovery)
    assert topology(snap).servers[(NS, "ratings")] == (AP, US)
    assert "cluster(s) eu-west-1 do not report Service" in resource_problems(snap)[0].message
