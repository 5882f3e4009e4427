"""The failover order as rendered: tier labels on ServiceEntry endpoints, `failoverPriority` in the DestinationRule.

Six clusters in three regions. Each case renders one service backed by all six for one client, through the
wire format, checks every object against Istio 1.30's CRD schemas, and then reads the order back out of the
two objects the way istiod does (see `envoy_priorities`), to compare it with meshfleet.intents.failover_rank.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import yaml

from agent.render import RenderContext, render
from agent.render.context import failover_tiers
from meshfleet.intents import (
    Backend,
    ClusterIntent,
    ClusterRef,
    OutlierDetection,
    Port,
    ServiceIntent,
    Subset,
    decode,
    encode,
    failover_rank,
)
from tests.istio_support import istio_schemas

USE1 = ClusterRef("use1", "us-east", "us-east-a", "net-east")
USE2 = ClusterRef("use2", "us-east", "us-east-b", "net-east")
USW1 = ClusterRef("usw1", "us-west", "us-west-a", "net-west")
USW2 = ClusterRef("usw2", "us-west", "us-west-a", "net-west")  # the same zone as usw1
EUW1 = ClusterRef("euw1", "eu-west", "eu-west-a", "net-eu")
EUW2 = ClusterRef("euw2", "eu-west", "eu-west-b", "net-eu")
CLUSTERS = {c.name: c for c in (USE1, USE2, USW1, USW2, EUW1, EUW2)}
VERSIONS = {"use1": ("v1", "v2"), "euw1": ("v1",), "usw2": ("v2",)}
TIER = "meshfleet.io/failover-tier-"

REVIEWS = ServiceIntent(
    "bookinfo", "reviews", (Port("http", 9080, "HTTP"),),
    tuple(Backend(c, f"eastwest.{c.name}.example", 15443,
                  tuple(Subset(v, {"version": v}) for v in VERSIONS.get(c.name, ()))) for c in CLUSTERS.values()),
    outlier=OutlierDetection(), origin="MulticlusterService/bookinfo/reviews")

Case = tuple[ClusterRef, tuple[tuple[str, ...], ...], tuple[str, ...]]  # client, its regions, Explicit priority
CASES: dict[str, Case] = {
    # own cluster, own region, then us-west, then eu-west: four tiers
    "topology-from-us-east": (USE1, (("us-west",), ("eu-west",)), ()),
    # usw2 shares usw1's zone, so tier 0 holds both and no cluster is "same region, other zone": that rank is
    # skipped rather than left an empty priority
    "topology-same-zone": (USW1, (("us-east",), ("eu-west",)), ()),
    # us-east and us-west equally near eu-west: one tier
    "topology-tie": (EUW1, (("us-east", "us-west"),), ()),
    # regions the client does not list come last, together
    "topology-unlisted-regions": (EUW2, (), ()),
    # the FailoverPolicy's order for every client, whatever the topology; unlisted clusters last, together
    "explicit": (USE1, (("us-west",), ("eu-west",)), ("usw2", "euw1", "use1")),
    # an Explicit entry that backs nothing costs no tier
    "explicit-with-a-gone-cluster": (USW1, (), ("gone", "euw2")),
}
# each backing cluster's expected tier, and N (the number of failoverPriority entries)
EXPECTED: dict[str, tuple[dict[str, int], int]] = {
    "topology-from-us-east": ({"use1": 0, "use2": 1, "usw1": 2, "usw2": 2, "euw1": 3, "euw2": 3}, 3),
    "topology-same-zone": ({"usw1": 0, "usw2": 0, "use1": 1, "use2": 1, "euw1": 2, "euw2": 2}, 2),
    "topology-tie": ({"euw1": 0, "euw2": 1, "use1": 2, "use2": 2, "usw1": 2, "usw2": 2}, 2),
    "topology-unlisted-regions": ({"euw2": 0, "euw1": 1, "use1": 2, "use2": 2, "usw1": 2, "usw2": 2}, 2),
    "explicit": ({"usw2": 0, "euw1": 1, "use1": 2, "use2": 3, "usw1": 3, "euw2": 3}, 3),
    "explicit-with-a-gone-cluster": ({"euw2": 0, "use1": 1, "use2": 1, "usw1": 1, "usw2": 1, "euw1": 1}, 1),
}


def intent_for(case: str, service: ServiceIntent = REVIEWS) -> ClusterIntent:
    client, regions, priority = CASES[case]
    return ClusterIntent(client, (replace(service, priority=priority),), regions=regions)


def rendered(intent: ClusterIntent) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ServiceEntry, DestinationRule) of reviews, rendered through the wire format; every object Istio-valid."""
    objects = render(decode(*encode(intent)), RenderContext(intent.cluster.name))
    schemas = istio_schemas()
    for obj in objects:
        errors = schemas.validate(obj)
        assert not errors, f"{obj['kind']} {obj['metadata']['name']}: {[str(e) for e in errors]}"
        assert "&id" not in yaml.safe_dump(obj), "shared sub-objects come out of YAML as anchors"
    by_kind = {o["kind"]: o for o in objects if o["metadata"]["name"] == "reviews-global"}
    return by_kind["ServiceEntry"], by_kind["DestinationRule"]


def owner(endpoint: dict[str, Any]) -> str:
    labels = endpoint["labels"]
    return str(labels.get("meshfleet.io/cluster") or labels["meshfleet.io/subset-of"])


def tier_labels(endpoint: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in endpoint["labels"].items() if k.startswith(TIER)}


def selected(subset: dict[str, Any], endpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Istio's subset selection: endpoints whose labels include all of the subset's."""
    return [e for e in endpoints if subset["labels"].items() <= e["labels"].items()]


def envoy_priorities(se: dict[str, Any], dr: dict[str, Any], subset: str = "") -> list[int]:
    """The Envoy priority istiod gives each endpoint of the ServiceEntry (in order) in one of the DR's clusters.

    Istio's rule for `failoverPriority` (pilot loadbalancer.applyFailoverPriorities): for N entries, an endpoint
    whose labels match the first j entries but not entry j+1 gets priority N - j (0 if it matches all); an entry
    `label=value` is matched against `value`, not the client's own label. With no `failover` list the locality
    plays no part. Priorities are then renumbered without gaps. `subset` restricts the pool to the endpoints
    that DR subset selects (its own Envoy cluster); endpoints outside it get -1.
    """
    locality = dr["spec"]["trafficPolicy"]["loadBalancer"]["localityLbSetting"]
    assert locality["enabled"] is True and "failover" not in locality and "distribute" not in locality
    entries = [e.split("=", 1) for e in locality.get("failoverPriority", [])]
    assert all(len(e) == 2 for e in entries), "every entry carries its explicit value"
    endpoints = se["spec"]["endpoints"]
    pool = endpoints
    if subset:
        [chosen] = [s for s in dr["spec"]["subsets"] if s["name"] == subset]
        pool = selected(chosen, endpoints)
    raw: list[int] = []
    for e in pool:
        matched = 0
        for label, value in entries:
            if e["labels"].get(label) != value:
                break
            matched += 1
        raw.append(len(entries) - matched)
    dense = {p: i for i, p in enumerate(sorted(set(raw)))}
    by_id = {id(e): dense[p] for e, p in zip(pool, raw, strict=True)}
    return [by_id.get(id(e), -1) for e in endpoints]


# --------------------------------------------------------------------------- the labels and the priority list


def test_six_clusters_from_us_east_exact_labels_and_failover_priority() -> None:
    se, dr = rendered(intent_for("topology-from-us-east"))
    all3 = {f"{TIER}1": "true", f"{TIER}2": "true", f"{TIER}3": "true"}
    expected = {
        "use1": all3,  # own cluster: every label, priority 0
        "use2": {f"{TIER}1": "true", f"{TIER}2": "true"},  # own region
        "usw1": {f"{TIER}1": "true"}, "usw2": {f"{TIER}1": "true"},  # nearest other region
        "euw1": {}, "euw2": {},  # the last tier: none
    }
    endpoints = se["spec"]["endpoints"]
    assert [owner(e) for e in endpoints] == ["use1", "use1", "use1", "use2", "usw1", "usw2", "usw2", "euw1", "euw1",
                                             "euw2"]
    for e in endpoints:  # whole-cluster and version endpoints alike
        assert tier_labels(e) == expected[owner(e)], owner(e)
        cluster = CLUSTERS[owner(e)]
        assert e["locality"] == f"{cluster.region}/{cluster.zone}"
        assert e["network"] == cluster.network
    assert dr["spec"]["trafficPolicy"] == {
        "tls": {"mode": "ISTIO_MUTUAL"},
        "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s",
                             "maxEjectionPercent": 100},
        "loadBalancer": {"localityLbSetting": {"enabled": True, "failoverPriority": [
            "meshfleet.io/failover-tier-1=true", "meshfleet.io/failover-tier-2=true",
            "meshfleet.io/failover-tier-3=true"]}},
    }


@pytest.mark.parametrize("case", list(CASES))
def test_each_endpoint_carries_the_tier_labels_of_its_cluster(case: str) -> None:
    tiers, n = EXPECTED[case]
    se, dr = rendered(intent_for(case))
    assert dr["spec"]["trafficPolicy"]["loadBalancer"]["localityLbSetting"]["failoverPriority"] == [
        f"{TIER}{k}=true" for k in range(1, n + 1)]
    for e in se["spec"]["endpoints"]:
        # tier t: labels 1 .. N-t, no other
        assert sorted(tier_labels(e)) == [f"{TIER}{k}" for k in range(1, n - tiers[owner(e)] + 1)], owner(e)
        assert set(tier_labels(e).values()) <= {"true"}
    assert failover_tiers(intent_for(case), replace(REVIEWS, priority=CASES[case][2])).by_cluster == tiers


# --------------------------------------------------------------------------- what Envoy makes of them


@pytest.mark.parametrize("case", list(CASES))
def test_envoy_priorities_follow_failover_rank(case: str) -> None:
    intent = intent_for(case)
    service = intent.services[0]
    se, dr = rendered(intent)
    endpoints = se["spec"]["endpoints"]
    priorities = envoy_priorities(se, dr)
    ranks = [failover_rank(intent, service, CLUSTERS[owner(e)]) for e in endpoints]
    # the same order, ties included: priority p is the p-th smallest rank any backend holds
    dense = {r: i for i, r in enumerate(sorted(set(ranks)))}
    assert priorities == [dense[r] for r in ranks]
    assert priorities == [EXPECTED[case][0][owner(e)] for e in endpoints]
    # the preferred tier is never empty, and nothing is skipped
    assert set(priorities) == set(range(EXPECTED[case][1] + 1))


def test_a_subset_is_one_endpoint_so_one_priority() -> None:
    se, dr = rendered(intent_for("topology-from-us-east"))
    for subset in dr["spec"]["subsets"]:
        assert sorted(envoy_priorities(se, dr, subset["name"])).count(0) == 1


# --------------------------------------------------------------------------- subsets select what they did


@pytest.mark.parametrize("case", list(CASES))
def test_tier_labels_change_no_subset_selection(case: str) -> None:
    se, dr = rendered(intent_for(case))
    # the serving-side view of the same backends: no outlier detection, hence no tier labels
    plain_se, plain_dr = rendered(intent_for(case, replace(REVIEWS, outlier=None)))
    assert not any(tier_labels(e) for e in plain_se["spec"]["endpoints"])
    assert "loadBalancer" not in plain_dr["spec"]["trafficPolicy"]
    assert "outlierDetection" not in plain_dr["spec"]["trafficPolicy"]
    assert dr["spec"]["subsets"] == plain_dr["spec"]["subsets"]
    assert any(tier_labels(e) for e in se["spec"]["endpoints"])

    def without_tiers(e: dict[str, Any]) -> dict[str, Any]:
        return {**e, "labels": {k: v for k, v in e["labels"].items() if not k.startswith(TIER)}}

    assert [without_tiers(e) for e in se["spec"]["endpoints"]] == plain_se["spec"]["endpoints"]
    for subset in dr["spec"]["subsets"]:
        got = [without_tiers(e) for e in selected(subset, se["spec"]["endpoints"])]
        assert got == selected(subset, plain_se["spec"]["endpoints"])
        assert len(got) == 1, subset["name"]  # still exactly one endpoint (one address) per subset
        assert not any(k.startswith(TIER) for k in subset["labels"])
