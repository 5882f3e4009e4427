"""PeerAuthentication from an mTLS rule: whether the selected workloads accept plain-text peers."""

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
from meshfleet.intents import MtlsRule

MODES = ("STRICT", "PERMISSIVE")


def render(rule: MtlsRule, ctx: RenderContext) -> dict[str, Any]:
    if rule.mode not in MODES:
        raise RenderError(f"mTLS rule of {rule.policy} in namespace {rule.namespace}: mode {rule.mode!r} is not "
                          f"one of {', '.join(MODES)}")
    spec: dict[str, Any] = {}
    if rule.selector:
        spec["selector"] = {"matchLabels": dict(rule.selector)}  # absent: every workload of the namespace
    spec["mtls"] = {"mode": rule.mode}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": ctx.metadata(rule.namespace, policy_object_name(rule.policy), **{POLICY_ANNOTATION: rule.policy},
                                 **origin_annotations(policy_origin(ACCESS_POLICY_KIND, rule.policy))),
        "spec": spec,
    }
