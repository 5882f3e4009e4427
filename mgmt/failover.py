"""When the hub takes a lost cluster out of other clusters' intents, and when it puts it back (pure).

The data plane fails over by itself (outlier detection and the failover order every agent renders).
This is the control plane's part, for the destinations whose FailoverPolicy has `evictLostClusters`:

* A cluster is **lost** when the hub has not heard from it for the liveness grace period
  (Unreachable) and, with `peerConfirmation` (the default), no connected peer whose agent probes its
  east-west gateway reaches it. Clusters nobody probes (no one sends them traffic) count as lost once
  the hub loses them. A lost cluster is **evicted** from the destination: its endpoints leave every other
  cluster's intent and its route weights are shared among the others in proportion to theirs.
* If a peer still reaches the gateway, the hub's link is what failed (a **partition**): nothing is
  evicted, and the decision is an event.
* An evicted cluster is **restored** once the hub has heard from it without a break for the policy's
  `holdDown` (and, with peer confirmation, no peer reports its gateway unreachable while none reaches
  it). Losing it again during the hold-down starts the wait over: a flapping cluster stays out.

`step` is a function of what the hub observes and the clock; the hub persists its state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    """The eviction settings of one FailoverPolicy (one whose evictLostClusters is true)."""

    policy: str  # FailoverPolicy key
    clusters: frozenset[str]  # the clusters backing its destination
    hold_down: float  # seconds
    peer_confirmation: bool = True


@dataclass(frozen=True)
class Health:
    """What the hub knows of one cluster."""

    up: bool  # the hub hears it (it is not Unreachable)
    since: float  # when `up` last took its value
    reached_by: frozenset[str] = frozenset()  # connected peers whose probes reach its gateway
    missed_by: frozenset[str] = frozenset()  # connected peers whose probes fail
    probers: frozenset[str] = frozenset()  # peers whose intent names its gateway, heard from or not


@dataclass(frozen=True)
class Eviction:
    since: float
    reason: str


@dataclass(frozen=True)
class Event:
    at: float
    policy: str  # FailoverPolicy key
    cluster: str
    kind: str  # Evicted | Restored | Partitioned | Returned | Flapped | RegionEvicted | NotEvicted
    message: str


@dataclass(frozen=True)
class State:
    evictions: Mapping[str, Mapping[str, Eviction]] = field(default_factory=dict)  # policy -> cluster -> eviction
    # what was last said of a cluster that is not (or still) evicted, so each episode is one event
    notes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # policy -> cluster -> note

    def evicted(self) -> dict[str, frozenset[str]]:
        """Policy key -> the clusters evicted from its destination (what translation reads)."""
        return {p: frozenset(found) for p, found in self.evictions.items() if found}


@dataclass(frozen=True)
class Step:
    state: State
    events: tuple[Event, ...]
    wake_at: float | None  # when the clock alone may change the decision (a hold-down ending)


def _names(found: Iterable[str], shown: int = 8) -> str:
    """Sorted names, the first `shown` of them and how many more (status messages stay short in big fleets)."""
    names = sorted(found)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def step(rules: Iterable[Rule], health: Mapping[str, Health], state: State, now: float,
         regions: Mapping[str, str] | None = None) -> Step:
    """Decide evictions and restorations for every rule; `health` has every registered cluster."""
    evictions: dict[str, dict[str, Eviction]] = {}
    notes: dict[str, dict[str, str]] = {}
    events: list[Event] = []
    wake_at: float | None = None
    by_policy = {r.policy: r for r in rules}
    for policy, found in state.evictions.items():
        gone = by_policy.get(policy)
        for cluster in sorted(found):
            if gone is None:
                events.append(Event(now, policy, cluster, "Restored", "the policy no longer evicts lost clusters"))
            elif cluster not in health or cluster not in gone.clusters:
                events.append(Event(now, policy, cluster, "Restored", "the cluster no longer backs the destination"))
    for rule in sorted(by_policy.values(), key=lambda r: r.policy):
        held = state.evictions.get(rule.policy, {})
        said = state.notes.get(rule.policy, {})
        out: dict[str, Eviction] = {}
        noted: dict[str, str] = {}
        mine: list[Event] = []  # this rule's events, kept apart until the all-lost check below
        for cluster in sorted(rule.clusters & health.keys()):
            h = health[cluster]
            eviction = held.get(cluster)
            note = said.get(cluster, "")

            def event(kind: str, message: str, c: str = cluster, policy: str = rule.policy,
                      to: list[Event] = mine) -> None:
                to.append(Event(now, policy, c, kind, message))

            if eviction is None:
                if h.up:
                    continue
                if rule.peer_confirmation and h.reached_by:
                    if note != "Partitioned":
                        event("Partitioned", f"the hub lost {cluster} {now - h.since:.1f} s ago, but "
                                             f"{_names(h.reached_by)} still reach its east-west gateway: a partition "
                                             "of the hub's link, not an outage; not evicted")
                    noted[cluster] = "Partitioned"
                    continue
                if rule.peer_confirmation and not h.missed_by and h.probers:
                    # those who could confirm the outage are lost to the hub too: its own link is the likelier cause
                    if note != "Unconfirmed":
                        event("Partitioned", f"the hub lost {cluster} {now - h.since:.1f} s ago, and every cluster "
                                             f"probing its east-west gateway ({_names(h.probers)}) too: nothing "
                                             "confirms an outage; not evicted")
                    noted[cluster] = "Unconfirmed"
                    continue
                if h.missed_by:
                    why = f"{_names(h.missed_by)} cannot reach its east-west gateway either"
                elif rule.peer_confirmation:
                    why = "no connected cluster probes its east-west gateway"
                else:
                    why = "peer confirmation is off"
                reason = f"no message from {cluster} since {now - h.since:.1f} s ago (grace passed); {why}"
                out[cluster] = Eviction(now, reason)
                event("Evicted", reason)
                continue
            if not h.up:
                out[cluster] = eviction
                if note == "Returned":
                    event("Flapped", f"{cluster} was lost again during its hold-down; it stays evicted")
                continue
            if rule.peer_confirmation and h.missed_by and not h.reached_by:
                out[cluster] = eviction
                if note != "Unreached":
                    event("Returned", f"{cluster} is back in touch with the hub, but {_names(h.missed_by)} cannot "
                                      "reach its east-west gateway; it stays evicted until they do")
                noted[cluster] = "Unreached"
                continue
            restore_at = h.since + rule.hold_down
            if now >= restore_at:
                event("Restored", f"{cluster} has been in touch for {now - h.since:.1f} s (holdDown "
                                  f"{rule.hold_down:g} s); its endpoints and weights are back")
                continue
            out[cluster] = eviction
            wake_at = restore_at if wake_at is None else min(wake_at, restore_at)
            if note not in ("Returned", "Unreached"):  # one event per return
                event("Returned", f"{cluster} is back in touch with the hub; restored in "
                                  f"{restore_at - now:.1f} s if it stays (holdDown {rule.hold_down:g} s)")
            noted[cluster] = "Returned"
        newly = [c for c in out if c not in held]
        if newly and rule.clusters & health.keys() <= out.keys():
            # every backend lost: translation would keep them all anyway (clients keep trying, outlier
            # detection decides), so nothing new is evicted and the status does not claim otherwise
            mine = [e for e in mine if not (e.kind == "Evicted" and e.cluster in newly)]
            for cluster in newly:
                del out[cluster]
                if said.get(cluster) != "AllLost":
                    mine.append(Event(now, rule.policy, cluster, "NotEvicted",
                                      f"{cluster} is lost, but so is every other cluster backing the destination; "
                                      "nothing is evicted (clients keep every backend, outlier detection decides)"))
                noted[cluster] = "AllLost"
        events.extend(mine)
        if out:
            evictions[rule.policy] = out
        if noted:
            notes[rule.policy] = noted
        if regions:
            events.extend(_region_events(rule, held, out, regions, now))
    return Step(State(evictions, notes), tuple(events), wake_at)


def _region_events(rule: Rule, before: Mapping[str, Eviction], after: Mapping[str, Eviction],
                   regions: Mapping[str, str], now: float) -> list[Event]:
    """A region whose every cluster backing the destination became evicted in this step: one event for it."""
    out = []
    members: dict[str, set[str]] = {}
    for cluster in rule.clusters:
        if cluster in regions:
            members.setdefault(regions[cluster], set()).add(cluster)
    for region, clusters in sorted(members.items()):
        if clusters <= after.keys() and not clusters <= before.keys():
            out.append(Event(now, rule.policy, "", "RegionEvicted",
                             f"region {region} is lost: all {len(clusters)} of its clusters backing the destination "
                             f"({_names(clusters)}) are evicted"))
    return out


# persistence ------------------------------------------------------------------------------------
def state_to_json(state: State) -> dict[str, Any]:
    return {
        "evictions": {p: {c: {"since": e.since, "reason": e.reason} for c, e in found.items()}
                      for p, found in state.evictions.items()},
        "notes": {p: dict(found) for p, found in state.notes.items()},
    }


def state_from_json(doc: Any) -> State:
    """The stored state; anything malformed is dropped (the worst case is an eviction decided again)."""
    if not isinstance(doc, dict):
        return State()
    evictions: dict[str, dict[str, Eviction]] = {}
    for policy, found in (doc.get("evictions") or {}).items():
        if isinstance(found, dict):
            for cluster, e in found.items():
                if isinstance(e, dict) and isinstance(e.get("since"), (int, float)) \
                        and isinstance(e.get("reason"), str):
                    evictions.setdefault(str(policy), {})[str(cluster)] = Eviction(float(e["since"]), e["reason"])
    notes = {str(p): {str(c): str(n) for c, n in found.items()}
             for p, found in (doc.get("notes") or {}).items() if isinstance(found, dict)}
    return State(evictions, notes)


def event_to_json(e: Event) -> dict[str, Any]:
    return {"at": e.at, "policy": e.policy, "cluster": e.cluster, "kind": e.kind, "message": e.message}


def event_from_json(doc: Mapping[str, Any]) -> Event:
    return Event(float(doc["at"]), str(doc["policy"]), str(doc["cluster"]), str(doc["kind"]), str(doc["message"]))
