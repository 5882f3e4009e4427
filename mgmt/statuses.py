"""What a policy's status says, per cluster and overall (pure: facts and `now` in, a status body out).

Per cluster the policy concerns:
* `Applied`: the cluster ACKed an intent holding this policy's current content;
* `Rejected`: the hub could not apply it there (a conflict, nothing reachable), or the cluster
  NACKed the intent that carries it (the agent's message, verbatim);
* `Accepted`: the hub translated it for that cluster; the agent has not confirmed it yet.
Conditions: `Accepted` (the resource is valid), `ResolvedRefs` (what it names exists and it
conflicts with no older resource: the problems of the resource as a whole) and `Ready` (every
cluster it concerns Applied).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mgmt.model import Meta, Resource


def resource_digest(resource: Resource) -> str:
    """Identifies a resource's content: where it was read from and when it was created do not count."""
    bare = dataclasses.replace(resource, meta=Meta(resource.meta.kind, resource.meta.namespace, resource.meta.name))
    return hashlib.sha256(repr(bare).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ClusterFacts:
    """What the hub knows of one cluster, as far as policy status is concerned."""

    desired: str  # version the hub wants there
    acked: str  # version the agent confirmed
    nack_version: str
    nack_error: str
    included: Mapping[str, Mapping[str, str]]  # version -> {policy key: digest} carried in that version
    problems: Mapping[str, Sequence[str]]  # policy key -> problems translating it for this cluster


@dataclass(frozen=True)
class ClusterState:
    cluster: str
    state: str  # Accepted | Applied | Rejected
    message: str
    observed_version: str


def cluster_states(key: str, digest: str, concerned: Sequence[str],
                   facts: Mapping[str, ClusterFacts]) -> list[ClusterState]:
    states = []
    for cluster in sorted(concerned):
        f = facts.get(cluster)
        if f is None:
            states.append(ClusterState(cluster, "Accepted", "the cluster has not connected yet", ""))
            continue
        carried = f.included.get(f.desired, {}).get(key) == digest
        if f.problems.get(key) and not carried:
            states.append(ClusterState(cluster, "Rejected", "; ".join(f.problems[key]), ""))
        elif f.included.get(f.acked, {}).get(key) == digest:
            states.append(ClusterState(cluster, "Applied", "", f.acked[:12]))
        elif f.nack_version and f.nack_version == f.desired and carried:
            states.append(ClusterState(cluster, "Rejected", f.nack_error, f.desired[:12]))
        else:
            states.append(ClusterState(cluster, "Accepted", "; ".join(f.problems.get(key, ())), f.desired[:12]))
    return states


def condition(previous: Iterable[Mapping[str, Any]], type_: str, ok: bool, reason: str, message: str,
               generation: int, now: str) -> dict[str, Any]:
    """A condition; its lastTransitionTime moves only when its status does."""
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") else now
    return {"type": type_, "status": status, "reason": reason, "message": message[:32768],
            "observedGeneration": generation, "lastTransitionTime": since}


def policy_status(previous: Mapping[str, Any] | None, generation: int, errors: Sequence[str],
                  states: Sequence[ClusterState], now: str, problems: Sequence[str] = ()) -> dict[str, Any]:
    """The status body of a resource: conditions plus clusters[]; `problems` are of the resource as a whole."""
    old_conditions = list((previous or {}).get("conditions") or [])
    if errors:
        accepted = condition(old_conditions, "Accepted", False, "Invalid", "; ".join(errors), generation, now)
        refs = condition(old_conditions, "ResolvedRefs", False, "Invalid", "the resource is not valid", generation,
                          now)
        ready = condition(old_conditions, "Ready", False, "Invalid", "the resource is not translated", generation,
                           now)
        return {"observedGeneration": generation, "conditions": [accepted, refs, ready], "clusters": []}
    rejected = [s for s in states if s.state == "Rejected"]
    pending = [s for s in states if s.state == "Accepted"]
    accepted = condition(old_conditions, "Accepted", True, "Translated", "", generation, now)
    refs = condition(old_conditions, "ResolvedRefs", not problems, "Problems" if problems else "Resolved",
                      "; ".join(problems), generation, now)
    if not states:
        # nothing Applied anywhere is not "ready", whether a problem says why or the resource selects nothing
        ready = condition(old_conditions, "Ready", False, "NotApplied",
                           "; ".join(problems) or "it concerns no cluster", generation, now)
    elif rejected:
        ready = condition(old_conditions, "Ready", False, "Rejected",
                           "; ".join(f"{s.cluster}: {s.message}" for s in rejected), generation, now)
    elif pending:
        ready = condition(old_conditions, "Ready", False, "Pending",
                           f"waiting for {', '.join(s.cluster for s in pending)}", generation, now)
    else:
        ready = condition(old_conditions, "Ready", True, "Applied", f"applied in {len(states)} cluster(s)",
                           generation, now)
    # a cluster that has no version of it yet has no observedVersion (the schema wants a hex digest there)
    clusters = [{"cluster": s.cluster, "state": s.state, "message": s.message,
                 **({"observedVersion": s.observed_version} if s.observed_version else {})} for s in states]
    return {"observedGeneration": generation, "conditions": [accepted, refs, ready], "clusters": clusters}


def same_status(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Equal but for lastTransitionTime (which only moves with a condition's status anyway)."""
    def strip(status: Mapping[str, Any] | None) -> Any:
        if not status:
            return None
        conditions = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions", [])]
        return {**status, "conditions": conditions}
    return bool(strip(a) == strip(b))


def rfc3339(ts: float) -> str:
    """Epoch seconds as the API server writes times (UTC, whole seconds)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def trust_status(previous: Mapping[str, Any] | None, generation: int, ref: str, errors: Sequence[str],
                 trust: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The status body of TrustPolicy `ref` from the hub's mesh CA document (mgmt.trust.TrustManager.status).

    Per cluster that reported its CA: `Applied` (it holds the target bundle and an intermediate
    from the signing root), `Rejected` (its agent cannot get there: the message says why) or
    `Accepted` (on its way; the message says what it waits for). Conditions: `Accepted` (valid and
    in effect, not superseded by an older TrustPolicy), `RootReady` (the hub holds a usable root),
    `Rotating` (a rotation is under way: the phase and who holds it) and `Ready` (in effect, a
    root, every cluster Applied).
    """
    old = list((previous or {}).get("conditions") or [])
    if errors:
        return {"observedGeneration": generation, "conditions": [
            condition(old, "Accepted", False, "Invalid", "; ".join(errors), generation, now),
            condition(old, "Ready", False, "Invalid", "the resource is not valid", generation, now)]}
    if trust.get("policy") != ref:
        why = (f"{trust['policy']} is in effect: one TrustPolicy per fleet, the oldest wins" if trust.get("policy")
               else "the hub has not taken it in yet")
        return {"observedGeneration": generation, "conditions": [
            condition(old, "Accepted", False, "Superseded", why, generation, now),
            condition(old, "Ready", False, "Superseded", why, generation, now)]}
    problems = list(trust.get("problems") or [])
    waiting: Mapping[str, str] = trust.get("waiting") or {}
    clusters = []
    for name, c in sorted((trust.get("clusters") or {}).items()):
        state = "Applied" if c.get("confirms") else "Rejected" if c.get("error") else "Accepted"
        message = c.get("error") or (waiting.get(name, "on its way to the target") if state == "Accepted"
                                     else "; ".join(c.get("warnings") or []))  # Istio settings to check
        item: dict[str, Any] = {"cluster": name, "state": state, "message": message[:32768]}
        if c.get("intermediate") and c.get("not_after"):
            item["intermediateExpiry"] = rfc3339(float(c["not_after"]))
        clusters.append(item)
    phase = trust.get("phase") or "Idle"
    rejected = [c for c in clusters if c["state"] == "Rejected"]
    pending = [c for c in clusters if c["state"] == "Accepted"]
    rotating = phase != "Idle"
    if rotating:
        rotation_message = (f"phase {phase}; waiting for " + "; ".join(f"{k}: {v}" for k, v in sorted(waiting.items()))
                            if waiting else f"phase {phase}; every cluster is at the target, the grace period runs")
    else:
        rotation_message = "no rotation under way"
    if not trust.get("activeRoot"):
        ready = condition(old, "Ready", False, "NoRoot", "; ".join(problems) or "no root yet", generation, now)
    elif rejected:
        ready = condition(old, "Ready", False, "Rejected",
                          "; ".join(f"{c['cluster']}: {c['message']}" for c in rejected), generation, now)
    elif pending:
        ready = condition(old, "Ready", False, "Pending",
                          "waiting for " + ", ".join(c["cluster"] for c in pending), generation, now)
    else:
        ready = condition(old, "Ready", True, "Applied", f"{len(clusters)} cluster(s) hold the trust bundle",
                          generation, now)
    conditions = [
        condition(old, "Accepted", True, "InEffect", "", generation, now),
        condition(old, "RootReady", not problems and bool(trust.get("activeRoot")),
                  "Problems" if problems else "RootReady", "; ".join(problems), generation, now),
        condition(old, "Rotating", rotating, phase if rotating else "Idle", rotation_message, generation, now),
        ready,
    ]
    return {"observedGeneration": generation, "phase": phase,
            "roots": [{"fingerprint": r["fingerprint"], "state": r["state"], "notAfter": r["notAfter"]}
                      for r in trust.get("roots") or []],
            "conditions": conditions, "clusters": clusters}


FAILOVER_EVENTS_SHOWN = 10


def failover_status(policy: str, failover: Mapping[str, Any]) -> dict[str, Any]:
    """A FailoverPolicy's share of the hub's failover document (mgmt.evicting.Evictions.document): the clusters
    evicted from its destination and its last FAILOVER_EVENTS_SHOWN decisions, newest last."""
    evicted = [{"cluster": cluster, "since": rfc3339(e["since"]), "reason": e["reason"]}
               for cluster, e in sorted((failover.get("evictions") or {}).get(policy, {}).items())]
    events = [{"time": rfc3339(e["at"]), "type": e["kind"], **({"cluster": e["cluster"]} if e["cluster"] else {}),
               "message": e["message"]}
              for e in failover.get("events") or [] if e["policy"] == policy][-FAILOVER_EVENTS_SHOWN:]
    return {"evicted": evicted, "events": events}

