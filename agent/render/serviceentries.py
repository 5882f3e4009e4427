"""ServiceEntry for a global host: local endpoints direct, remote ones via their east-west gateway."""

from __future__ import annotations

from typing import Any

from agent.render.context import CLUSTER_LABEL, RenderContext, global_host
from meshfleet.intents import ServiceIntent


def render(service: ServiceIntent, ctx: RenderContext) -> dict[str, Any]:
    endpoints = []
    for b in service.backends:
        if b.cluster.name == ctx.cluster:
            address = ctx.local_host(service.namespace, service.name)
            ports = {p.name: p.number for p in service.ports}
        else:
            # AUTO_PASSTHROUGH on the remote gateway routes by SNI, so every port maps to it
            address = b.address
            ports = {p.name: b.port for p in service.ports}
        endpoint: dict[str, Any] = {
            "address": address,
            "ports": ports,
            "labels": {CLUSTER_LABEL: b.cluster.name},
            "locality": b.cluster.locality,
        }
        if b.cluster.network:
            endpoint["network"] = b.cluster.network
        endpoints.append(endpoint)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": ctx.metadata(service.namespace, service.name),
        "spec": {
            "hosts": [global_host(service.namespace, service.name)],
            "location": "MESH_INTERNAL",
            # gateway addresses may be names (cloud load balancers), so resolve by DNS
            "resolution": "DNS",
            "ports": [{"number": p.number, "name": p.name, "protocol": p.protocol} for p in service.ports],
            "endpoints": endpoints,
        },
    }
