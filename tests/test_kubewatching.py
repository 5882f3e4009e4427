"""The hub's CR source against a fake API server: list+watch, 410 recovery, and policies reaching agents."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import CustomObjectsApi

from meshfleet.crdschemas import CRDSchemas
from meshfleet.demo import EXAMPLES, Fleet, demo_clusters
from mgmt.kubewatching import KubePolicySource, ResourceWatch, WatchSettings
from mgmt.statuswriting import PolicyStatusWriter
from tests.fakekube import FakeKube
from tests.fleets import run, until

CRDS = Path(__file__).resolve().parents[1] / "crds"
FAST = WatchSettings(resync=30.0, watch_timeout=1, backoff_initial=0.01, backoff_max=0.05)


def policy(name: str, east: int, west: int, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "meshfleet.io/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": name, "namespace": "bookinfo"},
            "spec": {"destination": {"service": "reviews"},
                     "route": [{"cluster": "us-east-1", "weight": east}, {"cluster": "eu-west-1", "weight": west}],
                     **spec}}


@pytest.fixture
def hub_cluster() -> Iterator[FakeKube]:
    schemas = CRDSchemas.from_documents(
        d for p in sorted(CRDS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()))
    with FakeKube(crds=schemas) as fake:
        yield fake


def apply(kube: FakeKube, obj: dict[str, Any]) -> None:
    with kube.api_client() as api:
        CustomObjectsApi(api).patch_namespaced_custom_object(
            "meshfleet.io", "v1alpha1", obj["metadata"]["namespace"], "trafficpolicies", obj["metadata"]["name"],
            obj, field_manager="kubectl", force=True, _content_type="application/apply-patch+yaml")


def wait(condition: Any, within: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(within / 0.02)):
        if condition():
            done.set()
            break
        done.wait(0.02)
    assert done.is_set(), "timed out"


def test_list_then_watch_follows_creates_updates_deletes_and_recovers_from_410(hub_cluster: FakeKube) -> None:
    changes = threading.Event()
    apply(hub_cluster, policy("first", 80, 20))
    with hub_cluster.api_client() as api:
        watch = ResourceWatch(api, "trafficpolicies", changes.set, FAST).start()
        try:
            wait(lambda: ("bookinfo", "first") in watch.objects())
            apply(hub_cluster, policy("second", 50, 50))
            wait(lambda: ("bookinfo", "second") in watch.objects())
            apply(hub_cluster, policy("first", 70, 30))
            wait(lambda: watch.objects()[("bookinfo", "first")]["spec"]["route"][0]["weight"] == 70)
            hub_cluster.delete("meshfleet.io/v1alpha1", "TrafficPolicy", "second", "bookinfo")
            wait(lambda: ("bookinfo", "second") not in watch.objects())
            assert changes.is_set()
            lists = watch.lists
            hub_cluster.compact()  # the open watch expires: 410 Gone
            apply(hub_cluster, policy("third", 10, 90))
            wait(lambda: ("bookinfo", "third") in watch.objects() and watch.lists > lists)
            assert set(watch.objects()) == {("bookinfo", "first"), ("bookinfo", "third")}
        finally:
            watch.stop()
    assert not watch._thread.is_alive()


def test_policy_source_reports_a_resource_it_cannot_use_and_keeps_the_others(hub_cluster: FakeKube) -> None:
    apply(hub_cluster, policy("good", 80, 20))
    apply(hub_cluster, {**policy("later", 80, 20), "spec": {
        "destination": {"service": "reviews"},
        "http": [{"name": "all", "route": [{"cluster": "us-east-1", "weight": 100}]}]}})
    with hub_cluster.api_client() as api:
        watch = ResourceWatch(api, "trafficpolicies", lambda: None, FAST).start()
        try:
            source = KubePolicySource(watch)
            wait(lambda: watch.synced.is_set())
            assert source.scan()
            assert [p.key for p in source.policies] == ["bookinfo/good"]
            assert [str(e) for e in source.errors] == [
                "TrafficPolicy bookinfo/later:0: spec.http is not supported by this hub version yet"]
            assert not source.scan()
        finally:
            watch.stop()


def test_a_cr_applied_on_the_hub_cluster_reaches_every_agent_and_its_deletion_prunes(
        tmp_path: Path, hub_cluster: FakeKube) -> None:
    async def scenario() -> None:
        with hub_cluster.api_client() as api:
            watch = ResourceWatch(api, "trafficpolicies", lambda: fleet.hub.policy_changed(), FAST)
            fleet = Fleet(tmp_path, demo_clusters(3, tmp_path), None, heartbeat=0.5, grace=3,
                          source=KubePolicySource(watch))
            await fleet.start()
            watch.start()
            try:
                assert await fleet.wait_converged(20)
                apply(hub_cluster, policy("reviews-split", 80, 20))
                paths = [fleet.output(c.name) / "bookinfo" / "virtualservice-reviews-global.yaml"
                         for c in fleet.clusters]
                await until(lambda: all(p.exists() for p in paths), within=15, what="the VS in every cluster")
                assert await fleet.wait_converged(10)
                apply(hub_cluster, policy("reviews-split", 60, 40))
                await until(lambda: all("weight: 60" in p.read_text() for p in paths), within=15, what="update")
                hub_cluster.delete("meshfleet.io/v1alpha1", "TrafficPolicy", "reviews-split", "bookinfo")
                await until(lambda: not any(p.exists() for p in paths), within=15, what="pruning")
            finally:
                await asyncio.to_thread(watch.stop)
                await fleet.stop()
    run(scenario())


def test_examples_policies_are_valid_resources(hub_cluster: FakeKube) -> None:
    for path in sorted((EXAMPLES / "policies").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            apply(hub_cluster, doc)
    assert len(hub_cluster.objects("meshfleet.io/v1alpha1", "TrafficPolicy")) == 3


def test_status_shows_every_cluster_applied_a_nack_and_an_invalid_resource(
        tmp_path: Path, hub_cluster: FakeKube) -> None:
    async def scenario() -> None:
        with hub_cluster.api_client() as api:
            watch = ResourceWatch(api, "trafficpolicies", lambda: fleet.hub.policy_changed(), FAST)
            source = KubePolicySource(watch)
            fleet = Fleet(tmp_path, demo_clusters(3, tmp_path), None, heartbeat=0.5, grace=3, source=source)
            # ap-south-1 holds a hand-written file where its VirtualService would go: its agent NACKs
            theirs = fleet.output("ap-south-1") / "bookinfo" / "virtualservice-reviews-global.yaml"
            theirs.parent.mkdir(parents=True)
            theirs.write_text("# not meshfleet's\n")
            writer = PolicyStatusWriter(fleet.hub, source, api, interval=0.1)
            await fleet.start()
            watch.start()
            task = asyncio.create_task(writer.run())
            try:
                apply(hub_cluster, policy("reviews-split", 80, 20))
                apply(hub_cluster, {**policy("fancy", 80, 20), "spec": {
                    "destination": {"service": "ratings"},
                    "http": [{"name": "all", "route": [{"cluster": "us-east-1", "weight": 100}]}]}})

                def status(name: str) -> dict[str, Any]:
                    obj = hub_cluster.get("meshfleet.io/v1alpha1", "TrafficPolicy", name, "bookinfo")
                    return (obj or {}).get("status") or {}

                def states() -> dict[str, str]:
                    return {c["cluster"]: c["state"] for c in status("reviews-split").get("clusters", [])}

                await until(lambda: states() == {"us-east-1": "Applied", "eu-west-1": "Applied",
                                                 "ap-south-1": "Rejected"}, within=20, what="per-cluster states")
                st = status("reviews-split")
                rejected = next(c for c in st["clusters"] if c["cluster"] == "ap-south-1")
                assert "refusing to overwrite" in rejected["message"]
                ready = next(c for c in st["conditions"] if c["type"] == "Ready")
                assert (ready["status"], ready["reason"]) == ("False", "Rejected")
                await until(lambda: bool(status("fancy").get("conditions")), within=5, what="status of fancy")
                accepted = next(c for c in status("fancy")["conditions"] if c["type"] == "Accepted")
                assert (accepted["status"], accepted["message"]) == (
                    "False", "spec.http is not supported by this hub version yet")
                # fixed: the file goes, the agent applies on the hub's retry, the status follows
                theirs.unlink()
                await until(lambda: set(states().values()) == {"Applied"}, within=20, what="all Applied")
                await until(lambda: next(c for c in status("reviews-split")["conditions"]
                                         if c["type"] == "Ready")["status"] == "True", within=5, what="Ready")
                # nothing changes any more: several flush rounds write nothing
                await asyncio.sleep(0.3)  # the write that made Ready True returns to the writer
                hub_cluster.clear_requests()
                await asyncio.sleep(0.6)
                assert [r for r in hub_cluster.writes() if r.subresource == "status"] == []
            finally:
                task.cancel()
                await asyncio.to_thread(watch.stop)
                await fleet.stop()
    run(scenario())
