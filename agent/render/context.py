"""What every renderer needs: the receiving cluster, object naming, ownership labels and the render error."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshfleet.intents import ClusterIntent, IntentError, ServiceIntent, Subset, failover_rank
from meshfleet.names import dns1123_label_error, dns1123_subdomain_error

MANAGED_BY = "meshfleet-agent"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CLUSTER_LABEL = "meshfleet.io/cluster"
# endpoint labels: CLUSTER_LABEL marks the one whole-cluster endpoint per address, these a version's endpoint
SUBSET_OF_LABEL = "meshfleet.io/subset-of"
SUBSET_LABEL = "meshfleet.io/subset"
# endpoint labels `<prefix><k>: "true"` (k = 1..N) placing an endpoint in its failover tier (see FailoverTiers)
FAILOVER_TIER_LABEL_PREFIX = "meshfleet.io/failover-tier-"
FAILOVER_TIER_VALUE = "true"
POLICY_ANNOTATION = "meshfleet.io/policy"
# key (`Kind/namespace/name`) of the hub resource an object comes from: the agent prunes at once the objects
# of a resource the intent lists as deleted
ORIGIN_ANNOTATION = "meshfleet.io/origin"
# the kinds of hub resource that routes and access or mTLS rules come from (their references omit it)
TRAFFIC_POLICY_KIND = "TrafficPolicy"
ACCESS_POLICY_KIND = "AccessPolicy"
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
    reserved = sorted(k for k in subset.labels if k in (CLUSTER_LABEL, SUBSET_OF_LABEL, SUBSET_LABEL)
                      or k.startswith(FAILOVER_TIER_LABEL_PREFIX))
    if reserved:
        raise RenderError(f"subset {subset.name!r} of cluster {cluster}: label {reserved[0]!r} is reserved "
                          "for meshfleet's own endpoint labels")
    return {**subset.labels, SUBSET_OF_LABEL: cluster, SUBSET_LABEL: subset.name}


def failover_tier_label(k: int) -> str:
    """The endpoint label key of failover tier label `k` (1-based)."""
    return f"{FAILOVER_TIER_LABEL_PREFIX}{k}"


@dataclass(frozen=True)
class FailoverTiers:
    """Where each cluster backing a service stands in the receiving cluster's failover order.

    Istio's locality priorities (zone, region, one `failover` region, the rest) cannot express an order of
    several regions, so the order is spelled out with `failoverPriority` in its explicit `label=value` form:
    with N entries, an endpoint whose labels match the first j of them (and not the j+1-th) gets Envoy priority
    N - j. An endpoint of tier t carries the first N - t tier labels, hence priority t.
    """

    by_cluster: Mapping[str, int] = field(default_factory=dict)
    """Backing cluster -> tier, 0 (preferred) to `lowest` with none skipped; empty: no failover order."""

    @property
    def lowest(self) -> int:
        """N: the last tier, and the number of `failoverPriority` entries."""
        return max(self.by_cluster.values(), default=0)

    def labels(self, cluster: str) -> dict[str, str]:
        """The tier labels of every endpoint of `cluster`'s copy (a cluster not ranked gets none: the last tier)."""
        tier = self.by_cluster.get(cluster, self.lowest)
        return {failover_tier_label(k): FAILOVER_TIER_VALUE for k in range(1, self.lowest - tier + 1)}

    def priority(self) -> list[str]:
        """`localityLbSetting.failoverPriority`: each tier label with the value to match (not the client's own)."""
        return [f"{failover_tier_label(k)}={FAILOVER_TIER_VALUE}" for k in range(1, self.lowest + 1)]


def failover_tiers(intent: ClusterIntent, service: ServiceIntent) -> FailoverTiers:
    """The receiving cluster's failover tiers of `service`'s backends; none without outlier detection.

    Ranks (meshfleet.intents.failover_rank) are renumbered 0, 1, 2, ... in order, so a rank no backend
    holds (a region tier without a copy, a cluster in the Explicit list that does not back the service)
    costs no label and leaves no empty priority. Without outlier detection Istio applies no locality
    failover at all (nothing would ever move traffic off a failing priority), so there is nothing to order:
    the serving-side view of a service.
    """
    if service.outlier is None:
        return FailoverTiers()
    ranks = {b.cluster.name: failover_rank(intent, service, b.cluster) for b in service.backends}
    dense = {r: i for i, r in enumerate(sorted(set(ranks.values())))}
    return FailoverTiers({name: dense[r] for name, r in ranks.items()})


def origin_annotations(origin: str) -> dict[str, str]:
    """ORIGIN_ANNOTATION naming resource key `origin`; none when the origin is unknown ("")."""
    return {ORIGIN_ANNOTATION: origin} if origin else {}


def policy_origin(kind: str, policy: str) -> str:
    """The resource key `Kind/namespace/name` of a policy reference `namespace/name` to a resource of kind `kind`
    (a reference that already names its kind is kept)."""
    return policy if policy.count("/") == 2 else f"{kind}/{policy}"


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
