"""The hub's failover adapter: what it hears of each cluster, and the planner's decisions in hub.db.

It keeps the agents' gateway probe results (per connected prober), when each cluster's liveness last
changed, and the state of `mgmt.failover` (evictions survive a hub restart, so a restarted hub does not
put a lost cluster back for a grace period and take it out again). Decisions are events: logged, kept
(the last EVENTS_KEPT) in hub.db for `meshfleet status`, and shown in each FailoverPolicy's status.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from meshfleet.intents import Gateway
from meshfleet.names import dns1123_label_error
from meshfleet.v1 import hub_pb2
from mgmt import failover
from mgmt.model import Snapshot
from mgmt.policies import duration_seconds
from mgmt.registry import Registry
from mgmt.topology import topology
from mgmt.translate import failover_of

log = logging.getLogger(__name__)

STATE_KEY = "failover_state"
EVENTS_KEY = "failover_events"
EVENTS_KEPT = 200
MAX_PROBE_RESULTS = 4096


class ProbeReportRefused(ValueError):
    """A probe report the hub does not use (the stream goes on; the previous report is kept)."""


class Evictions:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.state = failover.state_from_json(registry.get_meta(STATE_KEY))
        stored = registry.get_meta(EVENTS_KEY)
        self.events: list[failover.Event] = []
        for doc in stored if isinstance(stored, list) else []:
            try:
                self.events.append(failover.event_from_json(doc))
            except (KeyError, TypeError, ValueError):
                continue
        self.probes: dict[str, dict[str, bool]] = {}  # prober -> probed cluster -> reaches its gateway
        self.since: dict[str, float] = {}  # cluster -> when its liveness (up / Unreachable) last changed

    # what the hub hears ---------------------------------------------------------------------------
    def report(self, prober: str, report: hub_pb2.ProbeReport, targets: Mapping[str, Collection[Gateway]]) -> bool:
        """Take a prober's results; True if what it reaches changed. Raises ProbeReportRefused.

        Only results for the gateways the prober's intent names (the clusters it calls, and the evicted ones
        it watches) count: a cluster cannot vouch for, or against, a cluster it has no business probing, nor
        for an address that is not that cluster's gateway. Others are ignored (they may be from an intent the
        agent has not replaced yet).
        """
        if len(report.results) > MAX_PROBE_RESULTS:
            raise ProbeReportRefused(f"{len(report.results)} probe results (at most {MAX_PROBE_RESULTS})")
        found: dict[str, bool] = {}
        seen: set[str] = set()
        for r in report.results:
            if dns1123_label_error(r.cluster):
                raise ProbeReportRefused(f"probe result for {r.cluster!r}: not a cluster name")
            if r.cluster == prober:
                raise ProbeReportRefused(f"{prober} reported a probe of its own gateway")
            if r.cluster in seen:
                raise ProbeReportRefused(f"cluster {r.cluster} probed twice in one report")
            seen.add(r.cluster)
            if Gateway(r.cluster, r.address, r.port) in targets.get(r.cluster, ()):
                found[r.cluster] = r.reachable
        changed = self.probes.get(prober) != found
        self.probes[prober] = found
        return changed

    def forget_prober(self, prober: str) -> bool:
        """A prober's stream ended: its results no longer count (they would go stale)."""
        return self.probes.pop(prober, None) is not None

    def moved(self, cluster: str, at: float) -> None:
        """The cluster's liveness changed (it became Unreachable, or was heard from again)."""
        self.since[cluster] = at

    # deciding -------------------------------------------------------------------------------------
    def rules(self, snapshot: Snapshot) -> list[failover.Rule]:
        """One rule per FailoverPolicy in effect that evicts lost clusters (computed once per snapshot)."""
        cached: list[failover.Rule] | None = snapshot.memo.get("failover-rules")
        if cached is not None:
            return cached
        topo = topology(snapshot)
        out = []
        for policy in snapshot.resources.failover:
            key = topo.destinations.get(policy.meta.key)
            if key is None or key not in topo.servers or failover_of(topo, key) is not policy:
                continue
            if policy.evict_lost_clusters:
                out.append(failover.Rule(policy.meta.key, frozenset(topo.servers[key]),
                                         float(duration_seconds(policy.hold_down)), policy.peer_confirmation))
        snapshot.memo["failover-rules"] = out
        return out

    def health(self, up: Mapping[str, bool], last_heard: Mapping[str, float | None], connected: Iterable[str],
               now: float, started: float, probers: Mapping[str, Iterable[str]] | None = None
               ) -> dict[str, failover.Health]:
        """Per registered cluster: heard or not, since when, and which connected peers reach its gateway.

        A cluster whose liveness has not changed since the hub started counts from then (an evicted cluster
        heard from since a restart has been back since the start). Only probers the hub hears count: a
        stream not yet torn down by the watchdog of a cluster gone Unreachable reports stale results.
        """
        live = {c for c in connected if up.get(c)}
        reached: dict[str, set[str]] = {}
        missed: dict[str, set[str]] = {}
        for prober, results in self.probes.items():
            if prober not in live:
                continue
            for target, ok in results.items():
                (reached if ok else missed).setdefault(target, set()).add(prober)
        return {c: failover.Health(is_up, self.since.get(c, started if is_up else (last_heard.get(c) or now)),
                                   frozenset(reached.get(c, ())), frozenset(missed.get(c, ())),
                                   frozenset((probers or {}).get(c, ())))
                for c, is_up in up.items()}

    def step(self, snapshot: Snapshot, health: Mapping[str, failover.Health], now: float) -> failover.Step:
        """Run the planner; log, keep and persist what it decided. The caller re-translates on a change."""
        result = failover.step(self.rules(snapshot), health, self.state, now,
                               {name: ref.region for name, ref in snapshot.clusters.items()})
        for e in result.events:
            level = logging.INFO if e.kind in ("Restored", "Returned") else logging.WARNING
            log.log(level, "failover %s: %s%s: %s", e.policy, e.kind, f" {e.cluster}" if e.cluster else "", e.message)
        if result.events:
            self.events = [*self.events, *result.events][-EVENTS_KEPT:]
            self.registry.set_meta(EVENTS_KEY, [failover.event_to_json(e) for e in self.events])
        if result.state != self.state:
            self.state = result.state
            self.registry.set_meta(STATE_KEY, failover.state_to_json(result.state))
        return result

    def evicted(self) -> dict[str, frozenset[str]]:
        return self.state.evicted()

    def document(self) -> dict[str, Any]:
        """What `meshfleet status` and the FailoverPolicy status show (also stored in hub.db)."""
        return {"evictions": failover.state_to_json(self.state)["evictions"],
                "events": [failover.event_to_json(e) for e in self.events]}
