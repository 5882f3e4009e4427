"""VirtualService routing a service's traffic across the clusters (and versions) backing it, rule by rule."""

from __future__ import annotations

from typing import Any

from agent.render.context import (
    POLICY_ANNOTATION,
    TRAFFIC_POLICY_KIND,
    RenderContext,
    RenderError,
    check_duration,
    check_percent,
    global_name,
    origin_annotations,
    policy_origin,
    subset_name,
)
from meshfleet.intents import (
    HTTP_PROTOCOLS,
    Fault,
    RequestMatch,
    Retries,
    RouteRule,
    ServiceIntent,
    StringMatch,
    TrafficRoute,
)

# Istio routes these by SNI with `tls` routes; `tcp` routes apply only to ports that are neither HTTP nor TLS
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})
MATCH_KINDS = ("exact", "prefix", "regex")


def _subset(service: ServiceIntent, cluster: str, subset: str, what: str) -> str:
    """The DestinationRule subset for (cluster, subset); RenderError unless the cluster backs it with that subset."""
    backend = next((b for b in service.backends if b.cluster.name == cluster), None)
    if backend is None:
        raise RenderError(f"{what}: cluster {cluster} does not back the service")
    if subset and all(x.name != subset for x in backend.subsets):
        raise RenderError(f"{what}: cluster {cluster} has no subset {subset!r}")
    return subset_name(cluster, subset)


def _destinations(service: ServiceIntent, rule: RouteRule, where: str) -> list[dict[str, Any]]:
    what = f"{where}: rule {rule.name!r}"
    if not rule.targets:
        raise RenderError(f"{what}: no route targets")
    route = []
    for t in rule.targets:
        if t.weight < 0:
            raise RenderError(f"{what}: negative weight {t.weight} for cluster {t.cluster}")
        route.append({"destination": {"host": service.host, "subset": _subset(service, t.cluster, t.subset, what)},
                      "weight": t.weight})
    if sum(t.weight for t in rule.targets) == 0:
        raise RenderError(f"{what}: the weights add up to 0")
    return route


def _string(m: StringMatch, what: str, kinds: tuple[str, ...] = MATCH_KINDS) -> dict[str, str]:
    if m.kind not in kinds:
        raise RenderError(f"{what}: match kind {m.kind!r} is not supported here (use {' or '.join(kinds)})")
    if m.kind != "exact" and not m.value:
        raise RenderError(f"{what}: an empty {m.kind} match")
    return {m.kind: m.value}


def _match(m: RequestMatch, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.headers:
        headers: dict[str, dict[str, str]] = {}
        for name, value in m.headers:
            # header names are case-insensitive and Istio takes them in lower case only
            key = name.lower()
            if not key or key in headers:
                raise RenderError(f"{what}: header name {name!r} is empty or repeated")
            headers[key] = _string(value, f"{what}: header {name!r}")
        out["headers"] = headers
    if m.query_params:
        params: dict[str, dict[str, str]] = {}
        for name, value in m.query_params:
            if not name or name in params:
                raise RenderError(f"{what}: query parameter name {name!r} is empty or repeated")
            # Istio does not support prefix matches on query parameters
            params[name] = _string(value, f"{what}: query parameter {name!r}", ("exact", "regex"))
        out["queryParams"] = params
    if m.uri is not None:
        out["uri"] = _string(m.uri, f"{what}: uri")
    return out


def _retries(r: Retries, what: str) -> dict[str, Any]:
    if r.attempts < 0:
        raise RenderError(f"{what}: retry attempts {r.attempts} is negative")
    if r.attempts == 0 and (r.per_try_timeout or r.retry_on):
        raise RenderError(f"{what}: retry settings with 0 attempts (retries disabled)")
    out: dict[str, Any] = {"attempts": r.attempts}
    if r.per_try_timeout:
        out["perTryTimeout"] = check_duration(r.per_try_timeout, f"{what}: perTryTimeout")
    if r.retry_on:
        out["retryOn"] = r.retry_on
    return out


def _fault(f: Fault, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if f.delay:
        out["delay"] = {"fixedDelay": check_duration(f.delay, f"{what}: fault delay"),
                        "percentage": {"value": check_percent(f.delay_percent, f"{what}: fault delay percent")}}
    if f.abort_status:
        if not 200 <= f.abort_status <= 599:
            raise RenderError(f"{what}: abort status {f.abort_status} is not an HTTP status 200-599")
        out["abort"] = {"httpStatus": f.abort_status,
                        "percentage": {"value": check_percent(f.abort_percent, f"{what}: fault abort percent")}}
    if not out:
        raise RenderError(f"{what}: fault injects neither a delay nor an abort")
    return out


def _http(service: ServiceIntent, rule: RouteRule, where: str) -> dict[str, Any]:
    what = f"{where}: rule {rule.name!r}"
    out: dict[str, Any] = {}
    if rule.name:
        out["name"] = rule.name
    matches = [_match(m, what) for m in rule.matches]
    # an empty match matches every request, and so does a rule holding one: leave the rule unconditional
    if matches and all(matches):
        out["match"] = matches
    out["route"] = _destinations(service, rule, where)
    if rule.timeout:
        out["timeout"] = check_duration(rule.timeout, f"{what}: timeout")
    if rule.retries is not None:
        out["retries"] = _retries(rule.retries, what)
    if rule.fault is not None:
        out["fault"] = _fault(rule.fault, what)
    if (m := rule.mirror) is not None:
        out["mirror"] = {"host": service.host, "subset": _subset(service, m.cluster, m.subset, f"{what}: mirror")}
        out["mirrorPercentage"] = {"value": check_percent(m.percent, f"{what}: mirror percent")}
    return out


def http_only_features(rule: RouteRule) -> list[str]:
    """What in `rule` only HTTP traffic can honour."""
    present = [("matches", bool(rule.matches)), ("timeout", bool(rule.timeout)), ("retries", rule.retries is not None),
               ("fault", rule.fault is not None), ("mirror", rule.mirror is not None)]
    return [name for name, used in present if used]


def render(service: ServiceIntent, route: TrafficRoute, ctx: RenderContext) -> dict[str, Any]:
    """The VirtualService of `route`; raises RenderError for a route the service's ports cannot carry."""
    where = f"route {route.policy} for service {service.namespace}/{service.name}"
    if not route.rules:
        raise RenderError(f"{where}: no rules")
    hosts = [service.host]
    local = ctx.local_host(service.namespace, service.service)
    if ctx.backs(service) and local != service.host:
        # clients here call the plain service name; route that traffic too
        hosts.append(local)
    protocols = {p.protocol for p in service.ports}
    http, tls, tcp = protocols & HTTP_PROTOCOLS, protocols & TLS_PROTOCOLS, protocols - HTTP_PROTOCOLS - TLS_PROTOCOLS
    spec: dict[str, Any] = {"hosts": hosts}
    if http:
        spec["http"] = [_http(service, r, where) for r in route.rules]
    else:
        for r in route.rules:
            if features := http_only_features(r):
                raise RenderError(f"{where}: rule {r.name!r} uses {', '.join(features)}, which only HTTP traffic "
                                  f"can honour, but the service has no HTTP port ({', '.join(sorted(protocols))})")
    # Connections on the other ports follow the catch-all rule (the first without matches: no request gets past
    # it). Its timeout, retries, fault and mirror are HTTP-only and stay with the HTTP ports. Without a catch-all
    # (only possible with HTTP ports) the other ports have no route and keep Istio's default balancing.
    catch_all = next((r for r in route.rules if not r.matches), None)
    if catch_all is not None:
        if tls:
            spec["tls"] = [{"match": [{"sniHosts": list(hosts)}], "route": _destinations(service, catch_all, where)}]
        if tcp:
            spec["tcp"] = [{"route": _destinations(service, catch_all, where)}]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": ctx.metadata(service.namespace, global_name(service), **{POLICY_ANNOTATION: route.policy},
                                 **origin_annotations(policy_origin(TRAFFIC_POLICY_KIND, route.policy))),
        "spec": spec,
    }
