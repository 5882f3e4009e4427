"""Per-cluster policy state and the status body (pure)."""

from __future__ import annotations

import pytest

from mgmt.statuses import ClusterFacts, ClusterState, cluster_states, policy_status, same_status

KEY, DIGEST = "bookinfo/reviews-split", "d1"


def facts(desired: str = "v2", acked: str = "v2", nack: tuple[str, str] = ("", ""),
          carried: dict[str, dict[str, str]] | None = None, problems: dict[str, list[str]] | None = None
          ) -> ClusterFacts:
    included = carried if carried is not None else {"v1": {KEY: "d0"}, "v2": {KEY: DIGEST}}
    return ClusterFacts(desired, acked, nack[0], nack[1], included, problems or {})


@pytest.mark.parametrize("f, state, message", [
    pytest.param(facts(), "Applied", "", id="acked-current"),
    pytest.param(facts(acked="v1"), "Accepted", "", id="acked-older-content"),
    pytest.param(facts(acked="v1", carried={"v1": {KEY: DIGEST}, "v2": {KEY: DIGEST}}), "Applied", "",
                 id="acked-older-version-same-content"),
    pytest.param(facts(acked="v1", nack=("v2", "refusing to overwrite x")), "Rejected", "refusing to overwrite x",
                 id="nacked-current"),
    pytest.param(facts(acked="v1", nack=("v0", "old trouble")), "Accepted", "", id="stale-nack-ignored"),
    pytest.param(facts(carried={"v2": {}}, problems={KEY: ["conflicts with bookinfo/a in cluster c"]}),
                 "Rejected", "conflicts with bookinfo/a in cluster c", id="not-carried-with-problem"),
    pytest.param(facts(problems={KEY: ["cluster x has no reachable backend"]}), "Applied", "",
                 id="carried-with-a-warning"),
])
def test_cluster_state(f: ClusterFacts, state: str, message: str) -> None:
    [s] = cluster_states(KEY, DIGEST, ["c1"], {"c1": f})
    assert (s.state, s.message) == (state, message)


def test_a_cluster_that_never_connected_is_pending() -> None:
    assert cluster_states(KEY, DIGEST, ["new"], {}) == [
        ClusterState("new", "Accepted", "the cluster has not connected yet", "")]


def test_ready_only_when_every_cluster_applied_and_transition_time_is_kept() -> None:
    applied = [ClusterState("a", "Applied", "", "v2"), ClusterState("b", "Applied", "", "v2")]
    first = policy_status(None, 3, [], applied, "T1")
    ready = next(c for c in first["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["lastTransitionTime"], ready["observedGeneration"]) == (
        "True", "Applied", "T1", 3)
    again = policy_status(first, 3, [], applied, "T2")
    assert next(c for c in again["conditions"] if c["type"] == "Ready")["lastTransitionTime"] == "T1"
    assert same_status(first, again)
    rejected = policy_status(again, 3, [], [applied[0], ClusterState("b", "Rejected", "nope", "v2")], "T3")
    ready = next(c for c in rejected["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"], ready["lastTransitionTime"]) == (
        "False", "Rejected", "b: nope", "T3")
    assert rejected["clusters"][1] == {"cluster": "b", "state": "Rejected", "message": "nope", "observedVersion": "v2"}


def test_an_invalid_resource_is_not_accepted() -> None:
    status = policy_status(None, 1, ["spec.http is not supported"], [], "T")
    accepted = next(c for c in status["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"], accepted["message"]) == (
        "False", "Invalid", "spec.http is not supported")
    assert status["clusters"] == []


def test_problems_of_the_resource_as_a_whole_set_resolved_refs_and_ready_when_it_applies_nowhere() -> None:
    problems = ["MulticlusterService bookinfo/nope does not exist (or is not applied)"]
    status = policy_status(None, 3, [], [], "t0", problems)
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Accepted"]["status"] == "True"
    assert (by_type["ResolvedRefs"]["status"], by_type["ResolvedRefs"]["reason"]) == ("False", "Problems")
    assert by_type["ResolvedRefs"]["message"] == problems[0]
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("False", "NotApplied")
    applied = [ClusterState("us-east-1", "Applied", "", "abc")]
    partly = {c["type"]: c for c in policy_status(status, 3, [], applied, "t1", problems)["conditions"]}
    assert partly["ResolvedRefs"]["status"] == "False" and partly["Ready"]["status"] == "True"
    clean = {c["type"]: c for c in policy_status(status, 3, [], applied, "t2")["conditions"]}
    assert (clean["ResolvedRefs"]["status"], clean["ResolvedRefs"]["lastTransitionTime"]) == ("True", "t2")


def test_a_resource_digest_ignores_where_and_when_it_was_read_but_not_its_content() -> None:
    from mgmt.model import Destination, HttpRule, Meta, RouteTarget, TrafficPolicy
    from mgmt.statuses import resource_digest

    def policy(meta: Meta, weight: int) -> TrafficPolicy:
        route = (RouteTarget("us-east-1", weight), RouteTarget("eu-west-1", 100 - weight))
        return TrafficPolicy(meta, Destination(service="reviews"), (HttpRule("default", route),))

    a = policy(Meta("TrafficPolicy", "bookinfo", "split", "a.yaml:1"), 80)
    moved = policy(Meta("TrafficPolicy", "bookinfo", "split", "a.yaml:9", "2026-01-01T00:00:00Z", 4), 80)
    assert resource_digest(a) == resource_digest(moved)
    assert resource_digest(a) != resource_digest(policy(a.meta, 70))
    assert resource_digest(a) != resource_digest(policy(Meta("TrafficPolicy", "bookinfo", "other"), 80))


def test_every_status_body_the_hub_writes_is_valid_for_every_policy_crd() -> None:
    """The API server refuses a status patch its schema refuses: what the writer sends must pass all of them."""
    from pathlib import Path

    import yaml

    from meshfleet.crdschemas import CRDSchemas

    crds = Path(__file__).resolve().parents[1] / "crds"
    documents = (d for p in sorted(crds.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()))
    schemas = CRDSchemas.from_documents(documents)
    states = [ClusterState("us-east-1", "Applied", "", "0123abcd"), ClusterState("eu-west-1", "Accepted", "", ""),
              ClusterState("ap-south-1", "Rejected", "older policy wins", "")]
    bodies = [policy_status(None, 2, [], states, "2026-11-21T00:00:00Z", ["a selector matches nothing"]),
              policy_status(None, 2, ["spec.route: weights add up to 90, not 100"], [], "2026-11-21T00:00:00Z"),
              policy_status(None, 0, [], [], "2026-11-21T00:00:00Z")]
    for kind in ("MulticlusterService", "TrafficPolicy", "FailoverPolicy", "AccessPolicy"):
        for body in bodies:
            obj = {"apiVersion": "meshfleet.io/v1alpha1", "kind": kind,
                   "metadata": {"name": "x", "namespace": "bookinfo"}, "status": body}
            errors = [str(e) for e in schemas.validate(obj) if str(e).startswith("status")]
            assert errors == [], (kind, errors)


def test_a_valid_resource_that_concerns_no_cluster_is_not_ready() -> None:
    ready = {c["type"]: c for c in policy_status(None, 1, [], [], "t0")["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "NotApplied", "it concerns no cluster")
