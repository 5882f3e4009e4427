"""The root rotation planner (pure): phases, holding for away clusters, grace, rollback, and the safety invariant."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgmt.rotation import (
    ADDING_ROOT,
    IDLE,
    REISSUING,
    REMOVING_OLD_ROOT,
    ROLLING_BACK,
    CaFacts,
    RotationError,
    TrustState,
    confirms,
    initial,
    rollback,
    start_rotation,
    step,
)

A, B = "a" * 64, "b" * 64
CLUSTERS = {"c1", "c2", "c3"}


def at_target(state: TrustState) -> CaFacts:
    return CaFacts(bundle=state.bundle, issuer=state.active, intermediate="i" * 64)


def all_at(state: TrustState, clusters: set[str] = CLUSTERS) -> dict[str, CaFacts]:
    return {c: at_target(state) for c in clusters}


def test_a_full_rotation_walks_the_three_phases_in_order() -> None:
    state = start_rotation(initial(A, 0), B, 1)
    assert (state.phase, state.bundle, state.active) == (ADDING_ROOT, (A, B), A)
    seen = [state.phase]
    now = 1.0
    while state.phase != IDLE:
        now += 1
        plan = step(state, all_at(state), CLUSTERS, set(), now, grace=0)
        state = plan.state
        # the clusters now wait for the next target, which they have not reached yet
        assert set(plan.waiting) == (set() if state.phase == IDLE else CLUSTERS)
        seen.append(state.phase)
        # one call moves one phase: the next target has not been reported yet
        assert len(plan.events) == 1
    assert seen == [ADDING_ROOT, REISSUING, REMOVING_OLD_ROOT, IDLE]
    assert (state.bundle, state.active) == ((B,), B)


@pytest.mark.parametrize("phase_targets", [
    pytest.param((ADDING_ROOT, (A, B), A), id="adding-root-keeps-the-old-signer"),
    pytest.param((REISSUING, (B, A), B), id="reissuing-signs-with-the-new-root-first-in-the-bundle"),
    pytest.param((REMOVING_OLD_ROOT, (B,), B), id="removing-leaves-only-the-new-root"),
])
def test_targets_of_each_phase(phase_targets: tuple[str, tuple[str, ...], str]) -> None:
    phase, bundle, signer = phase_targets
    state = start_rotation(initial(A, 0), B, 0)
    while state.phase != phase:
        state = step(state, all_at(state), CLUSTERS, set(), 1, 0).state
    assert (state.bundle, state.active) == (bundle, signer)


def test_a_cluster_that_is_away_holds_the_rotation_and_is_named() -> None:
    state = start_rotation(initial(A, 0), B, 0)
    reports = all_at(state, {"c1", "c2"}) | {"c3": at_target(initial(A, 0))}
    plan = step(state, reports, CLUSTERS, {"c3"}, 5, 0)
    assert plan.state.phase == ADDING_ROOT
    assert list(plan.waiting) == ["c3"]
    assert "away, holding the rotation" in plan.waiting["c3"]
    assert "trusts aaaaaaaaaaaa" in plan.waiting["c3"]
    # back and caught up: the rotation moves on
    plan = step(plan.state, all_at(state), CLUSTERS, set(), 6, 0)
    assert plan.state.phase == REISSUING


def test_an_agent_error_holds_the_rotation_with_its_message() -> None:
    state = start_rotation(initial(A, 0), B, 0)
    reports = all_at(state) | {"c2": CaFacts(error="Secret istio-system/cacerts is not managed by meshfleet")}
    plan = step(state, reports, CLUSTERS, set(), 1, 0)
    assert plan.waiting == {"c2": "Secret istio-system/cacerts is not managed by meshfleet"}


def test_grace_period_counts_from_when_every_cluster_confirmed() -> None:
    state = start_rotation(initial(A, 0), B, 0)
    plan = step(state, all_at(state), CLUSTERS, set(), 10, grace=100)
    assert plan.state.phase == ADDING_ROOT and plan.state.settled_at == 10 and plan.next_at == 110
    assert step(plan.state, all_at(state), CLUSTERS, set(), 109.9, grace=100).state.phase == ADDING_ROOT
    assert step(plan.state, all_at(state), CLUSTERS, set(), 110, grace=100).state.phase == REISSUING


def test_a_cluster_falling_back_restarts_the_grace_period() -> None:
    state = start_rotation(initial(A, 0), B, 0)
    settled = step(state, all_at(state), CLUSTERS, set(), 10, grace=100).state
    lagging = all_at(state) | {"c1": CaFacts(error="cacerts write failed")}
    unsettled = step(settled, lagging, CLUSTERS, set(), 50, grace=100).state
    assert unsettled.settled_at is None
    again = step(unsettled, all_at(state), CLUSTERS, set(), 60, grace=100)
    assert again.next_at == 160


def test_removal_ends_without_waiting_for_grace() -> None:
    state = TrustState(REMOVING_OLD_ROOT, B, (B,), outgoing=A)
    plan = step(state, all_at(state), CLUSTERS, set(), 5, grace=1e9)
    assert plan.state == initial(B, 5)


def test_no_required_clusters_completes_at_once_with_zero_grace() -> None:
    plan = step(start_rotation(initial(A, 0), B, 0), {}, set(), set(), 1, 0)
    assert plan.state == initial(B, 1)
    assert len(plan.events) == 3


def test_rollback_from_phase_one_removes_the_new_root_at_once() -> None:
    state = rollback(start_rotation(initial(A, 0), B, 0), 1)
    assert (state.phase, state.bundle, state.active, state.outgoing) == (ROLLING_BACK, (A,), A, B)
    assert step(state, all_at(state), CLUSTERS, set(), 2, grace=1e9).state == initial(A, 2)


def test_rollback_from_phase_two_reissues_under_the_old_root_before_removing_the_new() -> None:
    state = start_rotation(initial(A, 0), B, 0)
    state = step(state, all_at(state), CLUSTERS, set(), 1, 0).state
    assert state.phase == REISSUING
    state = rollback(state, 2)
    assert (state.phase, state.bundle, state.active) == (ROLLING_BACK, (A, B), A)
    state = step(state, all_at(state), CLUSTERS, set(), 3, 0).state
    assert (state.phase, state.bundle) == (ROLLING_BACK, (A,))
    assert step(state, all_at(state), CLUSTERS, set(), 4, 0).state == initial(A, 4)


@pytest.mark.parametrize(("state", "message"), [
    pytest.param(initial(A, 0), "nothing to roll back", id="idle"),
    pytest.param(TrustState(REMOVING_OLD_ROOT, B, (B,), outgoing=A), "already being removed", id="removing"),
    pytest.param(TrustState(ROLLING_BACK, A, (A,), outgoing=B), "already under way", id="rolling-back"),
])
def test_rollback_refused(state: TrustState, message: str) -> None:
    with pytest.raises(RotationError, match=message):
        rollback(state, 1)


def test_rotation_refused_while_one_is_under_way_or_to_the_same_root() -> None:
    with pytest.raises(RotationError, match="already under way"):
        start_rotation(start_rotation(initial(A, 0), B, 0), "c" * 64, 1)
    with pytest.raises(RotationError, match="already the fleet's root"):
        start_rotation(initial(A, 0), A, 1)


def test_confirmation_needs_the_exact_bundle_order_and_the_signer() -> None:
    state = start_rotation(initial(A, 0), B, 0)
    assert confirms(state, CaFacts(bundle=(A, B), issuer=A)) is None
    assert "target is" in (confirms(state, CaFacts(bundle=(B, A), issuer=A)) or "")
    assert "issued by" in (confirms(state, CaFacts(bundle=(A, B), issuer=B)) or "")
    assert confirms(state, None) == "has not reported its CA yet"


def test_state_survives_a_round_trip_through_json() -> None:
    state = start_rotation(initial(A, 0), B, 3)
    state = step(state, all_at(state), CLUSTERS, set(), 4, grace=10).state
    assert TrustState.from_json(state.to_json()) == state
    with pytest.raises(ValueError, match="unknown rotation phase"):
        TrustState.from_json({"phase": "Bogus", "active": A, "bundle": [A]})


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rollback_at=st.one_of(st.none(), st.integers(0, 40)))
def test_every_cluster_accepts_every_other_clusters_intermediate_throughout(seed: int,
                                                                           rollback_at: int | None) -> None:
    """Clusters reach each target at random times (bundle first, then a re-issued intermediate).

    At every moment, the root each cluster's intermediate chains to must be in every other
    cluster's bundle: that is what keeps cross-cluster mTLS handshakes working.
    """
    rng = random.Random(seed)
    names = [f"c{i}" for i in range(4)]
    state = start_rotation(initial(A, 0), B, 0)
    held = {c: CaFacts(bundle=(A,), issuer=A, intermediate="i") for c in names}
    now = 0.0
    rolled_back = False
    for tick in range(400):
        now += 1
        if rollback_at is not None and tick == rollback_at and state.phase in (ADDING_ROOT, REISSUING):
            state = rollback(state, now)
            rolled_back = True
        c = rng.choice(names)
        facts = held[c]
        if facts.bundle != state.bundle:
            # a cluster takes a new bundle only while its intermediate stays trusted by it
            if facts.issuer in state.bundle:
                held[c] = CaFacts(bundle=state.bundle, issuer=facts.issuer, intermediate="i")
            else:
                held[c] = CaFacts(bundle=facts.bundle, issuer=state.active, intermediate="i")
        elif facts.issuer != state.active:
            held[c] = CaFacts(bundle=facts.bundle, issuer=state.active, intermediate="i")
        for x in names:
            for y in names:
                assert held[x].issuer in held[y].bundle, (state, held)
        state = step(state, held, set(names), set(), now, grace=0).state
        if state.phase == IDLE:
            break
    assert state.phase == IDLE
    assert state.active == (A if rolled_back else B)
