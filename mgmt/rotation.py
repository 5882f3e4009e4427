"""Root rotation as an explicit state machine (pure): which roots each cluster must trust, which signs.

Every state names a *target* every cluster must reach: a trust bundle (root fingerprints,
the signing root first) and the root its intermediate must be issued by. A cluster
*confirms* a state when its agent reports exactly that bundle in `root-cert.pem` and an
intermediate issued by that root. The phases:

    Idle                    bundle [A]      signer A
    AddingRoot              bundle [A, B]   signer A   every cluster trusts B before anyone uses it
    ReissuingIntermediates  bundle [B, A]   signer B   intermediates re-issued under B; A still trusted
    RemovingOldRoot         bundle [B]      signer B   -> Idle(B) once every cluster confirmed
    RollingBack             bundle [A, B]   signer A   (from ReissuingIntermediates: back under A first)
                            bundle [A]      signer A   -> Idle(A)

A state is left only when every *required* cluster confirms it (a cluster that is away
holds the rotation; it is never cut off), and, except for the last step of a removal,
only after `grace` seconds more, so workload certificates are re-issued and proxies pick
up the new bundle. Because one bundle always contains the next (or the other way round),
a workload certificate valid in one step is accepted by every peer in the next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

IDLE = "Idle"
ADDING_ROOT = "AddingRoot"
REISSUING = "ReissuingIntermediates"
REMOVING_OLD_ROOT = "RemovingOldRoot"
ROLLING_BACK = "RollingBack"
PHASES = (IDLE, ADDING_ROOT, REISSUING, REMOVING_OLD_ROOT, ROLLING_BACK)


class RotationError(ValueError):
    """A rotation command that is not possible in the current state; the message says why and what is."""


@dataclass(frozen=True)
class CaFacts:
    """What a cluster's agent last reported of its plug-in CA."""

    bundle: tuple[str, ...] = ()
    """Fingerprints of root-cert.pem, in file order."""
    issuer: str = ""
    """Fingerprint of the bundle root that issued its intermediate ("" if none)."""
    intermediate: str = ""
    """Fingerprint of its intermediate ("" if it holds none)."""
    not_after: float = 0.0
    """Expiry of the intermediate (Unix seconds)."""
    error: str = ""
    """Why the agent cannot reach the target ("" if it can)."""
    warnings: tuple[str, ...] = ()
    """Istio settings the agent found missing."""
    reported_at: float = 0.0


@dataclass(frozen=True)
class TrustState:
    """Where the fleet's root of trust stands; persisted, so a restarted hub resumes here."""

    phase: str
    active: str
    """Fingerprint of the root that signs intermediates."""
    bundle: tuple[str, ...]
    """Fingerprints every cluster must trust, the signing root first."""
    incoming: str = ""
    """The root being introduced (AddingRoot)."""
    outgoing: str = ""
    """The root being retired (ReissuingIntermediates, RemovingOldRoot) or abandoned (RollingBack)."""
    since: float = 0.0
    """When this state was entered (Unix seconds)."""
    settled_at: float | None = None
    """When every required cluster first confirmed this state (the grace period counts from here)."""

    @property
    def roots(self) -> tuple[str, ...]:
        """Every root this state involves: the bundle plus one still being removed."""
        return tuple(dict.fromkeys((*self.bundle, *(r for r in (self.incoming, self.outgoing) if r))))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"bundle": list(self.bundle)}

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> TrustState:
        if doc.get("phase") not in PHASES:
            raise ValueError(f"unknown rotation phase {doc.get('phase')!r}")
        return TrustState(phase=doc["phase"], active=str(doc["active"]), bundle=tuple(map(str, doc["bundle"])),
                          incoming=str(doc.get("incoming", "")), outgoing=str(doc.get("outgoing", "")),
                          since=float(doc.get("since", 0.0)),
                          settled_at=None if doc.get("settled_at") is None else float(doc["settled_at"]))


@dataclass(frozen=True)
class Plan:
    """The outcome of one `step`: the state to hold, what happened, who holds it up, when to look again."""

    state: TrustState
    events: tuple[str, ...] = ()
    waiting: Mapping[str, str] = field(default_factory=dict)
    """Required cluster -> why it does not confirm the state yet."""
    next_at: float | None = None
    """When the grace period ends (step again then), or None."""


def initial(root: str, now: float) -> TrustState:
    """The state of a fleet whose only root is `root`."""
    return TrustState(IDLE, root, (root,), since=now)


def start_rotation(state: TrustState, new_root: str, now: float) -> TrustState:
    """Begin moving to `new_root` (phase 1: every cluster trusts it before anyone signs with it)."""
    if state.phase != IDLE:
        raise RotationError(f"a root rotation is already under way (phase {state.phase}); let it finish or roll it "
                            "back first")
    if new_root in state.bundle:
        raise RotationError(f"root {new_root[:12]} is already the fleet's root")
    return TrustState(ADDING_ROOT, state.active, (state.active, new_root), incoming=new_root, since=now)


def rollback(state: TrustState, now: float) -> TrustState:
    """Go back to the root the rotation started from; possible in phases 1 and 2 only."""
    if state.phase == ADDING_ROOT:
        # nobody signs with the new root yet: it can leave every bundle at once
        return TrustState(ROLLING_BACK, state.active, (state.active,), outgoing=state.incoming, since=now)
    if state.phase == REISSUING:
        # some intermediates are under the new root: re-issue under the old one while both are trusted
        old, new = state.outgoing, state.active
        return TrustState(ROLLING_BACK, old, (old, new), outgoing=new, since=now)
    if state.phase == IDLE:
        raise RotationError("no root rotation is under way; nothing to roll back")
    if state.phase == REMOVING_OLD_ROOT:
        raise RotationError("the old root is already being removed from the clusters' trust bundles; rolling back "
                            "now could cut clusters off. Let this finish, then rotate again")
    raise RotationError("a rollback is already under way")


def confirms(state: TrustState, facts: CaFacts | None) -> str | None:
    """None if a cluster's reported CA matches the state's target, else why not."""
    if facts is None:
        return "has not reported its CA yet"
    if facts.error:
        return facts.error
    if facts.bundle != state.bundle:
        have = ", ".join(f[:12] for f in facts.bundle) or "nothing"
        want = ", ".join(f[:12] for f in state.bundle)
        return f"trusts {have}; the target is {want}"
    if facts.issuer != state.active:
        return f"its intermediate is issued by {facts.issuer[:12] or 'no trusted root'}, not by {state.active[:12]}"
    return None


def _needs_grace(state: TrustState) -> bool:
    # the last step of a removal ends the rotation: nothing after it depends on caches catching up
    return not (state.phase == REMOVING_OLD_ROOT or (state.phase == ROLLING_BACK and len(state.bundle) == 1))


def _advance(state: TrustState, now: float) -> tuple[TrustState, str]:
    if state.phase == ADDING_ROOT:
        new = state.incoming
        return (TrustState(REISSUING, new, (new, state.active), outgoing=state.active, since=now),
                f"every cluster trusts root {new[:12]}: intermediates are now issued under it")
    if state.phase == REISSUING:
        return (TrustState(REMOVING_OLD_ROOT, state.active, (state.active,), outgoing=state.outgoing, since=now),
                f"every cluster's intermediate is under root {state.active[:12]}: removing root "
                f"{state.outgoing[:12]} from the trust bundles")
    if state.phase == ROLLING_BACK and len(state.bundle) > 1:
        return (TrustState(ROLLING_BACK, state.active, (state.active,), outgoing=state.outgoing, since=now),
                f"every cluster's intermediate is back under root {state.active[:12]}: removing root "
                f"{state.outgoing[:12]}")
    done = "rotation" if state.phase == REMOVING_OLD_ROOT else "rollback"
    return initial(state.active, now), f"{done} complete: root {state.active[:12]} is the only root"


def step(state: TrustState, reports: Mapping[str, CaFacts], required: Set[str], away: Set[str],
         now: float, grace: float) -> Plan:
    """Advance as far as the clusters' reports allow (pure).

    `required`: the clusters that must confirm (those holding an intermediate); `away`: those of
    them not connected now, only to say so in `waiting`.
    """
    events: list[str] = []
    for _ in range(len(PHASES)):
        if state.phase == IDLE:
            return Plan(state, tuple(events))
        waiting = {}
        for cluster in sorted(required):
            why = confirms(state, reports.get(cluster))
            if why is not None:
                waiting[cluster] = (f"away, holding the rotation until it is back ({why})" if cluster in away
                                    else why)
        if waiting:
            if state.settled_at is not None:
                state = dataclasses.replace(state, settled_at=None)
            return Plan(state, tuple(events), waiting)
        settled = now if state.settled_at is None else state.settled_at
        if state.settled_at is None:
            state = dataclasses.replace(state, settled_at=now)
        if _needs_grace(state) and now < settled + grace:
            return Plan(state, tuple(events), {}, settled + grace)
        state, event = _advance(state, now)
        events.append(event)
    return Plan(state, tuple(events))
