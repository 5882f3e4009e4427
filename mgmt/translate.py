"""translate(snapshot, cluster) -> what that cluster must know (pure: no I/O, no clock).

A cluster receives a policy when it is one of the policy's clients, and with it
the destination service and every cluster backing that service: its own copy
(local) and the remote ones, reached through their east-west gateways.
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


def _backends(snapshot: Snapshot, cluster: str, namespace: str, service: str,
              problems: list[Problem], policy: str) -> tuple[Backend, ...]:
    backends = []
    for name in sorted(snapshot.clusters):
        report = snapshot.discovery.get(name)
        found = report.services.get((namespace, service)) if report else None
        if report is None or found is None:
            continue
        ref = snapshot.clusters[name]
        if name == cluster:
            backends.append(Backend(ref, local=True, subsets=found.subsets))
        elif report.gateway_address:
            backends.append(Backend(ref, local=False, address=report.gateway_address,
                                    port=report.gateway_port, subsets=found.subsets))
        else:
            problems.append(Problem(policy, f"cluster {name} backs {namespace}/{service} but reports no "
                                            "east-west gateway address; it is left out"))
    return tuple(backends)


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
        backends = _backends(snapshot, cluster, *dest, problems, policy.key)
        if not backends:
            problems.append(Problem(policy.key, f"no cluster reports service {dest[0]}/{dest[1]}; "
                                                "nothing to route to"))
            continue
        available = {b.cluster.name for b in backends}
        for target in policy.route:
            if target.cluster not in snapshot.clusters:
                problems.append(Problem(policy.key, f"route names unknown cluster {target.cluster!r}"))
            elif target.cluster not in available and target.weight > 0:
                problems.append(Problem(policy.key, f"cluster {target.cluster} has no reachable backend of "
                                                    f"{dest[0]}/{dest[1]}; its weight goes to the others"))
        targets = redistribute((t.cluster, t.weight) for t in policy.route if t.cluster in available)
        if not targets:
            # exporting the service without its route would spread traffic over clusters the policy excludes
            problems.append(Problem(policy.key, "no weighted route target is reachable; the policy is not applied"))
            continue
        first = next((b for b in backends if b.local), backends[0])
        ports = snapshot.discovery[first.cluster.name].services[dest].ports
        services[dest] = ServiceIntent(dest[0], dest[1], ports, backends)
        traffic.append(TrafficSplit(policy.key, dest[0], dest[1], targets))
    intent = ClusterIntent(
        cluster=me,
        services=tuple(services[k] for k in sorted(services)),
        traffic=tuple(sorted(traffic, key=lambda t: (t.namespace, t.service))),
    )
    return Translation(intent, tuple(sorted(set(problems))))
