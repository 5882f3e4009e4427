"""ServiceEntry for a mesh-wide host: the local copy direct, remote copies via their east-west gateway.

Endpoints, per backing cluster and address:

* one whole-cluster endpoint labelled `meshfleet.io/cluster: <cluster>`: what DestinationRule subset
  `<cluster>` selects, exactly once per address;
* one endpoint per version subset, at the same address, labelled with the subset's own labels plus
  `meshfleet.io/subset-of: <cluster>` and `meshfleet.io/subset: <name>`: what subset `<cluster>-<name>`
  selects. They do not carry `meshfleet.io/cluster`, because Istio subsets select by label inclusion (there
  is no "label absent"): with it, subset `<cluster>` would select the cluster's address 1 + N times, and a
  cluster's weight would grow with its number of versions.

The host's own (unsubsetted) pool holds every endpoint, so endpoint weights even it out: each cluster's
endpoints weigh `1 + (most versions any cluster has)` in total, versions 1 each and the whole-cluster endpoint
the rest. A cluster thus gets the same share with or without versions, as a plain per-cluster endpoint does.

Every endpoint of a cluster's copy also carries that cluster's failover tier labels (context.FailoverTiers),
which the DestinationRule's `failoverPriority` turns into Envoy priorities. Subsets never name those labels (they
are reserved), and selection is by inclusion, so they change no subset's selection.

A call to a remote version carries its subset name in the SNI (`outbound_.<port>_.<cluster>-<name>_.<host>`)
and the serving cluster's gateway resolves it against that cluster's own DestinationRule, i.e. to the version
endpoint of its local copy. That copy is addressed by its Kubernetes Service name, whose ClusterIP balances
over every pod of the Service: versions reach the right cluster, not yet the right pods (README, Known limits).
"""

from __future__ import annotations

from typing import Any

from agent.render.context import (
    FailoverTiers,
    RenderContext,
    RenderError,
    endpoint_labels,
    global_name,
    origin_annotations,
)
from meshfleet.intents import Backend, ServiceIntent
from meshfleet.names import address_error, dns1123_subdomain_error


def check_service(service: ServiceIntent) -> None:
    """Raise RenderError if the intent of `service` cannot make a valid ServiceEntry."""
    where = f"service {service.namespace}/{service.name}"
    if err := dns1123_subdomain_error(service.host):
        raise RenderError(f"{where}: host {err}")
    if not service.ports:
        raise RenderError(f"{where}: no ports")
    if not service.backends:
        raise RenderError(f"{where}: no backing cluster")
    seen: set[str] = set()
    for b in service.backends:
        if b.cluster.name in seen:
            raise RenderError(f"{where}: cluster {b.cluster.name} is listed twice as a backend")
        seen.add(b.cluster.name)
        if len({x.name for x in b.subsets}) != len(b.subsets):
            raise RenderError(f"{where}: cluster {b.cluster.name} lists a subset twice")


def _reach(service: ServiceIntent, backend: Backend, ctx: RenderContext) -> tuple[str, dict[str, int]]:
    """(address, port name -> number) at which this cluster reaches `backend`'s copy of `service`."""
    if backend.cluster.name == ctx.cluster:
        return ctx.local_host(service.namespace, service.service), {p.name: p.number for p in service.ports}
    if not backend.address or address_error(backend.address) or not 0 < backend.port < 65536:
        raise RenderError(f"service {service.namespace}/{service.name}: cluster {backend.cluster.name} has no "
                          f"usable east-west gateway address ({backend.address!r}, port {backend.port})")
    # AUTO_PASSTHROUGH on the remote gateway routes by SNI, so every port maps to the gateway's port
    return backend.address, {p.name: backend.port for p in service.ports}


def _endpoint(service: ServiceIntent, backend: Backend, ctx: RenderContext, labels: dict[str, str],
              weight: int | None) -> dict[str, Any]:
    address, ports = _reach(service, backend, ctx)
    out: dict[str, Any] = {"address": address, "ports": ports, "labels": labels, "locality": backend.cluster.locality}
    if backend.cluster.network:
        out["network"] = backend.cluster.network
    if weight is not None:
        out["weight"] = weight
    return out


def render(service: ServiceIntent, tiers: FailoverTiers, ctx: RenderContext) -> dict[str, Any]:
    """The ServiceEntry of `service`, its endpoints labelled with their cluster's failover tier in `tiers`."""
    check_service(service)
    most_versions = max(len(b.subsets) for b in service.backends)
    endpoints: list[dict[str, Any]] = []
    for b in service.backends:
        tier = tiers.labels(b.cluster.name)
        # with no versions anywhere every endpoint weighs the same: leave weights out
        endpoints.append(_endpoint(service, b, ctx, {**endpoint_labels(b.cluster.name), **tier},
                                   1 + most_versions - len(b.subsets) if most_versions else None))
        endpoints.extend(_endpoint(service, b, ctx, {**endpoint_labels(b.cluster.name, x), **tier}, 1)
                         for x in b.subsets)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": ctx.metadata(service.namespace, global_name(service), **origin_annotations(service.origin)),
        "spec": {
            "hosts": [service.host],
            "location": "MESH_INTERNAL",
            # gateway addresses may be names (cloud load balancers), so resolve by DNS
            "resolution": "DNS",
            "ports": [{"number": p.number, "name": p.name, "protocol": p.protocol} for p in service.ports],
            "endpoints": endpoints,
        },
    }
