"""What every renderer needs: the receiving cluster, its naming and ownership labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MANAGED_BY = "meshfleet-agent"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CLUSTER_LABEL = "meshfleet.io/cluster"


@dataclass(frozen=True)
class RenderContext:
    cluster: str
    cluster_domain: str = "cluster.local"
    gateway_namespace: str = "istio-system"
    gateway_selector: tuple[tuple[str, str], ...] = (("istio", "eastwestgateway"),)

    def labels(self) -> dict[str, str]:
        return {MANAGED_BY_LABEL: MANAGED_BY, CLUSTER_LABEL: self.cluster}

    def local_host(self, namespace: str, name: str) -> str:
        return f"{name}.{namespace}.svc.{self.cluster_domain}"

    def metadata(self, namespace: str, name: str, **annotations: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": f"{name}-global", "namespace": namespace, "labels": self.labels()}
        if annotations:
            meta["annotations"] = dict(annotations)
        return meta


def global_host(namespace: str, name: str) -> str:
    """The mesh-wide name of a service: `<name>.<namespace>.global`."""
    return f"{name}.{namespace}.global"
