"""The Kubernetes sink against a fake API server over HTTP, through the real `kubernetes` client."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.applying import FIELD_MANAGER, KubernetesSink
from agent.kubeapi import Rest, RetryPolicy
from agent.writing import SinkError
from tests.fakekube import FakeKube
from tests.istio_support import istio_available, istio_schemas
from tests.test_render import example_objects

CLUSTER = "eu-west-1"


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    # with Istio's CRDs the fake refuses invalid objects with 422, as a real API server would
    with FakeKube(crds=istio_schemas() if istio_available() else None) as fake:
        yield fake


@pytest.fixture
def sink(kube: FakeKube) -> Iterator[KubernetesSink]:
    with kube.api_client() as api:
        yield KubernetesSink(Rest(api, RetryPolicy(initial=0.001, maximum=0.01)), CLUSTER)


@pytest.fixture
def objects(tmp_path: Path) -> list[dict[str, Any]]:
    return example_objects(tmp_path, CLUSTER)


def live(kube: FakeKube, obj: dict[str, Any]) -> dict[str, Any] | None:
    return kube.get(obj["apiVersion"], obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"])


def test_apply_creates_every_object_with_ssa_and_records_them(kube: FakeKube, sink: KubernetesSink,
                                                              objects: list[dict[str, Any]]) -> None:
    result = sink.apply(objects)
    assert (result.written, result.unchanged, result.pruned) == (len(objects), 0, 0)
    for obj in objects:
        found = live(kube, obj)
        assert found is not None and found["spec"] == obj["spec"]
        assert found["metadata"]["labels"] == obj["metadata"]["labels"]
        assert FIELD_MANAGER in {m["manager"] for m in found["metadata"]["managedFields"]}
    applies = [r for r in kube.writes() if r.verb == "apply"]
    assert all(r.query.get("fieldManager") == FIELD_MANAGER for r in applies)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} <= {
        (r.body["kind"], r.body["metadata"]["name"]) for r in applies}
    assert len(sink.inventory()) == len(objects)


def test_resync_of_an_unchanged_intent_writes_nothing(kube: FakeKube, sink: KubernetesSink,
                                                      objects: list[dict[str, Any]]) -> None:
    sink.apply(objects)
    kube.clear_requests()
    result = sink.apply(objects)
    assert (result.written, result.unchanged) == (0, len(objects))
    assert kube.writes() == []


def test_someone_elses_object_is_reported_not_overwritten(kube: FakeKube, sink: KubernetesSink,
                                                          objects: list[dict[str, Any]]) -> None:
    vs = next(o for o in objects if o["kind"] == "VirtualService")
    theirs = copy.deepcopy(vs)
    theirs["metadata"]["labels"] = {"team": "payments"}
    theirs["spec"]["http"][0]["route"] = [{"destination": {"host": "reviews.bookinfo.global"}}]
    kube.put(theirs, manager="kubectl")
    before = live(kube, vs)
    name = vs["metadata"]["name"]
    with pytest.raises(SinkError, match=f"refusing to modify VirtualService bookinfo/{name}: it exists and "
                                        "is not managed by meshfleet"):
        sink.apply(objects)
    assert live(kube, vs) == before
    assert not [r for r in kube.writes() if r.verb == "apply" and r.name == name]


def test_objects_no_longer_rendered_are_pruned_and_only_those(kube: FakeKube, sink: KubernetesSink,
                                                              objects: list[dict[str, Any]]) -> None:
    sink.apply(objects)
    foreign = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": "mine", "namespace": "bookinfo"},
               "spec": {"host": "mine.bookinfo.svc.cluster.local"}}
    kube.put(foreign, manager="kubectl")
    keep = [o for o in objects if o["metadata"]["name"] != "ratings-global"]
    result = sink.apply(keep)
    assert result.pruned == len(objects) - len(keep) > 0
    for obj in objects:
        assert (live(kube, obj) is not None) == (obj in keep)
    assert live(kube, foreign) is not None
    assert len(sink.inventory()) == len(keep)


def test_an_object_whose_labels_were_taken_away_is_not_pruned(kube: FakeKube, sink: KubernetesSink,
                                                              objects: list[dict[str, Any]]) -> None:
    sink.apply(objects)
    adopted = copy.deepcopy(live(kube, objects[0]))
    assert adopted is not None
    adopted["metadata"]["labels"] = {"team": "adopted-it"}
    kube.put(adopted, manager="kubectl")
    sink.apply(objects[1:])
    assert live(kube, objects[0]) is not None


def test_drift_is_healed_by_the_next_apply(kube: FakeKube, sink: KubernetesSink,
                                           objects: list[dict[str, Any]]) -> None:
    sink.apply(objects)
    vs = next(o for o in objects if o["kind"] == "VirtualService")
    edited = copy.deepcopy(live(kube, vs))
    assert edited is not None
    edited["spec"]["http"][0]["route"][0]["weight"], edited["spec"]["http"][0]["route"][1]["weight"] = 90, 10
    kube.put(edited, manager="kubectl-edit")
    kube.clear_requests()
    result = sink.apply(objects)
    assert result.written == 1
    healed = live(kube, vs)
    assert healed is not None and healed["spec"] == vs["spec"]


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_transient_refusals_are_retried(kube: FakeKube, sink: KubernetesSink, objects: list[dict[str, Any]],
                                        status: int) -> None:
    kube.fail_next("PATCH", r"/virtualservices/", status, times=2, retry_after=0)
    sink.apply(objects)
    vs = next(o for o in objects if o["kind"] == "VirtualService")
    assert live(kube, vs) is not None


def test_retries_give_up_with_the_servers_message(kube: FakeKube, sink: KubernetesSink,
                                                  objects: list[dict[str, Any]]) -> None:
    kube.fail_next("PATCH", r"/virtualservices/", 503, times=10, message="etcdserver: leader changed")
    with pytest.raises(SinkError, match="etcdserver: leader changed"):
        sink.apply(objects)


def test_an_admission_refusal_carries_the_api_servers_text(kube: FakeKube, sink: KubernetesSink,
                                                           objects: list[dict[str, Any]]) -> None:
    kube.deny_admission(r"/destinationrules/", "configuration is invalid: subset name is reserved")
    with pytest.raises(SinkError) as err:
        sink.apply(objects)
    text = str(err.value)
    assert text.startswith("DestinationRule bookinfo/")
    assert 'admission webhook "validation.istio.io" denied the request: configuration is invalid' in text


def test_a_corrupt_inventory_stops_everything(kube: FakeKube, sink: KubernetesSink,
                                              objects: list[dict[str, Any]]) -> None:
    sink.apply(objects)
    cm = live(kube, {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": f"meshfleet-inventory-{CLUSTER}", "namespace": "istio-system"}})
    assert cm is not None
    cm["data"]["objects"] = "{not json"
    kube.put(cm, manager="kubectl")
    kube.clear_requests()
    with pytest.raises(SinkError, match="is corrupt"):
        sink.apply(objects[:1])
    assert kube.writes() == []


def test_held_objects_stay_in_the_cluster_and_the_inventory_until_hold_lets_go(
        kube: FakeKube, sink: KubernetesSink, objects: list[dict[str, Any]]) -> None:
    sink.apply(objects)
    dropped = [o for o in objects if o["metadata"]["name"] == "ratings-global"]
    keep = [o for o in objects if o not in dropped]
    assert dropped and keep
    before = {sink.key(o): live(kube, o) for o in dropped}
    kube.clear_requests()
    asked: list[str] = []

    def keep_all(key: str) -> bool:
        asked.append(key)
        return True

    result = sink.apply(keep, hold=keep_all)

    assert sorted(asked) == sorted(sink.key(o) for o in dropped)
    assert sorted(result.held) == sorted(asked) and result.pruned == 0
    assert {sink.key(o): live(kube, o) for o in dropped} == before  # untouched
    assert not [r for r in kube.writes() if r.verb == "delete"]
    assert len(sink.inventory()) == len(objects)
    assert kube.writes() == []  # the inventory already listed them: nothing to write at all

    result = sink.apply(keep, hold=lambda key: False)
    assert result.pruned == len(dropped) and result.held == ()
    assert all(live(kube, o) is None for o in dropped)
    assert len(sink.inventory()) == len(keep)


def test_holds_accepts_owned_held_objects_besides_the_rendered_ones(
        kube: FakeKube, sink: KubernetesSink, objects: list[dict[str, Any]]) -> None:
    sink.apply(objects)
    sink.apply(objects[1:], hold=lambda key: True)
    assert not sink.holds(objects[1:])
    assert sink.holds(objects[1:], extra=[sink.key(objects[0])])
    assert sink.key(objects[0]) == f"{objects[0]['kind']} {objects[0]['metadata']['namespace']}/" \
                                   f"{objects[0]['metadata']['name']}"
