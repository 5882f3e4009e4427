"""What every renderer needs: the receiving cluster, object naming, ownership labels and the render error."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from meshfleet.intents import IntentError, ServiceIntent, Subset
from meshfleet.names import dns1123_label_error, dns1123_subdomain_error

MANAGED_BY = "meshfleet-agent"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CLUSTER_LABEL = "meshfleet.io/cluster"
# endpoint labels: CLUSTER_LABEL marks the one whole-cluster endpoint per address, these a version's endpoint
SUBSET_OF_LABEL = "meshfleet.io/subset-of"
SUBSET_LABEL = "meshfleet.io/subset"
POLICY_ANNOTATION = "meshfleet.io/policy"
POLICY_PREFIX = "meshfleet-"
# Go's time.ParseDuration syntax, which Istio's duration fields take ("10s", "1.5s", "1h30m", "250ms")
_GO_DURATION = re.compile(r"(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|ms|s|m|h))+")


class RenderError(IntentError):
    """An intent the agent cannot express in Istio; the agent NACKs it with this message."""


@dataclass(frozen=True)
class RenderContext:
    cluster: str
    cluster_domain: str = "cluster.local"
    gateway_namespace: str = "istio-system"
    gateway_selector: tuple[tuple[str, str], ...] = (("istio", "eastwestgateway"),)

    def labels(self) -> dict[str, str]:
        """The ownership labels every rendered object carries (the sinks prune only what has them)."""
        return {MANAGED_BY_LABEL: MANAGED_BY, CLUSTER_LABEL: self.cluster}

    def local_host(self, namespace: str, service: str) -> str:
        """The cluster-local DNS name of Kubernetes Service `service` in `namespace`."""
        return f"{service}.{namespace}.svc.{self.cluster_domain}"

    def backs(self, service: ServiceIntent) -> bool:
        """True if this cluster runs a copy of `service` (so it serves it and its clients call it locally)."""
        return any(b.cluster.name == self.cluster for b in service.backends)

    def metadata(self, namespace: str, name: str, **annotations: str) -> dict[str, Any]:
        """Object metadata with the ownership labels; `name` is the full object name."""
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": self.labels()}
        if annotations:
            meta["annotations"] = dict(annotations)
        return meta


def global_name(service: ServiceIntent) -> str:
    """Name of the ServiceEntry, DestinationRule and VirtualService of a service: `<name>-global`."""
    return f"{service.name}-global"


def subset_name(cluster: str, subset: str = "") -> str:
    """DestinationRule subset of one cluster's copy (`<cluster>`) or of one version of it (`<cluster>-<subset>`)."""
    return f"{cluster}-{subset}" if subset else cluster


def endpoint_labels(cluster: str, subset: Subset | None = None) -> dict[str, str]:
    """Labels of a ServiceEntry endpoint, and of the DestinationRule subset that selects exactly that endpoint.

    The whole-cluster endpoint carries only CLUSTER_LABEL; a version's endpoint carries SUBSET_OF_LABEL instead,
    so subset `<cluster>` never selects version endpoints (see serviceentries for why).
    """
    if subset is None:
        return {CLUSTER_LABEL: cluster}
    reserved = sorted(set(subset.labels) & {CLUSTER_LABEL, SUBSET_OF_LABEL, SUBSET_LABEL})
    if reserved:
        raise RenderError(f"subset {subset.name!r} of cluster {cluster}: label {reserved[0]!r} is reserved "
                          "for meshfleet's own endpoint labels")
    return {**subset.labels, SUBSET_OF_LABEL: cluster, SUBSET_LABEL: subset.name}


def policy_object_name(policy: str) -> str:
    """`meshfleet-<name>` for a policy reference `<namespace>/<name>` (or `<Kind>/<namespace>/<name>`).

    Always a valid object name (DNS-1123 subdomain, at most 253 characters): a name that would not be one
    is cleaned, shortened and suffixed with a hash of the reference, so distinct policies keep distinct names.
    """
    name = policy.rsplit("/", 1)[-1]
    candidate = f"{POLICY_PREFIX}{name}"
    if dns1123_subdomain_error(candidate) is None:
        return candidate
    digest = hashlib.sha256(policy.encode()).hexdigest()[:10]
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    cleaned = cleaned[:253 - len(POLICY_PREFIX) - len(digest) - 1].rstrip("-")
    return f"{POLICY_PREFIX}{cleaned}-{digest}" if cleaned else f"{POLICY_PREFIX}{digest}"


def check_duration(value: str, what: str) -> str:
    """`value` if it is a Go duration as Istio takes it, else a RenderError naming `what`."""
    if value != "0" and not _GO_DURATION.fullmatch(value):
        raise RenderError(f"{what}: {value!r} is not a duration (examples: 250ms, 10s, 1m30s)")
    return value


def check_percent(value: float, what: str) -> float:
    """`value` if it is a percentage (0-100), else a RenderError naming `what`."""
    if not 0.0 <= value <= 100.0:
        raise RenderError(f"{what}: {value} is not a percentage between 0 and 100")
    return value


def check_subset_name(name: str, what: str) -> str:
    """Istio requires subset names to be DNS-1123 labels; a composed `<cluster>-<subset>` may not be one."""
    if err := dns1123_label_error(name):
        raise RenderError(f"{what}: subset name {err}")
    return name
