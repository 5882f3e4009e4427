"""translate(snapshot, cluster) -> what that cluster must know (pure: no I/O, no clock).

A cluster receives, scoped by the topology graph (mgmt.topology):
* every global service exported to it, with each cluster backing it (east-west
  gateway address, network, locality, subsets) and its failover settings;
* the routes of the TrafficPolicies it is a client of (the oldest policy wins a
  destination; the others are reported in that cluster);
* for the services it backs: the service itself (its gateway must know the host
  to route a remote caller by SNI) and the AccessPolicies guarding it;
* namespace-wide AccessPolicies.

Everything that does not depend on the receiving cluster is derived once per
snapshot in `snapshot.memo`, so the objects are shared and encoded once.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from meshfleet.intents import (
    HTTP_PROTOCOLS,
    AccessRule,
    AccessSource,
    Backend,
    ClusterIntent,
    Gateway,
    Mirror,
    MtlsRule,
    OutlierDetection,
    Port,
    RouteRule,
    ServiceIntent,
    TrafficRoute,
    WeightedTarget,
)
from mgmt.model import AccessPolicy, FailoverPolicy, Snapshot, TrafficPolicy, age
from mgmt.regions import region_graph
from mgmt.topology import GlobalService, Problem, ServiceKey, Topology, topology

__all__ = ["DEFAULT_OUTLIER", "Problem", "Translation", "evicted_from", "failover_of", "redistribute", "regions",
           "resource_problems", "translate"]

DEFAULT_OUTLIER = OutlierDetection()  # 5 consecutive 5xx, every 10s, ejected 30s, up to 100 %


@dataclass(frozen=True)
class Translation:
    intent: ClusterIntent
    problems: tuple[Problem, ...]  # found translating for this cluster
    applied: frozenset[str]  # keys of the resources whose effect the intent carries
    reads: frozenset[Hashable]  # what the result depends on (see mgmt.changes)


def redistribute(weights: Iterable[tuple[tuple[str, str], int]]) -> tuple[WeightedTarget, ...]:
    """Scale (cluster, subset) weights to sum to 100, keeping proportions (largest remainder; ties by order)."""
    items = [(k, w) for k, w in weights if w > 0]
    total = sum(w for _, w in items)
    if total == 0:
        return ()
    exact = [(k, w * 100 / total) for k, w in items]
    floors = {k: int(x) for k, x in exact}
    left = 100 - sum(floors.values())
    by_remainder = sorted(range(len(exact)), key=lambda i: -(exact[i][1] - int(exact[i][1])))
    for i in by_remainder[:left]:
        floors[exact[i][0]] += 1
    return tuple(WeightedTarget(c, floors[(c, s)], s) for (c, s), _ in items)


def _scoped(snapshot: Snapshot, scope: Hashable) -> dict[Any, Any]:
    """The memo of what depends only on `scope` (a key of mgmt.changes), which a later snapshot may inherit."""
    scoped: dict[Hashable, dict[Any, Any]] = snapshot.memo.setdefault("scoped", {})
    found = scoped.get(scope)
    if found is None:
        found = scoped[scope] = {}
    return found


Catalog = tuple[tuple[Backend, ...], tuple[Backend, ...], tuple[str, ...]]


def _catalog(snapshot: Snapshot, topo: Topology, key: ServiceKey) -> Catalog:
    """(backends other clusters reach, backends only their own cluster reaches, problems) of a global service.

    A backend only its own cluster reaches has no east-west gateway address, or was evicted by the hub
    (its cluster is lost; FailoverPolicy evictLostClusters). Eviction never takes the last backends:
    with every reachable backend lost, clients keep them and rely on outlier detection.
    """
    memo = _scoped(snapshot, ("svc", key))
    if "catalog" not in memo:
        gs = topo.services[key]
        reachable: list[Backend] = []
        own_only: list[Backend] = []
        problems: list[str] = []
        evicted = evicted_from(snapshot, topo, key)
        for name in topo.servers[key]:
            report = snapshot.discovery[name]
            found = report.services[(gs.namespace, gs.service)]
            backend = Backend(snapshot.clusters[name], report.gateway_address, report.gateway_port, found.subsets)
            (reachable if report.gateway_address else own_only).append(backend)
            if not report.gateway_address:
                problems.append(f"cluster {name} backs {gs.namespace}/{gs.service} but reports no east-west gateway "
                                "address; only its own clients reach it")
        away: list[Backend] = []
        if evicted and any(b.cluster.name not in evicted for b in reachable):
            away = [b for b in reachable if b.cluster.name in evicted]
            own_only.extend(away)
            reachable = [b for b in reachable if b.cluster.name not in evicted]
        memo["away"] = tuple(Gateway(b.cluster.name, b.address, b.port) for b in away)
        memo["catalog"] = (tuple(reachable), tuple(sorted(own_only, key=lambda b: b.cluster.name)), tuple(problems))
    result: Catalog = memo["catalog"]
    return result


def _away(snapshot: Snapshot, topo: Topology, key: ServiceKey) -> tuple[Gateway, ...]:
    """The gateways of a global service's evicted backends (its clients keep probing them)."""
    _catalog(snapshot, topo, key)
    away: tuple[Gateway, ...] = _scoped(snapshot, ("svc", key))["away"]
    return away


def evicted_from(snapshot: Snapshot, topo: Topology, key: ServiceKey) -> frozenset[str]:
    """The clusters the hub evicted from a global service (by its FailoverPolicy)."""
    failover = failover_of(topo, key)
    if failover is None or not failover.evict_lost_clusters:
        return frozenset()
    return snapshot.evicted.get(failover.meta.key, frozenset())


def regions(snapshot: Snapshot, region: str) -> tuple[tuple[str, ...], ...]:
    """The other regions as seen from `region`, nearest first in tiers (mgmt.regions), computed once per region."""
    memo: dict[str, tuple[tuple[str, ...], ...]] = snapshot.memo.setdefault("region-tiers", {})
    if region not in memo:
        names = {c.region for c in snapshot.clusters.values()}
        if "region-graph" not in snapshot.memo:
            snapshot.memo["region-graph"] = region_graph(names, snapshot.region_costs)
        memo[region] = snapshot.memo["region-graph"].tiers(region, names)
    return memo[region]


def failover_of(topo: Topology, key: ServiceKey) -> FailoverPolicy | None:
    """The FailoverPolicy in effect for a global service (the oldest one not refused), if any."""
    found = [p for p in topo.policies(key, "FailoverPolicy") if p.meta.key not in topo.refused]
    policy = found[0] if found else None
    assert policy is None or isinstance(policy, FailoverPolicy)
    return policy


def _ports(snapshot: Snapshot, gs: GlobalService, backends: tuple[Backend, ...]) -> tuple[Port, ...]:
    if gs.ports:
        return gs.ports
    first = backends[0].cluster.name
    return snapshot.discovery[first].services[(gs.namespace, gs.service)].ports


def _service(snapshot: Snapshot, topo: Topology, cluster: str, key: ServiceKey) -> ServiceIntent | None:
    """The service as `cluster` sees it as a client: every reachable backend, plus its own copy if others
    cannot reach it (no gateway, or evicted: a returning cluster's own clients keep their local copy).

    Every cluster but those backends sees the same object (computed once, encoded once).
    """
    memo = _scoped(snapshot, ("svc", key))
    view = memo.get("view")
    if view is None:
        reachable, gatewayless, _ = _catalog(snapshot, topo, key)
        view = memo["view"] = ({b.cluster.name: b for b in gatewayless}, _service_of(snapshot, topo, key, reachable))
    own = view[0].get(cluster)
    if own is None:
        shared: ServiceIntent | None = view[1]
        return shared
    entry = ("service", cluster)
    if entry not in memo:
        memo[entry] = _service_of(snapshot, topo, key, tuple(sorted((*view[1].backends, own) if view[1] else (own,),
                                                                   key=lambda b: b.cluster.name)))
    service: ServiceIntent | None = memo[entry]
    return service


def _service_of(snapshot: Snapshot, topo: Topology, key: ServiceKey, backends: tuple[Backend, ...]
                ) -> ServiceIntent | None:
    if not backends:
        return None
    gs = topo.services[key]
    failover = failover_of(topo, key)
    # every multicluster destination gets outlier detection (Istio's locality failover needs it): the
    # FailoverPolicy's settings, or the defaults
    return ServiceIntent(gs.namespace, gs.name, _ports(snapshot, gs, backends), backends, gs.host, gs.service,
                         failover.outlier if failover else DEFAULT_OUTLIER,
                         priority=failover.priority if failover and failover.priority_mode == "Explicit" else (),
                         origin=gs.origin)


def _served(snapshot: Snapshot, topo: Topology, cluster: str, key: ServiceKey) -> ServiceIntent:
    """The serving side: a service this cluster backs for other clusters' clients, with only its own copy.

    Its east-west gateway routes a remote call by the SNI of the global host, so the cluster
    needs that host defined with its own endpoints even when it is no client.
    """
    memo, entry = _scoped(snapshot, ("svc", key)), ("served", cluster)
    if entry not in memo:
        gs = topo.services[key]
        report = snapshot.discovery[cluster]
        found = report.services[(gs.namespace, gs.service)]
        own = (Backend(snapshot.clusters[cluster], report.gateway_address, report.gateway_port, found.subsets),)
        # no client here: failover settings (outlier detection) act on the calling side only
        memo[entry] = ServiceIntent(gs.namespace, gs.name, _ports(snapshot, gs, own), own, gs.host, gs.service,
                                    origin=gs.origin)
    served: ServiceIntent = memo[entry]
    return served


def _implicit(snapshot: Snapshot, key: ServiceKey, service: ServiceIntent, policy: TrafficPolicy) -> ServiceIntent:
    """An implicit service comes from the policy routing it: the same object for every client of that policy."""
    memo, entry = _scoped(snapshot, ("svc", key)), ("implicit", id(service), policy.meta.key)
    if entry not in memo:
        memo[entry] = (service, replace(service, origin=policy.meta.key))  # holding service keeps its id
    found: ServiceIntent = memo[entry][1]
    return found


def _route(snapshot: Snapshot, policy: TrafficPolicy, service: ServiceIntent, evicted: frozenset[str] = frozenset()
           ) -> tuple[TrafficRoute | None, list[str]]:
    """A policy's rules over the backends `service` offers; unreachable targets' weight goes to the others.

    An evicted cluster's weight is shared the same way (in proportion to the others'), as the hub's
    failover decision, which is an event rather than a problem of the policy.
    """
    available = {b.cluster.name: {s.name for s in b.subsets} for b in service.backends}
    # the subsets are part of the key: the same clusters with other versions route differently
    memo = _scoped(snapshot, ("policy", policy.meta.key))
    entry = (frozenset((c, frozenset(subsets)) for c, subsets in available.items()), evicted)
    if entry in memo:
        cached: tuple[TrafficRoute | None, list[str]] = memo[entry]
        return cached
    problems: list[str] = []
    protocols = {p.protocol for p in service.ports}
    if not policy.simple and not protocols & HTTP_PROTOCOLS:
        problems.append(f"spec.http needs an HTTP port, but {service.namespace}/{service.name} has only "
                        f"{', '.join(sorted(protocols))} ports; use spec.route; not applied")
        memo[entry] = (None, problems)
        return None, problems

    def usable(cluster: str, subset: str, what: str, otherwise: str = "its weight goes to the others") -> bool:
        if cluster not in snapshot.clusters:
            problems.append(f"{what} names unknown cluster {cluster!r}")
        elif cluster in evicted and cluster not in available:
            pass
        elif cluster not in available:
            problems.append(f"{what}: cluster {cluster} has no reachable backend of {service.namespace}/"
                            f"{service.service}; {otherwise}")
        elif subset and subset not in available[cluster]:
            problems.append(f"{what}: cluster {cluster} reports no subset {subset!r} of {service.namespace}/"
                            f"{service.service}; {otherwise}")
        else:
            return True
        return False

    rules: list[RouteRule] = []
    for rule in policy.http:
        where = "spec.route" if policy.simple else f"rule {rule.name}"
        targets = redistribute(((t.cluster, t.subset), t.weight) for t in rule.route
                               if usable(t.cluster, t.subset, where))
        if not targets:
            if not rule.matches:
                # the catch-all rule would send traffic anywhere: better not to route at all
                problems.append(f"{where}: no route target is reachable; the policy is not applied")
                memo[entry] = (None, problems)
                return None, problems
            problems.append(f"{where}: no route target is reachable; requests it matches go to the next rule")
            continue
        mirror: Mirror | None = rule.mirror
        if mirror is not None and not usable(mirror.cluster, mirror.subset, f"{where} mirror", "nothing is mirrored"):
            mirror = None
        rules.append(RouteRule(rule.name, targets, rule.matches, rule.timeout, rule.retries, rule.fault, mirror))
    if not rules:
        # every rule matches a subset of requests and none has a target left: nothing to route by
        problems.append("no rule has a reachable target; the policy is not applied")
        memo[entry] = (None, problems)
        return None, problems
    route = TrafficRoute(f"{policy.meta.namespace}/{policy.meta.name}", service.namespace, service.name,
                         tuple(rules))
    memo[entry] = (route, problems)
    return route, problems


def _sources(policy: AccessPolicy) -> tuple[AccessSource, ...]:
    out = []
    for entry in policy.sources:
        # identities carry no cluster (one trust domain); topology refuses policies that narrow by cluster
        if entry.service_accounts:
            principals = tuple(f"*/ns/{ns}/sa/{sa}" for ns in entry.namespaces for sa in entry.service_accounts) \
                if entry.namespaces else tuple(f"*/sa/{sa}" for sa in entry.service_accounts)
            out.append(AccessSource((), principals))
        elif entry.namespaces:
            out.append(AccessSource(entry.namespaces, ()))
        else:
            out.append(AccessSource())  # every cluster listed, nothing else: any authenticated caller
    return tuple(out)


Guarded = tuple[AccessPolicy, tuple[tuple[str, str], ...]]  # a policy and the pods it guards in one cluster


def _access(snapshot: Snapshot, topo: Topology, cluster: str, key: ServiceKey | None
            ) -> tuple[list[AccessRule], list[Guarded], list[Problem], set[str]]:
    """Access rules guarding `key` in `cluster` (namespace-wide policies when key is None), and what each guards."""
    memo = _scoped(snapshot, ("acl", key) if key is not None else ("namespace-wide",))
    if cluster not in memo:
        rules: list[AccessRule] = []
        guarded: list[Guarded] = []
        problems: list[Problem] = []
        applied: set[str] = set()
        if key is None:
            policies: list[AccessPolicy] = list(topo.namespace_wide)
            selector: tuple[tuple[str, str], ...] = ()
        else:
            gs = topo.services[key]
            policies = [p for p in topo.policies(key, "AccessPolicy") if isinstance(p, AccessPolicy)]
            selector = snapshot.discovery[cluster].services[(gs.namespace, gs.service)].selector
        for policy in policies:
            m = policy.meta
            if m.key in topo.refused:
                continue
            if key is not None and not selector:
                problems.append(Problem(m.key, f"Service {m.namespace}/{topo.services[key].service} in {cluster} "
                                               "has no pod selector, so no workload can be guarded; not applied"))
                continue
            rules.append(AccessRule(f"{m.namespace}/{m.name}", m.namespace, policy.action, selector,
                                    _sources(policy), tuple(policy.operations)))
            applied.add(m.key)
            guarded.append((policy, selector))
        memo[cluster] = (rules, guarded, problems, applied)
    result: tuple[list[AccessRule], list[Guarded], list[Problem], set[str]] = memo[cluster]
    return result


def _mtls(guarded: list[Guarded], cluster: str) -> tuple[list[MtlsRule], list[Problem]]:
    """One mode per set of pods in the cluster, whichever Services select them: the oldest policy's."""
    rules: list[MtlsRule] = []
    problems: list[Problem] = []
    owners: dict[tuple[str, tuple[tuple[str, str], ...]], AccessPolicy] = {}
    for policy, selector in sorted(guarded, key=lambda g: (age(g[0]), g[1])):
        m = policy.meta
        older = owners.get((m.namespace, selector))
        if older is None:
            owners[(m.namespace, selector)] = policy
            rules.append(MtlsRule(f"{m.namespace}/{m.name}", m.namespace, policy.mtls, selector))
        elif older.mtls != policy.mtls:
            problems.append(Problem(m.key, f"mtls {policy.mtls} conflicts with {older.meta.ref} (older, mtls "
                                           f"{older.mtls}) for the same workloads in {cluster}; its access "
                                           "rules apply, its mtls mode does not"))
    return rules, problems


def translate(snapshot: Snapshot, cluster: str) -> Translation:
    topo = topology(snapshot)
    problems: list[Problem] = []
    applied: set[str] = set()
    reads: set[Hashable] = {("cluster", cluster), ("namespace-wide",)}
    services: dict[ServiceKey, ServiceIntent] = {}
    traffic: list[TrafficRoute] = []
    for key in sorted(topo.received_by.get(cluster, ())):
        reads.add(("svc", key))
        gs = topo.services[key]
        service = _service(snapshot, topo, cluster, key)
        routing = topo.targeting.get(key, {}).get("TrafficPolicy", ())
        if not routing and gs.origin and service is not None:
            # the common case, kept lean: a service exported to this cluster that no policy routes here
            services[key] = service
            applied.add(gs.origin)
            if service.outlier is not None and (failover := failover_of(topo, key)) is not None:
                applied.add(failover.meta.key)
            continue
        mine = [p for p in routing if isinstance(p, TrafficPolicy) and cluster in topo.clients.get(p.meta.key, ())]
        reads.update(("policy", p.meta.key) for p in mine)
        if service is None:
            for p in mine:
                problems.append(Problem(p.meta.key, f"no cluster offers a reachable backend of {gs.namespace}/"
                                                    f"{gs.service}; nothing to route to"))
            unreachable = f"no backend of {gs.namespace}/{gs.service} is reachable from {cluster} (none has an " \
                          "east-west gateway address, or none reports the Service); nothing sent there"
            if gs.origin:
                problems.append(Problem(gs.origin, unreachable))
            if (failover := failover_of(topo, key)) is not None:
                problems.append(Problem(failover.meta.key, unreachable))
            continue
        problems.extend(Problem(p.meta.key, m) for p in mine for m in _catalog(snapshot, topo, key)[2])
        route: TrafficRoute | None = None
        winner: TrafficPolicy | None = None
        for policy in mine:
            if winner is not None:
                problems.append(Problem(policy.meta.key, (
                    f"{winner.meta.ref} (older) already routes {gs.namespace}/{gs.name} in {cluster}; "
                    f"not applied in {cluster}")))
                continue
            route, messages = _route(snapshot, policy, service, evicted_from(snapshot, topo, key))
            problems.extend(Problem(policy.meta.key, m) for m in messages)
            if route is not None:
                winner = policy
                traffic.append(route)
                applied.add(policy.meta.key)
        failover = failover_of(topo, key)
        if gs.origin or route is not None:
            # an implicit service travels only with its route: alone it would spread traffic the policy excludes
            services[key] = service if gs.origin or winner is None else _implicit(snapshot, key, service, winner)
            if gs.origin:
                applied.add(gs.origin)
            if failover is not None:
                applied.add(failover.meta.key)
        elif failover is not None:
            problems.append(Problem(failover.meta.key, f"no TrafficPolicy route for {gs.namespace}/{gs.service} "
                                                       f"applies in {cluster}, so the service is not sent there"))
    access: list[AccessRule] = []
    guarded: list[Guarded] = []
    for key in sorted(topo.served_by.get(cluster, ())):
        reads.update((("svc", key), ("acl", key)))
        gs = topo.services[key]
        if key not in services and (gs.origin or topo.receivers[key]):
            services[key] = _served(snapshot, topo, cluster, key)
            if gs.origin:
                applied.add(gs.origin)
        rules, guards, found, done = _access(snapshot, topo, cluster, key)
        access.extend(rules)
        guarded.extend(guards)
        problems.extend(found)
        applied |= done
    rules, guards, found, done = _access(snapshot, topo, cluster, None)
    access.extend(rules)
    guarded.extend(guards)
    problems.extend(found)
    applied |= done
    mtls, found = _mtls(guarded, cluster)
    problems.extend(found)
    me = snapshot.clusters[cluster]
    # the evicted backends of what this cluster calls: its agent keeps probing them (restoration needs peers)
    watch = {g for key in topo.received_by.get(cluster, ()) for g in _away(snapshot, topo, key) if g.cluster != cluster}
    intent = ClusterIntent(
        cluster=me,
        regions=regions(snapshot, me.region),
        watch=tuple(sorted(watch)),
        services=tuple(services[k] for k in sorted(services)),
        traffic=tuple(sorted(traffic, key=lambda t: (t.namespace, t.service))),
        access=tuple(sorted(access, key=lambda a: (a.namespace, a.policy))),
        mtls=tuple(sorted(mtls, key=lambda m: (m.namespace, m.selector, m.policy))),
    )
    return Translation(intent, tuple(sorted(set(problems))), frozenset(applied), frozenset(reads))


def resource_problems(snapshot: Snapshot) -> tuple[Problem, ...]:
    """Problems of resources as a whole (not of one cluster): conditions on the resource."""
    return tuple(sorted(set(topology(snapshot).problems)))

