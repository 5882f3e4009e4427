"""render(intent, ctx) -> Istio objects for one cluster (pure).

One module per output kind. Every object carries the ownership labels, so the sinks can tell what
they own. An intent that cannot be expressed raises RenderError (an IntentError), which the agent
NACKs with its message.
"""

from __future__ import annotations

from typing import Any

from agent.render import (
    authorizationpolicies,
    destinationrules,
    gateways,
    peerauthentications,
    serviceentries,
    virtualservices,
)
from agent.render.context import (
    ORIGIN_ANNOTATION,
    POLICY_ANNOTATION,
    RenderContext,
    RenderError,
    failover_tiers,
    policy_object_name,
)
from meshfleet.intents import ClusterIntent, TrafficRoute

__all__ = ["ORIGIN_ANNOTATION", "RenderContext", "RenderError", "policy_object_name", "render"]


def _routes(intent: ClusterIntent) -> dict[tuple[str, str], TrafficRoute]:
    services = {(s.namespace, s.name) for s in intent.services}
    routes: dict[tuple[str, str], TrafficRoute] = {}
    for t in intent.traffic:
        key = (t.namespace, t.service)
        if key not in services:
            raise RenderError(f"route {t.policy} is for service {t.namespace}/{t.service}, which the intent lacks")
        if key in routes:
            raise RenderError(f"routes {routes[key].policy} and {t.policy} both route service {t.namespace}/"
                              f"{t.service}")
        routes[key] = t
    return routes


def _check_unique(objects: list[dict[str, Any]]) -> None:
    """Two objects of one kind and name would overwrite each other in the cluster: refuse, naming their sources."""
    seen: dict[tuple[str, str, str], str] = {}
    for o in objects:
        meta = o["metadata"]
        key = (o["kind"], meta["namespace"], meta["name"])
        source = (meta.get("annotations") or {}).get(POLICY_ANNOTATION) or f"{meta['namespace']}/{meta['name']}"
        if key in seen:
            raise RenderError(f"{key[0]} {key[1]}/{key[2]} would be rendered twice (from {seen[key]} and {source})")
        seen[key] = source


def render(intent: ClusterIntent, ctx: RenderContext) -> list[dict[str, Any]]:
    """Every object this cluster should have, sorted by (namespace, kind, name); raises RenderError."""
    objects: list[dict[str, Any]] = []
    routes = _routes(intent)
    hosts: dict[str, str] = {}
    for service in intent.services:
        where = f"{service.namespace}/{service.name}"
        if service.host in hosts:
            raise RenderError(f"services {hosts[service.host]} and {where} both claim host {service.host}")
        hosts[service.host] = where
        # one failover order for both: the DestinationRule's failoverPriority reads the endpoints' tier labels
        tiers = failover_tiers(intent, service)
        objects.append(serviceentries.render(service, tiers, ctx))
        objects.append(destinationrules.render(service, tiers, ctx))
        route = routes.get((service.namespace, service.name))
        if route is not None:
            objects.append(virtualservices.render(service, route, ctx))
    if gateways.serves(intent):
        objects.append(gateways.render(intent, ctx))
    objects.extend(authorizationpolicies.render(rule, ctx) for rule in intent.access)
    objects.extend(peerauthentications.render(rule, ctx) for rule in intent.mtls)
    _check_unique(objects)
    return sorted(objects, key=lambda o: (o["metadata"]["namespace"], o["kind"], o["metadata"]["name"]))
