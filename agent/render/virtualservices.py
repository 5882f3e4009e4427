"""VirtualService shifting a service's traffic by weight across the clusters backing it."""

from __future__ import annotations

from typing import Any

from agent.render.context import RenderContext, global_host
from meshfleet.intents import ServiceIntent, TrafficSplit

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC"})


def render(service: ServiceIntent, split: TrafficSplit, ctx: RenderContext) -> dict[str, Any]:
    host = global_host(service.namespace, service.name)
    hosts = [host]
    if any(b.cluster.name == ctx.cluster for b in service.backends):
        # clients here call the plain service name; shift that traffic too
        hosts.append(ctx.local_host(service.namespace, service.name))
    route = [{"destination": {"host": host, "subset": t.cluster}, "weight": t.weight} for t in split.targets]
    spec: dict[str, Any] = {"hosts": hosts}
    protocols = {p.protocol for p in service.ports}
    if protocols & HTTP_PROTOCOLS:
        spec["http"] = [{"name": "meshfleet-split", "route": route}]
    if protocols - HTTP_PROTOCOLS:
        spec["tcp"] = [{"route": route}]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": ctx.metadata(service.namespace, service.name, **{"meshfleet.io/policy": split.policy}),
        "spec": spec,
    }
