"""The east-west Gateway: remote clusters' calls for the hosts this cluster serves pass through, routed by SNI."""

from __future__ import annotations

from typing import Any

from agent.render.context import RenderContext
from meshfleet.intents import EAST_WEST_PORT, ClusterIntent

GATEWAY_NAME = "meshfleet-eastwest"
GLOBAL_HOSTS = "*.global"


def serves(intent: ClusterIntent) -> bool:
    """True if the cluster backs a service in its intent, so remote clients may come through its gateway."""
    return any(b.cluster.name == intent.cluster.name for s in intent.services for b in s.backends)


def hosts(intent: ClusterIntent) -> list[str]:
    """`*.global`, then, sorted, every other host of a service this cluster backs."""
    custom = {s.host for s in intent.services if not s.host.endswith(".global")
              and any(b.cluster.name == intent.cluster.name for b in s.backends)}
    return [GLOBAL_HOSTS, *sorted(custom)]


def render(intent: ClusterIntent, ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": ctx.metadata(ctx.gateway_namespace, GATEWAY_NAME),
        "spec": {
            "selector": dict(ctx.gateway_selector),
            "servers": [{
                "port": {"number": EAST_WEST_PORT, "name": "tls", "protocol": "TLS"},
                # mTLS passes through untouched; the SNI (outbound_.<port>_.<subset>_.<host>) picks the cluster.
                # A host missing here is dropped by the gateway, so custom hosts are listed one by one.
                "tls": {"mode": "AUTO_PASSTHROUGH"},
                "hosts": hosts(intent),
            }],
        },
    }
