"""The east-west Gateway: remote clusters' calls for `*.global` hosts pass through, routed by their SNI."""

from __future__ import annotations

from typing import Any

from agent.render.context import RenderContext
from meshfleet.intents import EAST_WEST_PORT, ClusterIntent

GATEWAY_NAME = "meshfleet-eastwest"


def serves(intent: ClusterIntent) -> bool:
    """True if the cluster backs a service in its intent, so remote clients may come through its gateway."""
    return any(b.cluster.name == intent.cluster.name for s in intent.services for b in s.backends)


def render(ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": GATEWAY_NAME, "namespace": ctx.gateway_namespace, "labels": ctx.labels()},
        "spec": {
            "selector": dict(ctx.gateway_selector),
            "servers": [{
                "port": {"number": EAST_WEST_PORT, "name": "tls", "protocol": "TLS"},
                # mTLS passes through untouched; the SNI (outbound_.<port>_.<subset>_.<host>) picks the cluster
                "tls": {"mode": "AUTO_PASSTHROUGH"},
                "hosts": ["*.global"],
            }],
        },
    }
