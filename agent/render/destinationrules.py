"""DestinationRule for a global host: one subset per backing cluster, Istio mTLS to every endpoint."""

from __future__ import annotations

from typing import Any

from agent.render.context import CLUSTER_LABEL, RenderContext, global_host
from meshfleet.intents import ServiceIntent


def render(service: ServiceIntent, ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": ctx.metadata(service.namespace, service.name),
        "spec": {
            "host": global_host(service.namespace, service.name),
            # across networks the east-west gateway routes by the SNI of Istio mTLS: required
            "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
            "subsets": [
                {"name": b.cluster.name, "labels": {CLUSTER_LABEL: b.cluster.name}} for b in service.backends
            ],
        },
    }
