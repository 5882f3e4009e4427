"""AuthorizationPolicy from an access rule: who may (ALLOW) or may not (DENY) call the selected workloads.

Istio semantics this relies on (security.istio.io/v1 AuthorizationPolicy): a rule matches when one of its
`from` sources and one of its `to` operations match, an absent `from`/`to` matching anything and an empty rule
`{}` every request; a policy without rules matches nothing (so an ALLOW without rules denies everything, and
Istio rejects a DENY without rules as meaningless). Istio's validation also rejects an empty `source` or
`operation`, so "any" is expressed by leaving the field out.
"""

from __future__ import annotations

from typing import Any

from agent.render.context import (
    ACCESS_POLICY_KIND,
    POLICY_ANNOTATION,
    RenderContext,
    RenderError,
    origin_annotations,
    policy_object_name,
    policy_origin,
)
from meshfleet.intents import AccessOperation, AccessRule, AccessSource

ACTIONS = ("ALLOW", "DENY")


def _strings(values: tuple[str, ...], field: str, what: str) -> list[str]:
    if not all(values):
        raise RenderError(f"{what}: an empty string in {field}")
    return list(values)


def _source(s: AccessSource, what: str) -> dict[str, Any]:
    source: dict[str, Any] = {}
    if s.namespaces:
        source["namespaces"] = _strings(s.namespaces, "namespaces", what)
    if s.principals:
        source["principals"] = _strings(s.principals, "principals", what)
    # A source naming no namespace or principal is the hub's "any cluster of the mesh": any caller with a mesh
    # identity. "*" is Istio's presence match on the peer principal (mTLS required), and keeps the source
    # non-empty as Istio's validation demands.
    return source or {"principals": ["*"]}


def _operation(o: AccessOperation, what: str) -> dict[str, Any]:
    operation: dict[str, Any] = {}
    if o.ports:
        if not all(0 < p < 65536 for p in o.ports):
            raise RenderError(f"{what}: ports must be 1-65535, got {list(o.ports)}")
        operation["ports"] = [str(p) for p in o.ports]  # Istio takes ports as strings
    if o.methods:
        operation["methods"] = _strings(o.methods, "methods", what)
    if o.paths:
        operation["paths"] = _strings(o.paths, "paths", what)
    return operation


def rules(rule: AccessRule, what: str) -> list[dict[str, Any]]:
    """One Istio rule per source, each with every operation (sources and operations are alternatives)."""
    operations = [_operation(o, what) for o in rule.operations]
    # an operation that names nothing allows any request, and so does a `to` holding one: leave `to` out
    restricted = bool(operations) and all(operations)
    out: list[dict[str, Any]] = []
    for s in rule.sources or (None,):
        r: dict[str, Any] = {}
        if s is not None:
            r["from"] = [{"source": _source(s, what)}]
        if restricted:
            # fresh dicts per rule: shared ones would come out of YAML as anchors and aliases
            r["to"] = [{"operation": _operation(o, what)} for o in rule.operations]
        out.append(r)
    # no source and no operation: `[{}]`, every request (allow all for ALLOW, deny all for DENY)
    return out


def render(rule: AccessRule, ctx: RenderContext) -> dict[str, Any]:
    what = f"access rule of {rule.policy} in namespace {rule.namespace}"
    if rule.action not in ACTIONS:
        raise RenderError(f"{what}: action {rule.action!r} is not one of {', '.join(ACTIONS)}")
    spec: dict[str, Any] = {}
    if rule.selector:
        spec["selector"] = {"matchLabels": dict(rule.selector)}  # absent: every workload of the namespace
    spec["action"] = rule.action
    spec["rules"] = rules(rule, what)
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": ctx.metadata(rule.namespace, policy_object_name(rule.policy), **{POLICY_ANNOTATION: rule.policy},
                                 **origin_annotations(policy_origin(ACCESS_POLICY_KIND, rule.policy))),
        "spec": spec,
    }
