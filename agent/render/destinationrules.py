"""DestinationRule for a mesh-wide host: cluster and version subsets, Istio mTLS, outlier detection."""

from __future__ import annotations

from typing import Any

from agent.render.context import (
    RenderContext,
    RenderError,
    check_duration,
    check_percent,
    check_subset_name,
    endpoint_labels,
    global_name,
    subset_name,
)
from meshfleet.intents import OutlierDetection, ServiceIntent


def subsets(service: ServiceIntent) -> list[dict[str, Any]]:
    """One subset per backing cluster (`<cluster>`) and per version of it (`<cluster>-<subset>`).

    Raises RenderError if a name is not a DNS-1123 label or two (cluster, subset) pairs share one.
    """
    where = f"service {service.namespace}/{service.name}"
    owners: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for b in service.backends:
        for x in (None, *b.subsets):
            name = subset_name(b.cluster.name, x.name if x else "")
            owner = f"subset {x.name!r} of cluster {b.cluster.name}" if x else f"cluster {b.cluster.name}"
            check_subset_name(name, f"{where}: {owner}")
            if name in owners:
                raise RenderError(f"{where}: {owners[name]} and {owner} both make DestinationRule subset {name!r}")
            owners[name] = owner
            out.append({"name": name, "labels": endpoint_labels(b.cluster.name, x)})
    return out


def _outlier(o: OutlierDetection, where: str) -> dict[str, Any]:
    if o.consecutive_5xx_errors < 0:
        raise RenderError(f"{where}: consecutive5xxErrors {o.consecutive_5xx_errors} is negative")
    return {
        "consecutive5xxErrors": o.consecutive_5xx_errors,
        "interval": check_duration(o.interval, f"{where}: outlier detection interval"),
        "baseEjectionTime": check_duration(o.base_ejection_time, f"{where}: outlier detection baseEjectionTime"),
        "maxEjectionPercent": int(check_percent(o.max_ejection_percent, f"{where}: maxEjectionPercent")),
    }


def render(service: ServiceIntent, ctx: RenderContext) -> dict[str, Any]:
    # across networks the east-west gateway routes by the SNI of Istio mTLS: required
    policy: dict[str, Any] = {"tls": {"mode": "ISTIO_MUTUAL"}}
    if service.outlier is not None:
        policy["outlierDetection"] = _outlier(service.outlier, f"service {service.namespace}/{service.name}")
        # locality failover moves traffic only off endpoints outlier detection ejects; the two go together
        policy["loadBalancer"] = {"localityLbSetting": {"enabled": True}}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": ctx.metadata(service.namespace, global_name(service)),
        "spec": {"host": service.host, "trafficPolicy": policy, "subsets": subsets(service)},
    }
