"""render(intent, ctx) -> Istio objects for one cluster (pure).

One module per output kind. Every object carries the ownership labels, so the
sinks can tell what they own.
"""

from __future__ import annotations

from typing import Any

from agent.render import destinationrules, gateways, serviceentries, virtualservices
from agent.render.context import RenderContext, global_host
from meshfleet.intents import ClusterIntent

__all__ = ["RenderContext", "global_host", "render"]


def render(intent: ClusterIntent, ctx: RenderContext) -> list[dict[str, Any]]:
    """Every object this cluster should have, sorted by (namespace, kind, name)."""
    objects: list[dict[str, Any]] = []
    splits = {(t.namespace, t.service): t for t in intent.traffic}
    for service in intent.services:
        objects.append(serviceentries.render(service, ctx))
        objects.append(destinationrules.render(service, ctx))
        split = splits.get((service.namespace, service.name))
        if split is not None:
            objects.append(virtualservices.render(service, split, ctx))
    if gateways.serves(intent):
        objects.append(gateways.render(ctx))
    return sorted(objects, key=lambda o: (o["metadata"]["namespace"], o["kind"], o["metadata"]["name"]))
