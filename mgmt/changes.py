"""Which clusters a change concerns, so the hub re-translates only those (pure).

`translate` reports what each cluster's result `reads`: ("svc", service) for a
global service it receives or serves, ("policy", key) for each TrafficPolicy it
is a client of, ("acl", service) for the access rules of one it serves,
("namespace-wide",) and ("cluster", name). `changed(old, new)` names the same
keys for what differs between two snapshots; a cluster is re-translated when
its last reads meet them, or when the new topology makes it newly concerned.
`carry` keeps the cluster-independent parts of the old snapshot's memo that the
change did not touch, so unchanged services stay the same objects (and the
encoder's cached bytes stay valid).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from mgmt.model import AccessPolicy, MulticlusterService, Resource, Snapshot
from mgmt.topology import ServiceKey, Topology, topology

_ASPECT = {"FailoverPolicy": "svc", "AccessPolicy": "acl"}


def _service_keys(topo: Topology, namespace: str, service: str) -> list[ServiceKey]:
    return [k for k, s in topo.services.items() if s.namespace == namespace and s.service == service]


def _whole(key: ServiceKey) -> set[Hashable]:
    return {("svc", key), ("route", key), ("acl", key)}


def seed(old: Snapshot, new: Snapshot) -> None:
    """Reuse the old snapshot's service layer when what it is built from is unchanged (a policy edit)."""
    base = old.memo.get("topology-base")
    if base is not None and (old.clusters, old.labels, old.discovery, old.resources.services) == (
            new.clusters, new.labels, new.discovery, new.resources.services):
        new.memo.setdefault("topology-base", base)


def changed(old: Snapshot, new: Snapshot) -> set[Hashable] | None:
    """The dependency keys whose inputs differ; None when the fleet itself changed (everything is affected)."""
    if old.clusters != new.clusters or old.labels != new.labels or old.region_costs != new.region_costs:
        return None
    out: set[Hashable] = set()
    topos = (topology(old), topology(new))
    for key in old.evicted.keys() | new.evicted.keys():
        # the hub evicted or restored clusters of a FailoverPolicy's destination (mgmt.failover)
        if old.evicted.get(key, frozenset()) != new.evicted.get(key, frozenset()):
            for topo in topos:
                if (dest := topo.destinations.get(key)) is not None:
                    out |= _whole(dest)
    before = {r.meta.key: r for r in old.resources.all()}
    after = {r.meta.key: r for r in new.resources.all()}
    for key in before.keys() | after.keys():
        if before.get(key) == after.get(key):
            continue
        for topo, resource in zip(topos, (before.get(key), after.get(key)), strict=True):
            if resource is not None:
                out |= _touched(topo, resource)
    old_topo, new_topo = topos
    for service_key in old_topo.services.keys() | new_topo.services.keys():
        # a service can appear, vanish or change hands without its own resource changing: an older
        # MulticlusterService taking its host (or giving it up) refuses (or restores) a younger one
        if old_topo.services.get(service_key) != new_topo.services.get(service_key):
            out |= _whole(service_key)
    for key in old_topo.destinations.keys() | new_topo.destinations.keys():
        was, now = old_topo.destinations.get(key), new_topo.destinations.get(key)
        if was != now or old_topo.clients.get(key) != new_topo.clients.get(key):
            out |= _whole(was) if was else set()
            out |= _whole(now) if now else set()
            out.add(("policy", key))
    for name in old.discovery.keys() | new.discovery.keys():
        a, b = old.discovery.get(name), new.discovery.get(name)
        if a == b:
            continue
        out.add(("cluster", name))
        services = set(a.services if a else ()) | set(b.services if b else ())
        if a is not None and b is not None and (a.gateway_address, a.gateway_port) == (b.gateway_address,
                                                                                        b.gateway_port):
            services = {s for s in services if a.services.get(s) != b.services.get(s)}
        for ns, svc in services:
            for topo in topos:
                for service_key in _service_keys(topo, ns, svc):
                    out |= _whole(service_key)
    return out


def _touched(topo: Topology, resource: Resource) -> set[Hashable]:
    m = resource.meta
    if isinstance(resource, MulticlusterService):
        return _whole((m.namespace, m.name))
    if isinstance(resource, AccessPolicy) and resource.destination.all:
        return {("namespace-wide",)}
    if m.kind == "TrafficPolicy":
        return {("policy", m.key)}
    dest = topo.destinations.get(m.key)
    return {(_ASPECT[m.kind], dest)} if dest else set()


def affected(reads: Mapping[str, frozenset[Hashable]], changes: set[Hashable] | None, new: Snapshot) -> set[str]:
    """Clusters to re-translate: those whose last result read a changed key, or that the change newly concerns."""
    if changes is None:
        return set(new.clusters)
    out = {c for c in new.clusters if c not in reads or reads[c] & changes}
    topo = topology(new)
    for dep in changes:
        assert isinstance(dep, tuple)
        if dep == ("namespace-wide",):
            return set(new.clusters)
        aspect, key = dep
        if aspect == "cluster":
            out.add(key)
            continue
        if aspect == "policy":
            out |= topo.clients.get(key, frozenset())
            continue
        if key not in topo.services:
            continue
        if aspect in ("svc", "route"):
            out |= topo.receivers[key]
        if aspect in ("svc", "acl"):
            out |= set(topo.servers[key])
    return out & set(new.clusters)


def carry(old: Snapshot, new: Snapshot, changes: set[Hashable] | None) -> None:
    """Give `new` the old snapshot's per-scope results (translate's memo) that `changes` leaves valid."""
    if changes is None:
        return
    new_topo = topology(new)
    kept: dict[Hashable, Any] = {}
    for scope, entries in old.memo.get("scoped", {}).items():
        if scope in changes:
            continue
        aspect, key = scope if len(scope) == 2 else (scope[0], None)
        if aspect == "policy":
            # a route also depends on the service it routes (ports, backends, subsets)
            key = new_topo.destinations.get(str(key))
            if key is None:
                continue
        if key is not None and ("svc", key) in changes:
            continue
        kept[scope] = entries
    new.memo.setdefault("scoped", {}).update(kept)
