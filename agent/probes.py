"""Probes of the east-west gateways this cluster sends traffic to: targets, verdicts, the report (pure).

Losing the hub's link to a cluster does not prove the cluster is down; what its peers can reach
tells the two apart. This core decides, from attempts it is told about, whether each target is
reachable and when the report is worth sending. No sockets and no clock here: `agent.probing`
makes the attempts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshfleet.intents import ClusterIntent, gateways


@dataclass(frozen=True, order=True)
class Target:
    """The east-west gateway of one remote cluster."""

    cluster: str
    address: str
    port: int


@dataclass(frozen=True)
class Attempt:
    """What one connect found: whether it succeeded, why not, and how long a success took."""

    ok: bool
    error: str = ""
    latency_ms: int = 0


@dataclass(frozen=True)
class Result:
    """A target's verdict as reported (a ProbeResult)."""

    target: Target
    reachable: bool
    error: str = ""
    """Why the last attempt failed; "" when reachable."""
    latency_ms: int = 0
    """Of the last successful connect (0 if none yet)."""


@dataclass(frozen=True)
class _State:
    failures: int = 0  # consecutive failed attempts
    reachable: bool | None = None  # None until a success or `threshold` failures
    error: str = ""
    latency_ms: int = 0


def targets_of(intent: ClusterIntent) -> tuple[Target, ...]:
    """One target per remote cluster the intent routes to or watches (meshfleet.intents.gateways), by cluster.

    Remote: a backend of another cluster with a gateway address and port. Each service lists its
    backends' gateways; should two services disagree on one cluster's gateway (the hub building them
    from different discovery reports), the first in (address, port) order is probed, so the choice
    is the same on every agent and does not depend on service order.
    """
    found = gateways(intent)
    chosen = (min(found[name]) for name in sorted(found))
    return tuple(Target(g.cluster, g.address, g.port) for g in chosen)


def _verdicts(results: Iterable[Result]) -> tuple[tuple[Target, bool], ...]:
    """What the hub decides on: which targets, at which address, and whether each is reachable.

    Latency moves on every round, and the error of an unreachable target may alternate between
    causes (refused, timed out) without changing anything the hub does with it; neither alone is
    worth a message. Both go out with the next report sent for another reason or on a new stream.
    """
    return tuple((r.target, r.reachable) for r in results)


class Probes:
    """Per-target state: consecutive failures, the last error and latency, and the verdict.

    A target is reachable after one successful attempt and unreachable after `threshold`
    consecutive failed ones; in between it keeps its verdict, so a single lost connect does not
    flip it. A target not yet decided either way (new, or new address) is left out of the report:
    claiming it reachable before any connect succeeded could keep the hub from evicting a cluster
    that is really down.
    """

    def __init__(self, threshold: int = 2) -> None:
        if threshold < 1:
            raise ValueError(f"the failure threshold must be at least 1, not {threshold}")
        self.threshold = threshold
        self._states: dict[Target, _State] = {}
        self._sent: tuple[Result, ...] = ()

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(self._states)

    def retarget(self, targets: Iterable[Target]) -> None:
        """Probe these targets from now on; a target kept (same cluster, address and port) keeps its state."""
        self._states = {t: self._states.get(t, _State()) for t in targets}

    def record(self, target: Target, attempt: Attempt) -> None:
        """Account one attempt at a current target (attempts at targets since dropped are ignored)."""
        state = self._states.get(target)
        if state is None:
            return
        if attempt.ok:
            self._states[target] = _State(0, True, "", attempt.latency_ms)
            return
        failures = state.failures + 1
        reachable = False if failures >= self.threshold else state.reachable
        self._states[target] = _State(failures, reachable, attempt.error, state.latency_ms)

    def results(self) -> tuple[Result, ...]:
        """The verdict of every decided target, sorted by target."""
        return tuple(Result(t, s.reachable, "" if s.reachable else s.error, s.latency_ms)
                     for t, s in sorted(self._states.items()) if s.reachable is not None)

    def unsent(self) -> tuple[Result, ...] | None:
        """The results, if they differ from the last ones sent in a way the hub cares about; they count as sent."""
        results = self.results()
        if _verdicts(results) == _verdicts(self._sent):
            return None
        self._sent = results
        return results

    def forget_sent(self) -> None:
        """A new stream: the hub keeps probe results per stream, so the next non-empty results go out again."""
        self._sent = ()
