"""Builders for hand-made hub snapshots (tests of mgmt.topology, mgmt.translate, mgmt.changes).

The default fleet: three clusters in three regions; `reviews` runs in us-east-1 (subsets v1, v2)
and eu-west-1 (v3), `productpage` in ap-south-1 only, `ratings` everywhere. Label sets are chosen
so that every selector operator picks a different set of clusters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from meshfleet.intents import EAST_WEST_PORT, ClusterRef, Port, Subset, WeightedTarget
from mgmt.model import (
    ClusterSelector,
    Destination,
    DiscoveredService,
    Discovery,
    HttpRule,
    Meta,
    MulticlusterService,
    Resource,
    Resources,
    RouteTarget,
    Snapshot,
    TrafficPolicy,
)

NS = "bookinfo"
US, EU, AP = "us-east-1", "eu-west-1", "ap-south-1"
CLUSTERS: dict[str, ClusterRef] = {
    US: ClusterRef(US, "us-east", "us-east-1a", "net-us-east"),
    EU: ClusterRef(EU, "eu-west", "eu-west-1a", "net-eu-west"),
    AP: ClusterRef(AP, "ap-south", "ap-south-1a", "net-ap-south"),
}
LABELS: dict[str, dict[str, str]] = {
    US: {"env": "prod", "tier": "primary"},
    EU: {"env": "prod", "tier": "primary", "canary": "true"},
    AP: {"env": "staging", "tier": "edge"},
}
HTTP = (Port("http", 9080, "HTTP"),)
TCP = (Port("mysql", 3306, "TCP"),)


def gateway(cluster: str) -> str:
    return f"eastwest.{cluster}.example"


def service(name: str, *subsets: str, ports: tuple[Port, ...] = HTTP, selector: Mapping[str, str] | None = None,
            namespace: str = NS) -> DiscoveredService:
    """A reported Service; its pod selector defaults to app=<name>."""
    pods = {"app": name} if selector is None else selector
    return DiscoveredService(namespace, name, ports, tuple(Subset(s, {"version": s}) for s in subsets),
                             tuple(sorted(pods.items())))


def report(cluster: str, *services: DiscoveredService, address: str | None = None) -> Discovery:
    return Discovery(gateway(cluster) if address is None else address, EAST_WEST_PORT,
                     {(s.namespace, s.name): s for s in services})


REVIEWS_US = service("reviews", "v1", "v2")
REVIEWS_EU = service("reviews", "v3")
DISCOVERY: dict[str, Discovery] = {
    US: report(US, REVIEWS_US, service("ratings")),
    EU: report(EU, REVIEWS_EU, service("ratings")),
    AP: report(AP, service("productpage"), service("ratings")),
}


def meta(kind: str, name: str, created: str = "", namespace: str = NS) -> Meta:
    return Meta(kind, namespace, name, f"{kind} {namespace}/{name}", created)


def to_service(name: str) -> Destination:
    return Destination(service=name)


def to_mcs(name: str) -> Destination:
    return Destination(multicluster_service=name)


def clusters(*names: str) -> ClusterSelector:
    return ClusterSelector(clusters=names)


def mcs(name: str, backends: ClusterSelector, export_to: ClusterSelector | None = None, svc: str = "",
        host: str = "", created: str = "", ports: tuple[Port, ...] = (), namespace: str = NS) -> MulticlusterService:
    """A MulticlusterService backed by Service `svc` (default: its own name)."""
    return MulticlusterService(meta("MulticlusterService", name, created, namespace), svc or name, host, backends,
                               export_to, ports)


Target = tuple[str, int] | tuple[str, int, str]  # (cluster, weight) or (cluster, weight, subset)


def targets_of(pairs: Iterable[Target]) -> tuple[RouteTarget, ...]:
    return tuple(RouteTarget(*t) for t in pairs)


def split(name: str, dest: Destination | str, route: Sequence[Target], clients: Sequence[str] | None = None,
          created: str = "", namespace: str = NS) -> TrafficPolicy:
    """A TrafficPolicy written as spec.route (a plain service when `dest` is a string)."""
    destination = to_service(dest) if isinstance(dest, str) else dest
    return TrafficPolicy(meta("TrafficPolicy", name, created, namespace), destination,
                         (HttpRule("default", targets_of(route)),), None if clients is None else tuple(clients))


def rules(name: str, dest: Destination | str, *http: HttpRule, clients: Sequence[str] | None = None,
          created: str = "") -> TrafficPolicy:
    """A TrafficPolicy written as spec.http."""
    destination = to_service(dest) if isinstance(dest, str) else dest
    return TrafficPolicy(meta("TrafficPolicy", name, created), destination, http,
                         None if clients is None else tuple(clients), simple=False)


def weighted(*pairs: Target) -> tuple[WeightedTarget, ...]:
    return tuple(WeightedTarget(*t) for t in pairs)


def snapshot(*resources: Resource, discovery: Mapping[str, Discovery] | None = None,
             fleet: Mapping[str, ClusterRef] | None = None,
             labels: Mapping[str, Mapping[str, str]] | None = None) -> Snapshot:
    return Snapshot(CLUSTERS if fleet is None else fleet, DISCOVERY if discovery is None else discovery,
                    Resources.of(resources), LABELS if labels is None else labels)
