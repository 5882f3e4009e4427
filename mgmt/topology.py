"""The fleet as a graph: which cluster calls, serves and is selected by what (pure).

One networkx DiGraph per snapshot holds the physical topology (cluster -> zone ->
region, cluster -> network) and the logical one the translator scopes by:

    policy --targets--> service --served-by--> cluster
    service --exported-to--> selector --selects--> cluster
    policy  --clients-->     selector --selects--> cluster

Selectors are shared nodes (every MulticlusterService exported to "every
cluster" points at the same one), so the graph grows with the number of
distinct selectors, not services x clusters. A cluster receives a service when
a selector the service is exported to selects it, and serves it when the
service has a served-by edge to it. Problems found while resolving resources
(a selector that matches nothing, an unknown cluster or service) are
resource-level: they land as conditions on the resource, not per cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from meshfleet.intents import Port, global_host
from mgmt.model import (
    AccessPolicy,
    ClusterSelector,
    FailoverPolicy,
    MulticlusterService,
    Resource,
    Snapshot,
    TrafficPolicy,
    age,
)

ServiceKey = tuple[str, str]  # (namespace, name) of a global service
EVERY = ClusterSelector(clusters=None)  # matches every cluster (no label requirement)


@dataclass(frozen=True, order=True)
class Problem:
    """Something wrong with a resource, for its status and the log."""

    policy: str  # the resource key, Kind/namespace/name
    message: str


@dataclass(frozen=True)
class GlobalService:
    """A mesh-wide service: a MulticlusterService, or a Service a policy names directly (implicit)."""

    namespace: str
    name: str
    service: str  # the Kubernetes Service in the backing clusters
    host: str
    origin: str = ""  # key of the MulticlusterService ("" for an implicit one)
    ports: tuple[Port, ...] = ()  # declared; () means as discovered


@dataclass
class Base:
    """The service layer: clusters, MulticlusterServices, who backs them and who they are exported to.

    It depends on the clusters, their labels and discovery reports and the MulticlusterServices only,
    so a policy edit reuses it (see `changes.seed`): policies are an overlay built per snapshot.
    """

    graph: nx.DiGraph
    services: dict[ServiceKey, GlobalService] = field(default_factory=dict)
    receivers: dict[ServiceKey, frozenset[str]] = field(default_factory=dict)
    servers: dict[ServiceKey, tuple[str, ...]] = field(default_factory=dict)
    selected: dict[ClusterSelector, tuple[str, ...]] = field(default_factory=dict)
    reporting: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (ns, Service) -> clusters
    exporting: dict[tuple[str, str], list[GlobalService]] = field(default_factory=dict)  # (ns, Service) -> MCSs
    hosts: dict[str, GlobalService] = field(default_factory=dict)  # host -> the MulticlusterService holding it
    received_by: dict[str, set[ServiceKey]] = field(default_factory=dict)
    served_by: dict[str, set[ServiceKey]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)


@dataclass
class Topology:
    base: Base
    graph: nx.DiGraph  # the policy overlay: policy -> service / selector, implicit services
    services: dict[ServiceKey, GlobalService] = field(default_factory=dict)
    destinations: dict[str, ServiceKey] = field(default_factory=dict)  # policy key -> the service it targets
    problems: list[Problem] = field(default_factory=list)
    receivers: dict[ServiceKey, frozenset[str]] = field(default_factory=dict)
    servers: dict[ServiceKey, tuple[str, ...]] = field(default_factory=dict)
    received_by: dict[str, set[ServiceKey]] = field(default_factory=dict)
    served_by: dict[str, set[ServiceKey]] = field(default_factory=dict)
    clients: dict[str, frozenset[str]] = field(default_factory=dict)  # TrafficPolicy key -> client clusters
    targeting: dict[ServiceKey, dict[str, list[Resource]]] = field(default_factory=dict)  # kind -> oldest first
    namespace_wide: list[AccessPolicy] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)  # keys of resources not applied anywhere (see problems)

    def policies(self, key: ServiceKey, kind: str) -> list[Resource]:
        return self.targeting.get(key, {}).get(kind, [])


def cluster_node(name: str) -> tuple[str, str]:
    return ("cluster", name)


def _selector_node(selector: ClusterSelector) -> tuple[str, ClusterSelector]:
    return ("selector", selector)


def topology(snapshot: Snapshot) -> Topology:
    """The graph and indices of a snapshot (computed once per snapshot; the service layer maybe carried)."""
    if "topology" not in snapshot.memo:
        if "topology-base" not in snapshot.memo:
            snapshot.memo["topology-base"] = _base(snapshot)
        snapshot.memo["topology"] = _overlay(snapshot, snapshot.memo["topology-base"])
    result: Topology = snapshot.memo["topology"]
    return result


def _selects(snapshot: Snapshot, selector: ClusterSelector) -> tuple[str, ...]:
    if selector.clusters is not None:  # no need to look at every cluster
        return tuple(sorted(c for c in set(selector.clusters) if c in snapshot.clusters))
    return tuple(n for n in sorted(snapshot.clusters) if selector.selects(n, snapshot.cluster_labels(n)))


def _select(snapshot: Snapshot, base: Base, selector: ClusterSelector) -> tuple[str, ...]:
    """The clusters a selector selects, read off the graph; a selector seen first adds its node and edges.

    Selector nodes live in the service layer's graph even when a policy brings them: what a selector
    selects depends only on the clusters and their labels, which are the same wherever that layer is reused.
    """
    found = base.selected.get(selector)
    if found is None:
        node = _selector_node(selector)
        base.graph.add_node(node)
        base.graph.add_edges_from(((node, cluster_node(c)) for c in _selects(snapshot, selector)), relation="selects")
        found = base.selected[selector] = tuple(sorted(c for _, (_, c) in base.graph.out_edges(node)))
    return found


def _related(graph: nx.DiGraph, node: tuple[str, ...], relation: str) -> list[Any]:
    return [v for _, v, r in graph.out_edges(node, data="relation") if r == relation]


def _base(snapshot: Snapshot) -> Base:
    g = nx.DiGraph()
    for name, ref in sorted(snapshot.clusters.items()):
        g.add_node(cluster_node(name), region=ref.region, zone=ref.zone, network=ref.network)
        g.add_edge(cluster_node(name), ("zone", ref.region, ref.zone), relation="in")
        g.add_edge(("zone", ref.region, ref.zone), ("region", ref.region), relation="in")
        g.add_edge(cluster_node(name), ("network", ref.network), relation="on")
    base = Base(g)
    for cluster in sorted(snapshot.discovery):
        if cluster in snapshot.clusters:
            for key in snapshot.discovery[cluster].services:
                base.reporting.setdefault(key, []).append(cluster)
    _add_multicluster_services(snapshot, base, snapshot.resources.services)
    base.received_by = _by_cluster(base.receivers)
    base.served_by = _by_cluster({k: frozenset(v) for k, v in base.servers.items()})
    return base


def _overlay(snapshot: Snapshot, base: Base) -> Topology:
    topo = Topology(base, nx.DiGraph(), services=dict(base.services), problems=list(base.problems),
                    receivers=dict(base.receivers), servers=dict(base.servers), refused=set(base.refused))
    res = snapshot.resources
    policies: list[Resource] = [*res.traffic, *res.failover, *res.access]
    for policy in sorted(policies, key=age):
        if isinstance(policy, AccessPolicy) and policy.destination.all:
            topo.namespace_wide.append(policy)
            _select(snapshot, base, EVERY)
            topo.graph.add_edge(("policy", policy.meta.key), _selector_node(EVERY), relation="applies-in")
            continue
        key = _resolve(snapshot, topo, policy)
        if key is None:
            continue
        topo.destinations[policy.meta.key] = key
        topo.targeting.setdefault(key, {}).setdefault(policy.meta.kind, []).append(policy)
        topo.graph.add_edge(("policy", policy.meta.key), ("service", *key), relation="targets")
    _add_clients(snapshot, topo, res.traffic)
    # the service layer's indices, shared; an implicit service copies the sets it changes
    topo.received_by, topo.served_by = dict(base.received_by), dict(base.served_by)
    for key in topo.services.keys() - base.services.keys():
        for index, clusters in ((topo.received_by, topo.receivers[key]), (topo.served_by, topo.servers[key])):
            for c in clusters:
                index[c] = index.get(c, set()) | {key}
    _check_policies(snapshot, topo)
    return topo


def _by_cluster(per_service: Mapping[ServiceKey, frozenset[str]]) -> dict[str, set[ServiceKey]]:
    out: dict[str, set[ServiceKey]] = {}
    for key, clusters in per_service.items():
        for c in clusters:
            out.setdefault(c, set()).add(key)
    return out


def _add_multicluster_services(snapshot: Snapshot, base: Base, services: Iterable[MulticlusterService]) -> None:
    g = base.graph
    hosts = base.hosts
    for mcs in sorted(services, key=age):
        m = mcs.meta
        key = (m.namespace, m.name)
        host = mcs.host or global_host(m.namespace, m.name)
        clash = hosts.get(host)
        if clash is not None:
            base.problems.append(Problem(m.key, f"host {host} is already served by {clash.origin} "
                                                "(older); this MulticlusterService is not applied"))
            base.refused.add(m.key)
            continue
        selected = _select(snapshot, base, mcs.backends)
        unknown = [c for c in mcs.backends.clusters or () if c not in snapshot.clusters]
        if unknown:
            base.problems.append(Problem(m.key, f"backends name unknown cluster(s) {', '.join(unknown)}"))
        if not selected:
            base.problems.append(Problem(m.key, f"backends {mcs.backends.describe()} match no cluster"))
        reporting = set(base.reporting.get((m.namespace, mcs.service), ()))
        missing = [c for c in selected if c not in reporting]
        if selected and len(missing) == len(selected):
            base.problems.append(Problem(m.key, f"no selected cluster reports Service {m.namespace}/{mcs.service}"))
        elif missing:
            base.problems.append(Problem(m.key, f"cluster(s) {', '.join(missing)} do not report Service "
                                                f"{m.namespace}/{mcs.service}; they do not back it"))
        hosts[host] = base.services[key] = GlobalService(m.namespace, m.name, mcs.service, host, m.key, mcs.ports)
        base.exporting.setdefault((m.namespace, mcs.service), []).append(base.services[key])
        node = ("service", *key)
        g.add_edges_from(((node, cluster_node(c)) for c in selected if c in reporting), relation="served-by")
        export = mcs.export_to or EVERY
        _select(snapshot, base, export)
        g.add_edge(node, _selector_node(export), relation="exported-to")
        # scoping is read off the graph: who backs the service, and whom its export selectors select
        base.servers[key] = tuple(sorted(c[1] for c in _related(g, node, "served-by")))
        base.receivers[key] = frozenset(c[1] for sel in _related(g, node, "exported-to") for c in g.successors(sel))
        if mcs.export_to is not None and not base.receivers[key]:
            base.problems.append(Problem(m.key, f"exportTo {export.describe()} matches no cluster"))
        unknown = [c for c in export.clusters or () if c not in snapshot.clusters]
        if unknown:
            base.problems.append(Problem(m.key, f"exportTo names unknown cluster(s) {', '.join(unknown)}"))


def _resolve(snapshot: Snapshot, topo: Topology, policy: Resource) -> ServiceKey | None:
    """The global service a policy's destination names, or None (with a problem)."""
    assert not isinstance(policy, MulticlusterService)
    m, dest = policy.meta, policy.destination
    if dest.multicluster_service:
        key = (m.namespace, dest.multicluster_service)
        found = topo.services.get(key)
        if found is None or not found.origin:
            topo.problems.append(Problem(m.key, f"MulticlusterService {m.namespace}/{dest.multicluster_service} "
                                                "does not exist (or is not applied)"))
            return None
        return key
    backing = topo.base.exporting.get((m.namespace, dest.service), [])
    if len(backing) > 1:
        names = ", ".join(s.name for s in backing)
        topo.problems.append(Problem(m.key, f"Service {dest.service} is exported by several MulticlusterServices "
                                            f"({names}); name one as destination.multiclusterService"))
        return None
    if backing:
        return (backing[0].namespace, backing[0].name)
    key = (m.namespace, dest.service)
    existing = topo.services.get(key)
    if existing is not None and existing.origin:
        topo.problems.append(Problem(m.key, f"the name {dest.service} is taken by MulticlusterService "
                                            f"{m.namespace}/{dest.service}, which exports Service "
                                            f"{existing.service}; name it as destination.multiclusterService"))
        return None
    host = global_host(m.namespace, dest.service)
    holder = topo.base.hosts.get(host)
    if holder is not None:
        topo.problems.append(Problem(m.key, f"the host {host} of Service {m.namespace}/{dest.service} is held by "
                                            f"{holder.origin}; route it through a MulticlusterService"))
        topo.refused.add(m.key)
        return None
    reporting = tuple(topo.base.reporting.get((m.namespace, dest.service), ()))
    if not reporting:
        topo.problems.append(Problem(m.key, f"no cluster reports Service {m.namespace}/{dest.service}"))
    if existing is None:
        topo.services[key] = GlobalService(m.namespace, dest.service, dest.service, host)
        topo.servers[key] = reporting
        topo.receivers[key] = frozenset()
        topo.graph.add_edges_from(((("service", *key), cluster_node(c)) for c in reporting), relation="served-by")
    return key


def _add_clients(snapshot: Snapshot, topo: Topology, policies: Iterable[TrafficPolicy]) -> None:
    """Client clusters of each TrafficPolicy; an implicit service is exported to its policies' clients."""
    for policy in sorted(policies, key=age):
        key = topo.destinations.get(policy.meta.key)
        if key is None:
            continue
        service = topo.services[key]
        if policy.clients is None:
            selector = EVERY
        else:
            selector = ClusterSelector(clusters=policy.clients)
            unknown = [c for c in policy.clients if c not in snapshot.clusters]
            if unknown:
                topo.problems.append(Problem(policy.meta.key, f"clients name unknown cluster(s) {', '.join(unknown)}"))
        clients = set(_select(snapshot, topo.base, selector))
        topo.graph.add_edge(("policy", policy.meta.key), _selector_node(selector), relation="clients")
        if service.origin:
            exported = topo.receivers[key]
            outside = sorted(clients - exported) if policy.clients is not None else []
            if outside:
                topo.problems.append(Problem(policy.meta.key, f"client cluster(s) {', '.join(outside)} are not in "
                                                              f"the exportTo of {service.origin}; not routed there"))
            clients &= exported
        else:
            topo.graph.add_edge(("service", *key), _selector_node(selector), relation="exported-to")
            topo.receivers[key] = topo.receivers[key] | clients
        topo.clients[policy.meta.key] = frozenset(clients)


def _check_policies(snapshot: Snapshot, topo: Topology) -> None:
    """Resource-level checks of policies that resolved: conflicts between whole policies, unknown names."""
    for key, kinds in sorted(topo.targeting.items()):
        failovers = kinds.get("FailoverPolicy", [])
        for loser in failovers[1:]:
            topo.problems.append(Problem(loser.meta.key, f"{failovers[0].meta.ref} (older) already sets failover "
                                                         f"for {key[0]}/{key[1]}; this policy is not applied"))
            topo.refused.add(loser.meta.key)
        if failovers and not topo.receivers.get(key):
            service = topo.services[key]
            topo.problems.append(Problem(failovers[0].meta.key, (
                f"no cluster calls {service.namespace}/{service.service} through the mesh (no MulticlusterService "
                "exports it to a cluster and no TrafficPolicy routes it), so there is nothing to fail over")))
        for policy in failovers:
            assert isinstance(policy, FailoverPolicy)
            unknown = [c for c in policy.priority if c not in snapshot.clusters]
            if unknown:
                topo.problems.append(Problem(policy.meta.key,
                                             f"priority.clusters names unknown cluster(s) {', '.join(unknown)}"))
    fleet = set(snapshot.clusters)
    for policy in snapshot.resources.access:
        for i, entry in enumerate(policy.sources):
            if entry.clusters and not fleet <= set(entry.clusters):
                left_out = ", ".join(sorted(fleet - set(entry.clusters)))
                topo.problems.append(Problem(policy.meta.key, (
                    f"from[{i}].clusters leaves out {left_out}, but every cluster shares one trust domain, so a "
                    "caller's identity does not tell its cluster; the policy is not applied (list every cluster "
                    "or drop clusters)")))
                topo.refused.add(policy.meta.key)


def concerned(snapshot: Snapshot) -> Mapping[str, tuple[str, ...]]:
    """Per resource key, the clusters whose status it reports (where it is meant to take effect)."""
    topo = topology(snapshot)
    out: dict[str, tuple[str, ...]] = {}
    for r in snapshot.resources.all():
        key = r.meta.key
        if key in topo.refused:
            clusters: Iterable[str] = ()
        elif isinstance(r, MulticlusterService):
            dest = topo.services.get((r.meta.namespace, r.meta.name))
            clusters = () if dest is None or dest.origin != key else (
                topo.receivers[(r.meta.namespace, r.meta.name)] | set(topo.servers[(r.meta.namespace, r.meta.name)]))
        elif isinstance(r, AccessPolicy) and r.destination.all:
            clusters = snapshot.clusters
        elif key not in topo.destinations:
            clusters = ()
        elif isinstance(r, TrafficPolicy):
            clusters = topo.clients.get(key, frozenset())
        elif isinstance(r, FailoverPolicy):
            clusters = topo.receivers[topo.destinations[key]]
        else:
            clusters = topo.servers[topo.destinations[key]]
        out[key] = tuple(sorted(clusters))
    return out
