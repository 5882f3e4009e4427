"""mgmt.changes: re-translating only the clusters a change concerns gives what a full translation gives."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import pytest

from meshfleet.intents import (
    EAST_WEST_PORT,
    ClusterRef,
    OutlierDetection,
    Port,
    RequestMatch,
    StringMatch,
    Subset,
    encode,
)
from mgmt import changes
from mgmt.model import (
    AccessFrom,
    AccessPolicy,
    ClusterSelector,
    Destination,
    DiscoveredService,
    Discovery,
    FailoverPolicy,
    HttpRule,
    Meta,
    MulticlusterService,
    Requirement,
    Resource,
    Resources,
    RouteTarget,
    Snapshot,
    TrafficPolicy,
)
from mgmt.translate import Problem, Translation, translate

NS = "shop"
REGIONS = ("us-east", "eu-west", "ap-south")
HTTP = (Port("http", 8080, "HTTP"),)
TCP = (Port("tcp", 5432, "TCP"),)
SERVICES = tuple(f"s{i:02d}" for i in range(20))
TCP_SERVICES = frozenset(SERVICES[-3:])
VERSIONS = ("v1", "v2", "v3")
CANARY = RequestMatch(headers=(("x-canary", StringMatch("exact", "1")),))


def cluster_name(i: int) -> str:
    return f"c{i}"


def cluster_ref(i: int) -> ClusterRef:
    region = REGIONS[i % len(REGIONS)]
    return ClusterRef(cluster_name(i), region, f"{region}-{'ab'[i % 2]}", f"net-{region}")


def cluster_labels(i: int) -> dict[str, str]:
    labels = {"region": REGIONS[i % len(REGIONS)], "tier": "primary" if i < 4 else "edge"}
    if i % 3 == 0:
        labels["canary"] = "true"
    return labels


def created(rng: random.Random) -> str:
    """A creation time; "" (a policy file) now and then, and equal times so the key breaks ties."""
    return rng.choice(["", "2025-01-01T00:00:00Z", "2025-06-01T00:00:00Z", "2026-01-01T00:00:00Z"])


def discovered(rng: random.Random, name: str) -> DiscoveredService:
    subsets = tuple(Subset(v, {"version": v}) for v in sorted(rng.sample(VERSIONS, rng.randint(0, 3))))
    selector = () if rng.random() < 0.1 else (("app", name),)
    return DiscoveredService(NS, name, TCP if name in TCP_SERVICES else HTTP, subsets, selector)


@dataclass
class Fleet:
    """A mutable fleet the edits work on; `snapshot()` freezes it."""

    clusters: dict[str, ClusterRef] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    discovery: dict[str, Discovery] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)
    counter: int = 0

    def snapshot(self) -> Snapshot:
        return Snapshot(dict(self.clusters), dict(self.discovery), Resources.of(self.resources.values()),
                        {c: dict(v) for c, v in self.labels.items()})

    def add(self, resource: Resource) -> None:
        self.resources[resource.meta.key] = resource

    def fresh_name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def names(self) -> list[str]:
        return sorted(self.clusters)

    def of_kind(self, kind: type[Resource]) -> list[Resource]:
        return [r for _, r in sorted(self.resources.items()) if isinstance(r, kind)]


def meta(kind: str, name: str, when: str = "") -> Meta:
    return Meta(kind, NS, name, f"{kind} {NS}/{name}", when)


def random_route(rng: random.Random, fleet: Fleet, subsets: bool = False) -> tuple[RouteTarget, ...]:
    picked = rng.sample([*fleet.names(), "c99"], rng.randint(1, 3))  # c99: a cluster the fleet lacks
    return tuple(RouteTarget(c, rng.randint(0, 100), rng.choice(VERSIONS) if subsets else "") for c in picked)


def random_clients(rng: random.Random, fleet: Fleet) -> tuple[str, ...] | None:
    return None if rng.random() < 0.4 else tuple(sorted(rng.sample(fleet.names(), rng.randint(1, 3))))


def random_destination(rng: random.Random) -> Destination:
    if rng.random() < 0.3:
        return Destination(multicluster_service=rng.choice(["m0", "m1", "m2", "m3", "m4", "gone"]))
    return Destination(service=rng.choice(SERVICES))


def random_traffic(rng: random.Random, fleet: Fleet, name: str, dest: Destination | None = None) -> TrafficPolicy:
    dest = dest or random_destination(rng)
    if rng.random() < 0.5:
        return TrafficPolicy(meta("TrafficPolicy", name, created(rng)), dest,
                             (HttpRule("default", random_route(rng, fleet)),), random_clients(rng, fleet))
    rules = []
    if rng.random() < 0.7:
        rules.append(HttpRule("canary", random_route(rng, fleet, subsets=True), (CANARY,)))
    rules.append(HttpRule("default", random_route(rng, fleet, subsets=True)))
    return TrafficPolicy(meta("TrafficPolicy", name, created(rng)), dest, tuple(rules), random_clients(rng, fleet),
                         simple=False)


def random_failover(rng: random.Random, fleet: Fleet, name: str) -> FailoverPolicy:
    return FailoverPolicy(meta("FailoverPolicy", name, created(rng)), random_destination(rng),
                          OutlierDetection(rng.randint(1, 9)))


def random_access(rng: random.Random, fleet: Fleet, name: str) -> AccessPolicy:
    dest = Destination(all=True) if rng.random() < 0.15 else random_destination(rng)
    sources = [AccessFrom(namespaces=(rng.choice(["web", "ops"]),), service_accounts=("api",) if rng.random() < 0.5
                          else ())]
    if rng.random() < 0.2:  # narrower than the fleet (refused) or every cluster (fine)
        sources.append(AccessFrom(clusters=tuple(fleet.names()[: rng.choice([2, len(fleet.clusters)])])))
    return AccessPolicy(meta("AccessPolicy", name, created(rng)), dest, rng.choice(["ALLOW", "DENY"]),
                        tuple(sources), mtls=rng.choice(["STRICT", "PERMISSIVE"]))


def random_selector(rng: random.Random, fleet: Fleet) -> ClusterSelector:
    return rng.choice([
        ClusterSelector(clusters=tuple(sorted(rng.sample(fleet.names(), rng.randint(1, 4))))),
        ClusterSelector(match_labels=(("tier", rng.choice(["primary", "edge"])),)),
        ClusterSelector(match_expressions=(Requirement("region", "In", tuple(rng.sample(REGIONS, 2))),)),
        ClusterSelector(match_expressions=(Requirement("canary", rng.choice(["Exists", "DoesNotExist"])),)),
        ClusterSelector(),
    ])


def build_fleet(rng: random.Random) -> Fleet:
    """8 clusters in 3 regions, 20 services, a dozen-odd resources of every kind, with conflicts and refusals."""
    fleet = Fleet()
    for i in range(8):
        fleet.clusters[cluster_name(i)] = cluster_ref(i)
        fleet.labels[cluster_name(i)] = cluster_labels(i)
    runs: dict[str, list[DiscoveredService]] = {c: [] for c in fleet.clusters}
    for name in SERVICES:
        for c in rng.sample(fleet.names(), rng.randint(1, 4)):
            runs[c].append(discovered(rng, name))
    for c, found in runs.items():
        address = "" if c == "c7" else f"gw.{c}.example"  # one cluster without east-west gateway
        fleet.discovery[c] = Discovery(address, EAST_WEST_PORT, {(s.namespace, s.name): s for s in found})
    ms = [
        MulticlusterService(meta("MulticlusterService", "m0", created(rng)), "s00", "",
                            ClusterSelector(clusters=("c0", "c1", "c2"))),
        MulticlusterService(meta("MulticlusterService", "m1", created(rng)), "s01", "",
                            ClusterSelector(match_labels=(("tier", "primary"),)),
                            ClusterSelector(match_expressions=(Requirement("region", "In", ("us-east", "eu-west")),))),
        MulticlusterService(meta("MulticlusterService", "m2", "2025-01-01T00:00:00Z"), "s02", "shared.example",
                            ClusterSelector(match_expressions=(Requirement("canary", "Exists"),)),
                            ClusterSelector(clusters=("c1", "c4", "c6"))),
        MulticlusterService(meta("MulticlusterService", "s03", created(rng)), "s03", "", ClusterSelector()),
        MulticlusterService(meta("MulticlusterService", "m4", "2026-01-01T00:00:00Z"), "s04", "shared.example",
                            ClusterSelector()),  # same host as m2, younger: refused
        MulticlusterService(meta("MulticlusterService", "m3", created(rng)), "s00", "", ClusterSelector(),
                            ClusterSelector(clusters=("c5", "c6"))),  # s00 is exported twice: ambiguous by service
    ]
    for m in ms:
        fleet.add(m)
    for i, dest in enumerate([Destination(service=s) for s in SERVICES[5:10]]
                             + [Destination(multicluster_service="m1"), Destination(service="s01"),
                                Destination(multicluster_service="m0"), Destination(service="s17")]):
        fleet.add(random_traffic(rng, fleet, f"t{i}", dest))
    fleet.add(random_traffic(rng, fleet, "t-conflict", Destination(service=SERVICES[5])))
    for name in ("f0", "f1", "f2"):
        fleet.add(random_failover(rng, fleet, name))
    fleet.add(FailoverPolicy(meta("FailoverPolicy", "f-m1", created(rng)), Destination(multicluster_service="m1")))
    fleet.add(FailoverPolicy(meta("FailoverPolicy", "f-m1-again", "2026-06-01T00:00:00Z"),
                             Destination(multicluster_service="m1"), OutlierDetection(2)))
    for name in ("a0", "a1", "a2", "a3"):
        fleet.add(random_access(rng, fleet, name))
    fleet.add(AccessPolicy(meta("AccessPolicy", "a-all", ""), Destination(all=True), "DENY",
                           (AccessFrom(namespaces=("sandbox",)),)))
    return fleet


# --- edits -----------------------------------------------------------------------------------------------------------


def edit_weights(rng: random.Random, fleet: Fleet) -> None:
    policy = rng.choice(fleet.of_kind(TrafficPolicy))
    assert isinstance(policy, TrafficPolicy)
    rule = rng.randrange(len(policy.http))
    new = tuple(dataclasses.replace(t, weight=rng.randint(0, 100)) for t in policy.http[rule].route)
    http = list(policy.http)
    http[rule] = dataclasses.replace(http[rule], route=new)
    fleet.add(dataclasses.replace(policy, http=tuple(http)))


def edit_add_policy(rng: random.Random, fleet: Fleet) -> None:
    makers: list[Callable[[random.Random, Fleet, str], Resource]] = [
        random_traffic, random_traffic, random_failover, random_access]
    make = rng.choice(makers)
    fleet.add(make(rng, fleet, fleet.fresh_name("new")))


def edit_remove_resource(rng: random.Random, fleet: Fleet) -> None:
    if fleet.resources:
        del fleet.resources[rng.choice(sorted(fleet.resources))]


def edit_clients(rng: random.Random, fleet: Fleet) -> None:
    policy = rng.choice(fleet.of_kind(TrafficPolicy))
    assert isinstance(policy, TrafficPolicy)
    fleet.add(dataclasses.replace(policy, clients=random_clients(rng, fleet)))


def edit_export_to(rng: random.Random, fleet: Fleet) -> None:
    found = fleet.of_kind(MulticlusterService)
    if found:
        m = rng.choice(found)
        assert isinstance(m, MulticlusterService)
        fleet.add(dataclasses.replace(m, export_to=None if rng.random() < 0.3 else random_selector(rng, fleet)))


def edit_multicluster_service(rng: random.Random, fleet: Fleet) -> None:
    """Backends, host (making or ending a host clash) or the Service it exports."""
    found = fleet.of_kind(MulticlusterService)
    if found:
        m = rng.choice(found)
        assert isinstance(m, MulticlusterService)
        fleet.add(rng.choice([
            dataclasses.replace(m, backends=random_selector(rng, fleet)),
            dataclasses.replace(m, host=rng.choice(["", "shared.example", "other.example"])),
            dataclasses.replace(m, service=rng.choice(SERVICES)),
        ]))


def edit_discovery(rng: random.Random, fleet: Fleet) -> None:
    """One cluster starts or stops reporting one service, or reports it with other subsets or selector."""
    cluster = rng.choice(sorted(fleet.discovery))
    report = fleet.discovery[cluster]
    name = rng.choice(SERVICES)
    services = dict(report.services)
    if (NS, name) in services and rng.random() < 0.5:
        del services[(NS, name)]
    else:
        services[(NS, name)] = discovered(rng, name)
    fleet.discovery[cluster] = dataclasses.replace(report, services=services)


def edit_gateway(rng: random.Random, fleet: Fleet) -> None:
    cluster = rng.choice(sorted(fleet.discovery))
    address = rng.choice(["", f"gw2.{cluster}.example", f"gw.{cluster}.example"])
    fleet.discovery[cluster] = dataclasses.replace(fleet.discovery[cluster], gateway_address=address)


def edit_add_or_remove_cluster(rng: random.Random, fleet: Fleet) -> None:
    if len(fleet.clusters) > 6 and rng.random() < 0.5:
        gone = rng.choice(fleet.names())
        for per_cluster in (fleet.clusters, fleet.labels, fleet.discovery):
            per_cluster.pop(gone, None)
        return
    i = 8 + fleet.counter
    fleet.counter += 1
    fleet.clusters[cluster_name(i)] = cluster_ref(i)
    fleet.labels[cluster_name(i)] = cluster_labels(i)
    fleet.discovery[cluster_name(i)] = Discovery(f"gw.{cluster_name(i)}.example", EAST_WEST_PORT, {
        (NS, s): discovered(rng, s) for s in rng.sample(SERVICES, 4)})


def edit_labels(rng: random.Random, fleet: Fleet) -> None:
    cluster = rng.choice(fleet.names())
    fleet.labels[cluster] = {**fleet.labels[cluster], "tier": rng.choice(["primary", "edge"])}


def edit_failover_or_access(rng: random.Random, fleet: Fleet) -> None:
    found = fleet.of_kind(FailoverPolicy) + fleet.of_kind(AccessPolicy)
    if found:
        policy = rng.choice(found)
        if isinstance(policy, FailoverPolicy):
            fleet.add(dataclasses.replace(policy, outlier=OutlierDetection(rng.randint(1, 9))))
        else:
            assert isinstance(policy, AccessPolicy)
            fleet.add(dataclasses.replace(policy, mtls=rng.choice(["STRICT", "PERMISSIVE"]), action="DENY"))


def edit_age(rng: random.Random, fleet: Fleet) -> None:
    """A resource recreated: its age, so who wins a conflict, changes."""
    if fleet.resources:
        r = fleet.resources[rng.choice(sorted(fleet.resources))]
        fleet.add(dataclasses.replace(r, meta=dataclasses.replace(r.meta, created=created(rng))))


EDITS: list[Callable[[random.Random, Fleet], None]] = [
    edit_weights, edit_add_policy, edit_remove_resource, edit_clients, edit_export_to, edit_multicluster_service,
    edit_discovery, edit_gateway, edit_add_or_remove_cluster, edit_labels, edit_failover_or_access, edit_age,
]


# --- the incremental pipeline of the hub (mgmt.serving) --------------------------------------------------------------

Outcome = tuple[str, tuple[Problem, ...], frozenset[str]]


def outcome(result: Translation) -> Outcome:
    return encode(result.intent)[0], result.problems, result.applied


def from_scratch(snap: Snapshot) -> dict[str, Outcome]:
    fresh = dataclasses.replace(snap, memo={})
    return {c: outcome(translate(fresh, c)) for c in sorted(snap.clusters)}


def incremental(old: Snapshot, new: Snapshot, previous: Mapping[str, Translation]
                ) -> tuple[dict[str, Translation], set[str]]:
    """What the hub does on a change: translate the affected clusters, keep the others' last result."""
    changes.seed(old, new)
    delta = changes.changed(old, new)
    changes.carry(old, new, delta)
    todo = changes.affected({c: t.reads for c, t in previous.items()}, delta, new)
    return {c: translate(new, c) if c in todo else previous[c] for c in sorted(new.clusters)}, todo


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed-{s}") for s in range(20)])
def test_incremental_translation_equals_a_full_one(seed: int) -> None:
    rng = random.Random(seed)
    fleet = build_fleet(rng)
    old = fleet.snapshot()
    results = {c: translate(old, c) for c in sorted(old.clusters)}
    saved = 0
    for step in range(30):
        edit = rng.choice(EDITS)
        edit(rng, fleet)
        new = fleet.snapshot()
        results, todo = incremental(old, new, results)
        expected = from_scratch(new)
        for cluster in sorted(new.clusters):
            assert outcome(results[cluster]) == expected[cluster], (
                f"step {step} ({edit.__name__}): {cluster} {'re-translated' if cluster in todo else 'kept'}")
        saved += len(new.clusters) - len(todo)
        old = new
    assert saved > 0  # the test is not vacuous: some edits spared some clusters


# --- what a change re-translates ---------------------------------------------------------------------------------


def plain_fleet() -> Fleet:
    """8 clusters; s00..s07 each run in c<i> and c<i+1>; one MulticlusterService m0 over s00 exported everywhere."""
    fleet = Fleet()
    for i in range(8):
        fleet.clusters[cluster_name(i)] = cluster_ref(i)
        fleet.labels[cluster_name(i)] = cluster_labels(i)
        fleet.discovery[cluster_name(i)] = Discovery(f"gw.c{i}.example", EAST_WEST_PORT, {
            (NS, s): DiscoveredService(NS, s, HTTP, (), (("app", s),))
            for s in (SERVICES[i], SERVICES[(i - 1) % 8])})
    fleet.add(MulticlusterService(meta("MulticlusterService", "m0"), "s00", "", ClusterSelector()))
    return fleet


def split_on(name: str, dest: Destination, clients: tuple[str, ...] | None, weight: int = 50) -> TrafficPolicy:
    return TrafficPolicy(meta("TrafficPolicy", name), dest,
                         (HttpRule("default", (RouteTarget("c0", weight), RouteTarget("c1", 100 - weight))),),
                         clients)


Edit = Callable[[Fleet], None]


def reweigh(name: str, dest: Destination, clients: tuple[str, ...] | None) -> Edit:
    return lambda fleet: fleet.add(split_on(name, dest, clients, weight=80))


def rediscover(cluster: str, service: str) -> Edit:
    def edit(fleet: Fleet) -> None:
        report = fleet.discovery[cluster]
        services = dict(report.services)
        services[(NS, service)] = DiscoveredService(NS, service, HTTP, (Subset("v2", {"version": "v2"}),),
                                                    (("app", service),))
        fleet.discovery[cluster] = dataclasses.replace(report, services=services)
    return edit


def relabel(fleet: Fleet) -> None:
    fleet.labels["c3"] = {**fleet.labels["c3"], "tier": "edge"}


def touch_namespace_wide(fleet: Fleet) -> None:
    fleet.add(AccessPolicy(meta("AccessPolicy", "deny-sandbox"), Destination(all=True), "DENY",
                           (AccessFrom(namespaces=("sandbox", "tmp")),)))


BEFORE: list[Resource] = [
    split_on("plain", Destination(service="s01"), ("c3", "c4")),
    split_on("on-mcs", Destination(multicluster_service="m0"), ("c5", "c6")),
    AccessPolicy(meta("AccessPolicy", "deny-sandbox"), Destination(all=True), "DENY",
                 (AccessFrom(namespaces=("sandbox",)),)),
]


def apply(fleet: Fleet, edit: Edit) -> tuple[Snapshot, set[Hashable] | None, set[str], dict[str, Translation]]:
    """Edit the fleet and re-translate incrementally; check the result against a full translation."""
    old = fleet.snapshot()
    results = {c: translate(old, c) for c in sorted(old.clusters)}
    edit(fleet)
    new = fleet.snapshot()
    delta = changes.changed(old, new)
    results, todo = incremental(old, new, results)
    assert {c: outcome(t) for c, t in results.items()} == from_scratch(new)
    return new, delta, todo, results


@pytest.mark.parametrize(("edit", "expected"), [
    pytest.param(reweigh("plain", Destination(service="s01"), ("c3", "c4")), {"c3", "c4"},
                 id="traffic-policy-on-plain-service-only-its-clients"),
    pytest.param(reweigh("on-mcs", Destination(multicluster_service="m0"), ("c5", "c6")), {"c5", "c6"},
                 id="traffic-policy-on-exported-service-only-its-clients"),
    # s02 runs in c2 and c3 and is no destination: its servers (and the reporting cluster)
    pytest.param(rediscover("c2", "s02"), {"c2"}, id="discovery-of-an-unused-service-only-that-cluster"),
    # s01 runs in c1 and c2; its receivers are the clients of `plain`
    pytest.param(rediscover("c1", "s01"), {"c1", "c2", "c3", "c4"}, id="discovery-receivers-and-servers"),
    # s00 (m0) runs in c0 and c7 and is exported everywhere
    pytest.param(rediscover("c0", "s00"), {f"c{i}" for i in range(8)}, id="discovery-of-exported-service"),
    pytest.param(relabel, None, id="cluster-labels-everything"),
    pytest.param(touch_namespace_wide, {f"c{i}" for i in range(8)}, id="namespace-wide-access-everything"),
])
def test_a_change_re_translates_only_the_clusters_it_concerns(edit: Edit, expected: set[str] | None) -> None:
    fleet = plain_fleet()
    for r in BEFORE:
        fleet.add(r)
    new, delta, todo, _ = apply(fleet, edit)
    assert (delta is None) is (expected is None)
    assert todo == (set(new.clusters) if expected is None else expected)


def test_a_clients_change_re_translates_old_and_new_clients() -> None:
    fleet = plain_fleet()
    for r in BEFORE:
        fleet.add(r)
    _, _, todo, results = apply(fleet, reweigh("on-mcs", Destination(multicluster_service="m0"), ("c5", "c7")))
    assert todo >= {"c5", "c6", "c7"}  # today every receiver of m0: a clients change re-translates the whole service
    assert [t.policy for t in results["c6"].intent.traffic] == []
    assert [t.policy for t in results["c7"].intent.traffic] == ["shop/on-mcs"]


# --- a MulticlusterService refused, or no longer refused, without being edited itself -------------------------------

HOST = "shared.example"
OLDER, YOUNGER = "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z"
# s02 runs in c2 and c3, s05 in c5 and c6
HOLDER = MulticlusterService(meta("MulticlusterService", "holder", OLDER), "s02", HOST, ClusterSelector(),
                             ClusterSelector(clusters=("c2", "c3")))
WAITING = MulticlusterService(meta("MulticlusterService", "waiting", YOUNGER), "s05", HOST, ClusterSelector(),
                              ClusterSelector(clusters=("c6", "c7")))


def remove(key: str) -> Edit:
    def edit(fleet: Fleet) -> None:
        del fleet.resources[key]
    return edit


def put(resource: Resource) -> Edit:
    return lambda fleet: fleet.add(resource)


@pytest.mark.parametrize(("resources", "edit", "holder"), [
    pytest.param([HOLDER, WAITING], remove(HOLDER.meta.key), "waiting", id="holder-removed"),
    pytest.param([HOLDER, WAITING], put(dataclasses.replace(HOLDER, host="other.example")), "waiting",
                 id="holder-moves-to-another-host"),
    pytest.param([HOLDER, WAITING], put(dataclasses.replace(WAITING, meta=meta("MulticlusterService", "waiting"))),
                 "waiting", id="the-younger-one-becomes-older"),
    pytest.param([WAITING], put(dataclasses.replace(HOLDER, meta=meta("MulticlusterService", "holder"))), "holder",
                 id="an-older-one-takes-the-host"),
    pytest.param([dataclasses.replace(HOLDER, host="other.example"), WAITING], put(HOLDER), "holder",
                 id="an-older-one-moves-to-the-host"),
])
def test_a_host_changing_hands_re_translates_both_services(resources: list[Resource], edit: Edit,
                                                            holder: str) -> None:
    fleet = plain_fleet()
    for r in resources:
        fleet.add(r)
    _, _, todo, results = apply(fleet, edit)
    # the receivers and the backing clusters of the one that holds the host
    carrying = {"holder": {"c2", "c3"}, "waiting": {"c5", "c6", "c7"}}[holder]
    for cluster, result in results.items():
        assert {s.name for s in result.intent.services if s.host == HOST} == (
            {holder} if cluster in carrying else set()), cluster
    assert todo >= {"c2", "c3", "c5", "c6", "c7"}  # where either of them is, or becomes, sent


def test_no_change_re_translates_nothing_and_keeps_the_objects() -> None:
    fleet = plain_fleet()
    for r in BEFORE:
        fleet.add(r)
    old = fleet.snapshot()
    results = {c: translate(old, c) for c in sorted(old.clusters)}
    new = fleet.snapshot()
    assert changes.changed(old, new) == set()
    again, todo = incremental(old, new, results)
    assert todo == set()
    # a later translation of the new snapshot reuses the carried service objects (the encoder's cache stays valid)
    assert translate(new, "c3").intent.services[0] is results["c3"].intent.services[0]
    assert again == results
