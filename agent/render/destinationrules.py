"""DestinationRule for a mesh-wide host: cluster and version subsets, Istio mTLS, outlier detection and the
failover order (`failoverPriority` over the ServiceEntry endpoints' tier labels, see context.FailoverTiers)."""

from __future__ import annotations

from typing import Any

from agent.render.context import (
    FailoverTiers,
    RenderContext,
    RenderError,
    check_duration,
    check_percent,
    check_subset_name,
    endpoint_labels,
    global_name,
    origin_annotations,
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


def render(service: ServiceIntent, tiers: FailoverTiers, ctx: RenderContext) -> dict[str, Any]:
    """The DestinationRule of `service`; `tiers` must be those its ServiceEntry's endpoints were labelled with."""
    # across networks the east-west gateway routes by the SNI of Istio mTLS: required
    policy: dict[str, Any] = {"tls": {"mode": "ISTIO_MUTUAL"}}
    if service.outlier is not None:
        policy["outlierDetection"] = _outlier(service.outlier, f"service {service.namespace}/{service.name}")
        # locality failover moves traffic only off endpoints outlier detection ejects; the two go together
        locality: dict[str, Any] = {"enabled": True}
        if tiers.lowest:
            # Istio then orders endpoints by these labels alone: their locality no longer counts. With a single
            # tier there is no order to give and Istio keeps its own (zone, region, rest), which does not split
            # backends failover_rank ties in topology order (save zone-less ones); it does split an Explicit
            # order none of whose listed clusters back the service, by nearness.
            locality["failoverPriority"] = tiers.priority()
        policy["loadBalancer"] = {"localityLbSetting": locality}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": ctx.metadata(service.namespace, global_name(service), **origin_annotations(service.origin)),
        "spec": {"host": service.host, "trafficPolicy": policy, "subsets": subsets(service)},
    }
