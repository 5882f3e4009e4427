"""Fail-static removal (agent.retention): the pure decisions, the state file, and the agent applying them."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent import cli as agent_cli
from agent.render.context import ORIGIN_ANNOTATION
from agent.retention import (
    STATE_FILE,
    Missed,
    Plan,
    RetentionFile,
    decide,
    dumps,
    loads,
    next_due,
    origin_of,
)
from agent.settings import AgentSettings
from agent.syncing import Agent
from agent.writing import SinkError
from meshfleet.cli import main
from meshfleet.intents import MEDIA_TYPE, Backend, ClusterIntent, ClusterRef, Port, ServiceIntent, encode
from meshfleet.v1 import hub_pb2
from tests.fleets import tree

NOW = 1_000_000.0
GRACE = 600.0
SVC = "MulticlusterService/bookinfo/ratings"
SE = "bookinfo/serviceentry-ratings-global.yaml"


# the decisions ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("retained, origins, deleted, now, expected", [
    pytest.param({}, {SE: SVC}, {SVC}, NOW, None, id="deleted-origin-pruned-at-once"),
    pytest.param({SE: Missed(NOW - 10, SVC)}, {}, {SVC}, NOW, None, id="deleted-origin-from-state-pruned-at-once"),
    pytest.param({}, {SE: SVC}, {"TrafficPolicy/bookinfo/other"}, NOW, Missed(NOW, SVC), id="other-deletion-kept"),
    pytest.param({}, {}, {SVC}, NOW, Missed(NOW, ""), id="unknown-origin-kept-for-the-grace"),
    pytest.param({}, {SE: ""}, set(), NOW, Missed(NOW, ""), id="no-origin-annotation-kept"),
    pytest.param({SE: Missed(NOW - 100, SVC)}, {}, set(), NOW, Missed(NOW - 100, SVC),
                 id="within-grace-keeps-first-miss"),
    pytest.param({SE: Missed(NOW - GRACE + 0.001, "")}, {}, set(), NOW, Missed(NOW - GRACE + 0.001, ""),
                 id="just-before-expiry-kept"),
    pytest.param({SE: Missed(NOW - GRACE, SVC)}, {}, set(), NOW, None, id="grace-expired-pruned"),
    pytest.param({SE: Missed(NOW - 5, "")}, {SE: SVC}, set(), NOW, Missed(NOW - 5, SVC),
                 id="previous-render-names-the-origin"),
])
def test_decide(retained: dict[str, Missed], origins: dict[str, str], deleted: set[str], now: float,
                expected: Missed | None) -> None:
    assert decide(SE, retained, origins, frozenset(deleted), now, GRACE) == expected


def test_a_zero_grace_prunes_at_once_as_before() -> None:
    assert decide(SE, {}, {SE: SVC}, frozenset(), NOW, 0.0) is None


def test_next_due_is_the_earliest_expiry() -> None:
    assert next_due({}, GRACE) is None
    assert next_due({"a": Missed(NOW, ""), "b": Missed(NOW - 50, "x")}, GRACE) == NOW - 50 + GRACE


def test_plan_records_keeps_and_prunes_and_objects_rendered_again_leave_the_state() -> None:
    retained = {"again": Missed(NOW - 5, ""), "old": Missed(NOW - GRACE - 1, ""), "kept": Missed(NOW - 5, "")}
    plan = Plan(retained, {"gone": SVC, "new": "AccessPolicy/ns/a"}, frozenset({SVC}), NOW, GRACE)
    # the sink asks about owned objects not rendered: "again" is rendered again, so it is not asked
    answers = {k: plan.hold(k) for k in ("old", "kept", "gone", "new")}
    assert answers == {"old": False, "kept": True, "gone": False, "new": True}
    assert plan.after(["kept", "new"]) == {"kept": Missed(NOW - 5, ""), "new": Missed(NOW, "AccessPolicy/ns/a")}
    assert plan.newly_kept() == ["new"]
    assert plan.pruned == {"old": "not in the hub's intent for 600 s", "gone": f"{SVC} was deleted on the hub"}


def test_origin_comes_from_the_annotation() -> None:
    assert origin_of({"metadata": {"annotations": {ORIGIN_ANNOTATION: SVC}}}) == SVC
    assert origin_of({"metadata": {"name": "meshfleet-eastwest"}}) == ""


# the state file --------------------------------------------------------------------------------------------
def test_state_round_trips_through_its_file(tmp_path: Path) -> None:
    retained = {SE: Missed(NOW - 1.5, SVC), "istio-system/gateway-meshfleet-eastwest.yaml": Missed(NOW, "")}
    store = RetentionFile(tmp_path)
    assert store.load() == {}
    store.save(retained)
    assert RetentionFile(tmp_path).load() == retained
    assert loads(dumps(retained)) == retained
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("content", [
    pytest.param(b"", id="empty"),
    pytest.param(b'{"objects": {"a": {"since": 1', id="truncated"),
    pytest.param(b"[]", id="not-an-object"),
    pytest.param(b'{"objects": []}', id="objects-not-a-mapping"),
    pytest.param(b'{"objects": {"a": {"origin": "x"}}}', id="no-since"),
    pytest.param(b'{"objects": {"a": {"since": "yesterday"}}}', id="since-not-a-number"),
    pytest.param(b'{"objects": {"a": {"since": true}}}', id="since-a-bool"),
    pytest.param(b'{"objects": {"a": {"since": 1, "origin": 7}}}', id="origin-not-a-string"),
    pytest.param(b'{"objects": {"a": 5}}', id="entry-not-a-mapping"),
    pytest.param(b"\xff\xfe", id="not-utf8"),
])
def test_a_corrupt_state_file_is_ignored_with_a_warning(tmp_path: Path, content: bytes,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="agent.retention"):
        assert RetentionFile(tmp_path).load() == {}
    assert f"ignoring unreadable {tmp_path / STATE_FILE}" in caplog.text


# the agent applying them ---------------------------------------------------------------------------------
ME = ClusterRef("us-east-1", "us-east", "us-east-1a", "net-us-east")
EU = ClusterRef("eu-west-1", "eu-west", "eu-west-1a", "net-eu-west")


def service(name: str, origin: str = "") -> ServiceIntent:
    return ServiceIntent("bookinfo", name, (Port("http", 9080, "HTTP"),), (Backend(EU, "gw.eu.example", 15443),),
                         origin=origin)


BOTH = ClusterIntent(ME, services=(service("ratings", SVC), service("details", "MulticlusterService/bookinfo/details")))
DETAILS_ONLY = ClusterIntent(ME, services=(service("details", "MulticlusterService/bookinfo/details"),))
RATINGS = ("bookinfo/destinationrule-ratings-global.yaml", SE)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def agent(tmp_path: Path, clock: Clock, grace: float = GRACE) -> Agent:
    a = Agent(AgentSettings(hub="127.0.0.1:1", cluster="us-east-1", state_dir=tmp_path / "state",
                            inventory=tmp_path / "inventory.yaml", output=tmp_path / "out", removal_grace=grace))
    a.clock = clock
    return a


def push(intent: ClusterIntent) -> hub_pb2.IntentPush:
    version, content = encode(intent)
    return hub_pb2.IntentPush(version=version, content=content, content_type=MEDIA_TYPE)


def files(tmp_path: Path) -> set[str]:
    return {p for p in tree(tmp_path / "out") if not p.startswith(".")}


def test_an_object_dropped_from_the_intent_is_kept_then_removed_after_the_grace(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a = agent(tmp_path, clock)
    assert a.apply(push(BOTH)).WhichOneof("kind") == "ack"
    with caplog.at_level(logging.INFO, logger="agent.syncing"):
        assert a.apply(push(DETAILS_ONLY)).WhichOneof("kind") == "ack"
    assert set(RATINGS) <= files(tmp_path)
    assert a.retained == {k: Missed(NOW, SVC) for k in RATINGS}
    assert RetentionFile(tmp_path / "state").load() == a.retained
    assert caplog.text.count(f"keeping {SE} for up to 600 s: no longer in the hub's intent") == 1

    # another push before the grace ran out keeps them, from the first miss, and says nothing again
    caplog.clear()
    clock.now = NOW + 300
    with caplog.at_level(logging.INFO, logger="agent.syncing"):
        a.apply(push(ClusterIntent(ME, services=DETAILS_ONLY.services, regions=(("eu-west",),))))
    assert a.retained == {k: Missed(NOW, SVC) for k in RATINGS}
    assert "keeping" not in caplog.text
    assert not a.prune_due()  # not due yet

    clock.now = NOW + GRACE
    with caplog.at_level(logging.INFO, logger="agent.syncing"):
        assert a.prune_due()
    assert not set(RATINGS) & files(tmp_path)
    assert a.retained == {} and RetentionFile(tmp_path / "state").load() == {}
    assert f"removing {SE}: not in the hub's intent for 600 s" in caplog.text
    assert {"bookinfo/serviceentry-details-global.yaml", "bookinfo/destinationrule-details-global.yaml"} <= files(
        tmp_path)


def test_objects_of_a_resource_deleted_on_the_hub_go_at_once(tmp_path: Path) -> None:
    a = agent(tmp_path, Clock())
    a.apply(push(BOTH))
    answer = a.apply(push(ClusterIntent(ME, services=DETAILS_ONLY.services, deleted=(SVC,))))
    assert answer.WhichOneof("kind") == "ack"
    assert not set(RATINGS) & files(tmp_path)
    assert a.retained == {}


def test_a_kept_object_whose_resource_is_deleted_later_goes_at_once(tmp_path: Path) -> None:
    a = agent(tmp_path, Clock())
    a.apply(push(BOTH))
    a.apply(push(DETAILS_ONLY))
    assert set(RATINGS) <= files(tmp_path)
    a.apply(push(ClusterIntent(ME, services=DETAILS_ONLY.services, deleted=(SVC,))))
    assert not set(RATINGS) & files(tmp_path)


def test_an_object_rendered_again_leaves_the_kept_set(tmp_path: Path) -> None:
    a = agent(tmp_path, Clock())
    a.apply(push(BOTH))
    a.apply(push(DETAILS_ONLY))
    assert a.retained
    a.apply(push(BOTH))
    assert a.retained == {} and RetentionFile(tmp_path / "state").load() == {}


def test_a_restart_with_kept_objects_trusts_the_cache_and_removes_nothing_before_a_sync(tmp_path: Path) -> None:
    clock = Clock()
    a = agent(tmp_path, clock)
    a.apply(push(BOTH))
    a.apply(push(DETAILS_ONLY))
    before = tree(tmp_path / "out")
    clock.now = NOW + 2 * GRACE  # long past the grace while the agent was down
    restarted = agent(tmp_path, clock)
    assert restarted.applied_version == push(DETAILS_ONLY).version  # held objects do not void the cache
    assert restarted.retained == a.retained
    assert not restarted.prune_pending()  # no sync with the hub yet: the tick removes nothing
    assert tree(tmp_path / "out") == before


def test_grace_counts_from_the_first_miss_across_restarts(tmp_path: Path) -> None:
    clock = Clock()
    a = agent(tmp_path, clock)
    a.apply(push(BOTH))
    a.apply(push(DETAILS_ONLY))
    clock.now = NOW + GRACE + 1
    restarted = agent(tmp_path, clock)
    # the hub's next push (any version) is the first sync: what is overdue goes then
    restarted.apply(push(ClusterIntent(ME, services=DETAILS_ONLY.services, regions=(("eu-west",),))))
    assert not set(RATINGS) & files(tmp_path)


def test_a_failed_apply_keeps_the_first_miss_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    a = agent(tmp_path, clock)
    a.apply(push(BOTH))
    real_apply = a.sink.apply

    def fails_late(objects: Any, hold: Any = None) -> Any:
        real_apply(objects, hold)  # decides what to keep, then the inventory cannot be narrowed
        raise SinkError("writing manifests failed: No space left on device")

    monkeypatch.setattr(a.sink, "apply", fails_late)
    assert a.apply(push(DETAILS_ONLY)).WhichOneof("kind") == "nack"
    monkeypatch.setattr(a.sink, "apply", real_apply)
    clock.now = NOW + 10
    assert a.apply(push(DETAILS_ONLY)).WhichOneof("kind") == "ack"
    assert {k: m.since for k, m in a.retained.items()} == dict.fromkeys(RATINGS, NOW)


def test_the_tick_prune_never_overlaps_an_apply(tmp_path: Path) -> None:
    clock = Clock()
    a = agent(tmp_path, clock, grace=1.0)
    a.apply(push(BOTH))
    a.apply(push(DETAILS_ONLY))
    clock.now = NOW + 5
    inside, overlaps = [0], [0]
    gate = threading.Event()
    real_apply = a.sink.apply

    def slow_apply(objects: Any, hold: Any = None) -> Any:
        inside[0] += 1
        overlaps[0] = max(overlaps[0], inside[0])
        gate.wait(5)
        try:
            return real_apply(objects, hold)
        finally:
            inside[0] -= 1

    a.sink.apply = slow_apply  # type: ignore[method-assign,unused-ignore]
    pushing = threading.Thread(target=a.apply, args=(push(BOTH),))
    pushing.start()
    time.sleep(0.05)
    pruning = threading.Thread(target=a.prune_due)
    pruning.start()
    time.sleep(0.05)
    gate.set()
    pushing.join(5)
    pruning.join(5)
    assert overlaps[0] == 1
    # the push rendered ratings again, so the prune that waited for it found nothing due
    assert set(RATINGS) <= files(tmp_path) and a.retained == {}


def test_a_failing_removal_is_logged_once_and_retried_not_raised(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a = agent(tmp_path, clock, grace=1.0)
    a.apply(push(BOTH))
    a.apply(push(DETAILS_ONLY))
    clock.now = NOW + 5
    inventory = tmp_path / "out" / ".meshfleet-inventory.json"
    good = inventory.read_text()
    inventory.write_text("{broken")
    with caplog.at_level(logging.ERROR, logger="agent.syncing"):
        assert not a.prune_due()
        assert not a.prune_due()
    assert caplog.text.count("removing objects whose grace ran out failed") == 1
    assert set(RATINGS) <= files(tmp_path) and set(a.retained) == set(RATINGS)
    inventory.write_text(good)
    assert a.prune_due()
    assert not set(RATINGS) & files(tmp_path)


# the setting and its flag ----------------------------------------------------------------------------------
class _Recorder:
    """Stands in for Agent in `meshfleet agent`: records the settings it was built with, runs nothing."""

    settings: ClassVar[list[AgentSettings]] = []

    def __init__(self, settings: AgentSettings, **_: Any) -> None:
        self.settings.append(settings)

    async def run(self) -> None:
        return None


def agent_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["agent", "--hub", "127.0.0.1:1", "--cluster", "us-east-1", "--state-dir", str(tmp_path / "state"),
            "--inventory", str(tmp_path / "inventory.yaml"), "--output", str(tmp_path / "out"), *extra]


def test_removal_grace_flag_reaches_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_cli, "Agent", _Recorder)
    _Recorder.settings = []
    assert main(agent_argv(tmp_path)) == 0
    assert main(agent_argv(tmp_path, "--removal-grace", "30")) == 0
    assert [s.removal_grace for s in _Recorder.settings] == [600.0, 30.0]


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_negative_removal_grace_is_refused(tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(agent_argv(tmp_path, "--removal-grace", value)) == 2
    assert "--removal-grace must be a number of seconds, 0 or more" in capsys.readouterr().err
