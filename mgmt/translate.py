"""translate(snapshot, cluster) -> what that cluster must know (pure: no I/O, no clock).

A cluster receives a policy when it is one of the policy's clients, and with it
the destination service and every cluster backing that service, with the
address of its east-west gateway (a cluster reaches its own copy directly).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshfleet.intents import (
    Backend,
    ClusterIntent,
    ServiceIntent,
    TrafficSplit,
    WeightedTarget,
)
from mgmt.model import Snapshot, TrafficPolicy


@dataclass(frozen=True, order=True)
class Problem:
    """Something wrong with a policy, for its status and the log."""

    policy: str
    message: str


@dataclass(frozen=True)
class Translation:
    intent: ClusterIntent
    problems: tuple[Problem, ...]


def concerns(policy: TrafficPolicy, cluster: str) -> bool:
    return policy.clients is None or cluster in policy.clients


def redistribute(weights: Iterable[tuple[str, int]]) -> tuple[WeightedTarget, ...]:
    """Scale weights to sum to 100, keeping proportions (largest remainder; ties by order)."""
    items = [(c, w) for c, w in weights if w > 0]
    total = sum(w for _, w in items)
    if total == 0:
        return ()
    exact = [(c, w * 100 / total) for c, w in items]
    floors = {c: int(x) for c, x in exact}
    left = 100 - sum(floors.values())
    by_remainder = sorted(range(len(exact)), key=lambda i: -(exact[i][1] - int(exact[i][1])))
    for i in by_remainder[:left]:
        floors[exact[i][0]] += 1
    return tuple(WeightedTarget(c, floors[c]) for c, _ in items)


def _catalog(snapshot: Snapshot, namespace: str, service: str
             ) -> tuple[tuple[Backend, ...], tuple[Backend, ...], tuple[str, ...]]:
    """(backends reachable through a gateway, backends without one, problems) of a service.

    Cluster-independent, so it is computed once per snapshot and the resulting
    objects are shared by every client (and encoded once, see intents.Encoder).
    """
    key = ("catalog", namespace, service)
    if key not in snapshot.memo:
        reachable: list[Backend] = []
        gatewayless: list[Backend] = []
        problems: list[str] = []
        for name in sorted(snapshot.clusters):
            report = snapshot.discovery.get(name)
            found = report.services.get((namespace, service)) if report else None
            if report is None or found is None:
                continue
            backend = Backend(snapshot.clusters[name], report.gateway_address, report.gateway_port, found.subsets)
            (reachable if report.gateway_address else gatewayless).append(backend)
            if not report.gateway_address:
                problems.append(f"cluster {name} backs {namespace}/{service} but reports no east-west gateway "
                                "address; only its own clients reach it")
        snapshot.memo[key] = (tuple(reachable), tuple(gatewayless), tuple(problems))
    result: tuple[tuple[Backend, ...], tuple[Backend, ...], tuple[str, ...]] = snapshot.memo[key]
    return result


def _service(snapshot: Snapshot, cluster: str, namespace: str, name: str) -> ServiceIntent | None:
    """The service as `cluster` sees it: every reachable backend, plus its own copy if that has no gateway."""
    reachable, gatewayless, _ = _catalog(snapshot, namespace, name)
    own = next((b for b in gatewayless if b.cluster.name == cluster), None)
    key = ("service", namespace, name, own is not None and cluster)
    if key not in snapshot.memo:
        backends = tuple(sorted((*reachable, own), key=lambda b: b.cluster.name)) if own else reachable
        if not backends:
            snapshot.memo[key] = None
        else:
            first = backends[0].cluster.name
            ports = snapshot.discovery[first].services[(namespace, name)].ports
            snapshot.memo[key] = ServiceIntent(namespace, name, ports, backends)
    service: ServiceIntent | None = snapshot.memo[key]
    return service


def _served(snapshot: Snapshot, cluster: str, namespace: str, name: str) -> ServiceIntent | None:
    """The serving side: a destination this cluster runs for other clusters' clients, without routes of its own.

    Its east-west gateway routes a remote call by the SNI of the global host, so the cluster
    needs that host defined with its own endpoints even when it is no client of the policy.
    """
    key = ("served", namespace, name, cluster)
    if key not in snapshot.memo:
        report = snapshot.discovery.get(cluster)
        found = report.services.get((namespace, name)) if report else None
        snapshot.memo[key] = None if report is None or found is None else ServiceIntent(
            namespace, name, found.ports,
            (Backend(snapshot.clusters[cluster], report.gateway_address, report.gateway_port, found.subsets),))
    served: ServiceIntent | None = snapshot.memo[key]
    return served


def _split(snapshot: Snapshot, policy: TrafficPolicy, service: ServiceIntent) -> tuple[TrafficSplit | None, list[str]]:
    available = {b.cluster.name for b in service.backends}
    key = ("split", policy.key, frozenset(available))
    if key not in snapshot.memo:
        problems = []
        for target in policy.route:
            if target.cluster not in snapshot.clusters:
                problems.append(f"route names unknown cluster {target.cluster!r}")
            elif target.cluster not in available and target.weight > 0:
                problems.append(f"cluster {target.cluster} has no reachable backend of "
                                f"{policy.namespace}/{policy.service}; its weight goes to the others")
        targets = redistribute((t.cluster, t.weight) for t in policy.route if t.cluster in available)
        split = TrafficSplit(policy.key, policy.namespace, policy.service, targets) if targets else None
        if split is None:
            # exporting the service without its route would spread traffic over clusters the policy excludes
            problems.append("no weighted route target is reachable; the policy is not applied")
        snapshot.memo[key] = (split, problems)
    result: tuple[TrafficSplit | None, list[str]] = snapshot.memo[key]
    return result


def translate(snapshot: Snapshot, cluster: str) -> Translation:
    me = snapshot.clusters[cluster]
    problems: list[Problem] = []
    services: dict[tuple[str, str], ServiceIntent] = {}
    traffic: list[TrafficSplit] = []
    owners: dict[tuple[str, str], str] = {}
    for policy in sorted(snapshot.policies, key=lambda p: p.key):
        if not concerns(policy, cluster):
            continue
        dest = (policy.namespace, policy.service)
        if dest in owners:
            problems.append(Problem(policy.key, f"conflicts with TrafficPolicy {owners[dest]} in cluster {cluster}, "
                                                f"where both route {dest[0]}/{dest[1]} (first by namespace/name "
                                                f"wins); not applied in {cluster}"))
            continue
        owners[dest] = policy.key
        problems.extend(Problem(policy.key, m) for m in _catalog(snapshot, *dest)[2])
        service = _service(snapshot, cluster, *dest)
        if service is None:
            problems.append(Problem(policy.key, f"no cluster reports service {dest[0]}/{dest[1]}; "
                                                "nothing to route to"))
            continue
        split, messages = _split(snapshot, policy, service)
        problems.extend(Problem(policy.key, m) for m in messages)
        if split is not None:
            services[dest] = service
            traffic.append(split)
    for policy in snapshot.policies:
        dest = (policy.namespace, policy.service)
        if dest not in services and (served := _served(snapshot, cluster, *dest)) is not None:
            services[dest] = served
    intent = ClusterIntent(
        cluster=me,
        services=tuple(services[k] for k in sorted(services)),
        traffic=tuple(sorted(traffic, key=lambda t: (t.namespace, t.service))),
    )
    return Translation(intent, tuple(sorted(set(problems))))
