"""The hub's CR source against a fake API server: list+watch, 410 recovery, every kind (the cluster-scoped
TrustPolicy too), and policies reaching agents."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import CustomObjectsApi

from meshfleet.crdschemas import CRDSchemas
from meshfleet.demo import EXAMPLES, Fleet, demo_clusters
from mgmt.kubewatching import PLURALS, KubePolicySource, ResourceWatch, WatchSettings
from mgmt.model import FailoverPolicy, Resources, TrustPolicy
from mgmt.policies import CLUSTER_SCOPED, KINDS
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
    """kubectl apply: at /apis/<group>/<version>/<plural>/<name> for a cluster-scoped kind, else in its namespace."""
    plural, name = PLURALS[obj["kind"]], obj["metadata"]["name"]
    options: dict[str, Any] = {"field_manager": "kubectl", "force": True,
                               "_content_type": "application/apply-patch+yaml"}
    with kube.api_client() as api:
        custom = CustomObjectsApi(api)
        if obj["kind"] in CLUSTER_SCOPED:
            custom.patch_cluster_custom_object("meshfleet.io", "v1alpha1", plural, name, obj, **options)
        else:
            custom.patch_namespaced_custom_object("meshfleet.io", "v1alpha1", obj["metadata"]["namespace"], plural,
                                                  name, obj, **options)


def example_resources() -> list[dict[str, Any]]:
    """Every document of examples/crs the source watches (MeshClusters are the registry's, not policies)."""
    return [d for p in sorted((EXAMPLES / "crs").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
            if d["kind"] in KINDS]


def counts(resources: Resources) -> list[int]:
    return [len(resources.services), len(resources.traffic), len(resources.failover), len(resources.access),
            len(resources.trust)]


@pytest.fixture
def source(hub_cluster: FakeKube) -> Iterator[KubePolicySource]:
    """A source over the fake hub cluster, not started; stopped at the end."""
    with hub_cluster.api_client() as api:
        src = KubePolicySource.for_api(api, settings=FAST)
        try:
            yield src
        finally:
            src.stop()


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


def test_policy_source_reports_a_resource_it_cannot_use_and_keeps_the_others(
        hub_cluster: FakeKube, source: KubePolicySource) -> None:
    apply(hub_cluster, policy("good", 80, 20))
    # valid for the CRD (header names are free-form there), refused by the hub, which renders them
    apply(hub_cluster, {**policy("later", 80, 20), "spec": {
        "destination": {"service": "reviews"},
        "http": [{"name": "all", "match": [{"headers": {"x user": {"exact": "a"}}}],
                  "route": [{"cluster": "us-east-1", "weight": 100}]}]}})
    source.start()
    wait(source.synced)
    assert source.scan()
    assert [p.meta.key for p in source.resources.all()] == ["TrafficPolicy/bookinfo/good"]
    assert [str(e) for e in source.errors] == [
        "TrafficPolicy bookinfo/later:0: spec.http[0].match[0].headers.x user: 'x user' is not a valid header name"]
    assert not source.scan()


def test_every_kind_appears_in_resources_and_a_deleted_one_disappears(
        hub_cluster: FakeKube, source: KubePolicySource) -> None:
    changes = threading.Event()
    source.on_change = changes.set
    for doc in example_resources():
        apply(hub_cluster, doc)
    source.start()
    wait(lambda: source.synced() and changes.is_set())
    assert source.scan()
    assert source.errors == ()
    assert counts(source.resources) == [4, 2, 2, 5, 1]
    assert set(source.objects()) == {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
                                     for d in example_resources()}
    canary = next(t for t in source.resources.traffic if t.meta.name == "reviews-canary")
    live = hub_cluster.get("meshfleet.io/v1alpha1", "TrafficPolicy", "reviews-canary", "bookinfo")
    assert live is not None
    assert (canary.meta.source, canary.meta.created, canary.meta.generation) == (
        "TrafficPolicy bookinfo/reviews-canary", live["metadata"]["creationTimestamp"], 1)

    hub_cluster.delete("meshfleet.io/v1alpha1", "MulticlusterService", "ratings", "bookinfo")
    hub_cluster.delete("meshfleet.io/v1alpha1", "AccessPolicy", "deny-sandbox", "bookinfo")
    hub_cluster.delete("meshfleet.io/v1alpha1", "TrustPolicy", "mesh")
    wait(lambda: ("AccessPolicy", "bookinfo", "deny-sandbox") not in source.objects()
         and ("MulticlusterService", "bookinfo", "ratings") not in source.objects()
         and ("TrustPolicy", "", "mesh") not in source.objects())
    assert source.scan()
    assert counts(source.resources) == [3, 2, 2, 4, 0]
    assert "ratings" not in [s.meta.name for s in source.resources.services]
    assert "deny-sandbox" not in [a.meta.name for a in source.resources.access]

    fp = next(d for d in example_resources() if d["metadata"]["name"] == "reviews-topology")
    apply(hub_cluster, {**fp, "spec": {**fp["spec"], "holdDown": "10m"}})

    def topology() -> FailoverPolicy:
        source.scan()
        return next(f for f in source.resources.failover if f.meta.name == "reviews-topology")

    wait(lambda: topology().hold_down == "10m")
    assert topology().meta.generation == 2


def test_a_semantic_error_reaches_errors_and_its_fix_reaches_resources(
        hub_cluster: FakeKube, source: KubePolicySource) -> None:
    mcs = {"apiVersion": "meshfleet.io/v1alpha1", "kind": "MulticlusterService",
           "metadata": {"name": "reviews", "namespace": "bookinfo"},
           "spec": {"backends": {"clusterSelector": {"matchLabels": {"not a key": "prod"}}}}}
    apply(hub_cluster, mcs)  # label keys are not checked by the CRD
    apply(hub_cluster, policy("good", 80, 20))
    source.start()
    wait(source.synced)
    source.scan()
    assert counts(source.resources) == [0, 1, 0, 0, 0]
    [error] = source.errors
    assert (error.file, error.line) == ("MulticlusterService bookinfo/reviews", 0)
    assert error.message.startswith("spec.backends.clusterSelector.matchLabels: label key 'not a key'")

    apply(hub_cluster, {**mcs, "spec": {"backends": {"clusterSelector": {"matchLabels": {"env": "prod"}}}}})
    wait(lambda: source.scan() and not source.errors)
    assert counts(source.resources) == [1, 1, 0, 0, 0]


def test_nothing_is_published_until_every_kind_is_listed(hub_cluster: FakeKube, source: KubePolicySource) -> None:
    for doc in example_resources():
        apply(hub_cluster, doc)
    late = source.watches["MulticlusterService"]
    for kind, w in source.watches.items():
        if kind != "MulticlusterService":
            w.start()
    wait(lambda: all(w.synced.is_set() for w in source.watches.values() if w is not late))
    # the TrafficPolicies name MulticlusterServices: without them they would be refused, or worse, routed nowhere
    assert not source.synced()
    assert source.scan() is False
    assert (source.resources, source.errors) == (Resources(), ())

    late.start()
    wait(source.synced)
    assert source.scan() is True
    assert counts(source.resources) == [4, 2, 2, 5, 1]


def test_a_kind_that_cannot_be_listed_is_reported(hub_cluster: FakeKube) -> None:
    with hub_cluster.api_client() as api:
        watches = {kind: ResourceWatch(api, plural, lambda: None, FAST) for kind, plural in PLURALS.items()}
        # as when the AccessPolicy CRD is not installed: every list answers 404
        watches["AccessPolicy"] = ResourceWatch(api, "accesspolicies", lambda: None, FAST, group="missing.example")
        source = KubePolicySource(watches).start()
        try:
            wait(lambda: bool(watches["AccessPolicy"].last_error) and all(
                w.synced.is_set() for k, w in watches.items() if k != "AccessPolicy"))
            assert source.scan() is True
            assert source.resources == Resources()
            [error] = source.errors
            assert (error.file, error.line) == ("AccessPolicy resources", 0)
            assert error.message.startswith("cannot list accesspolicies.missing.example (404 ")
            assert error.message.endswith("no resource is used until every kind is listed")
        finally:
            source.stop()
    assert not any(w._thread.is_alive() for w in watches.values())


def test_the_source_watches_every_policy_kind_and_checks_what_it_is_given(hub_cluster: FakeKube) -> None:
    assert tuple(PLURALS) == KINDS
    assert PLURALS["TrustPolicy"] == "trustpolicies"
    with hub_cluster.api_client() as api:
        source = KubePolicySource.for_api(api)
        assert {k: w.plural for k, w in source.watches.items()} == PLURALS
        nudged: list[str] = []
        source.on_change = lambda: nudged.append("x")
        for w in source.watches.values():
            w.on_change()
        assert nudged == ["x"] * len(PLURALS)
        assert source.last_good() == {}
        with pytest.raises(ValueError, match="a TrafficPolicy watch must watch trafficpolicies, not accesspolicies"):
            KubePolicySource({"TrafficPolicy": ResourceWatch(api, "accesspolicies", lambda: None)})
        with pytest.raises(ValueError, match="at least one watch"):
            KubePolicySource({})


def test_stop_ends_every_watch_together(hub_cluster: FakeKube, source: KubePolicySource) -> None:
    slow = WatchSettings(watch_timeout=60)  # each watch blocks in its request until an event or the stop
    for w in source.watches.values():
        w.settings = slow
    source.start()
    wait(source.synced)
    hub_cluster.wait_for_watches(len(source.watches))
    started = time.monotonic()
    source.stop(timeout=10)
    assert not any(w._thread.is_alive() for w in source.watches.values())
    assert time.monotonic() - started < 5  # not the watches' 60 s request timeout


def test_a_cr_applied_on_the_hub_cluster_reaches_every_agent_and_its_deletion_prunes(
        tmp_path: Path, hub_cluster: FakeKube) -> None:
    async def scenario() -> None:
        with hub_cluster.api_client() as api:
            source = KubePolicySource.for_api(api, settings=FAST)
            fleet = Fleet(tmp_path, demo_clusters(3, tmp_path), None, heartbeat=0.5, grace=3, source=source)
            source.on_change = fleet.hub.policy_changed
            await fleet.start()
            source.start()
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
                await asyncio.to_thread(source.stop)
                await fleet.stop()
    run(scenario())


def test_examples_policies_are_valid_resources(hub_cluster: FakeKube) -> None:
    for path in sorted((EXAMPLES / "policies").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            apply(hub_cluster, doc)
    assert len(hub_cluster.objects("meshfleet.io/v1alpha1", "TrafficPolicy")) == 3
    assert [o["metadata"]["name"] for o in hub_cluster.objects("meshfleet.io/v1alpha1", "TrustPolicy")] == ["mesh"]


def trust_policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "meshfleet.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": name},
            "spec": {"root": {"generate": {}}, **spec}}


def test_trust_policies_are_listed_and_watched_cluster_wide(hub_cluster: FakeKube, source: KubePolicySource) -> None:
    apply(hub_cluster, trust_policy("mesh", rotation={"gracePeriod": "1h"}))
    source.start()
    wait(source.synced)
    assert source.scan()
    [mesh] = source.resources.trust
    live = hub_cluster.get("meshfleet.io/v1alpha1", "TrustPolicy", "mesh")
    assert live is not None
    assert mesh == TrustPolicy(mesh.meta, grace_period=3600.0)  # every other field the CRD's default
    assert (mesh.meta.namespace, mesh.meta.source, mesh.meta.created, mesh.meta.generation) == (
        "", "TrustPolicy mesh", live["metadata"]["creationTimestamp"], 1)
    assert source.resources.all() == ()  # translation does not read trust
    # a cluster-scoped kind is listed and watched at /apis/<group>/<version>/<plural>, in no namespace
    assert hub_cluster.wait_for_watches(len(source.watches))
    reads = [r for r in hub_cluster.requests if r.resource == "trustpolicies" and r.verb in ("list", "watch")]
    assert {r.verb for r in reads} == {"list", "watch"}
    assert {(r.path, r.namespace) for r in reads} == {("/apis/meshfleet.io/v1alpha1/trustpolicies", None)}

    # a second one is no error here (the trust manager reports it); one the hub refuses is reported by name
    apply(hub_cluster, trust_policy("backup", root={"files": {"certificate": "/etc/root/ca.crt",
                                                              "key": "/etc/root/ca.key"}}))
    # the CRD's ttl-vs-validity rule needs the API server's defaulting, which the fake lacks: put bypasses it
    hub_cluster.put(trust_policy("broken", intermediate={"ttl": "100000h"}))
    wait(lambda: source.scan() and len(source.resources.trust) == 2 and len(source.errors) == 1)
    assert [t.meta.name for t in source.resources.trust] == ["backup", "mesh"]
    assert [str(e) for e in source.errors] == [
        "TrustPolicy broken:0: spec.intermediate.ttl: intermediate.ttl must be shorter than root.generate.validity"
        " (100000h is not shorter than 87600h)"]

    apply(hub_cluster, trust_policy("mesh", rotation={"gracePeriod": "2h"}))
    wait(lambda: source.scan() and source.resources.trust[1].grace_period == 7200.0)
    assert source.resources.trust[1].meta.generation == 2
    for name in ("backup", "broken"):
        hub_cluster.delete("meshfleet.io/v1alpha1", "TrustPolicy", name)
    wait(lambda: source.scan() and len(source.resources.trust) == 1 and not source.errors)


def test_status_shows_every_cluster_applied_a_nack_and_an_invalid_resource(
        tmp_path: Path, hub_cluster: FakeKube) -> None:
    async def scenario() -> None:
        with hub_cluster.api_client() as api:
            source = KubePolicySource.for_api(api, settings=FAST)
            fleet = Fleet(tmp_path, demo_clusters(3, tmp_path), None, heartbeat=0.5, grace=3, source=source)
            source.on_change = fleet.hub.policy_changed
            # ap-south-1 holds a hand-written file where its VirtualService would go: its agent NACKs
            theirs = fleet.output("ap-south-1") / "bookinfo" / "virtualservice-reviews-global.yaml"
            theirs.parent.mkdir(parents=True)
            theirs.write_text("# not meshfleet's\n")
            writer = PolicyStatusWriter(fleet.hub, source, api, interval=0.1)
            await fleet.start()
            source.start()
            task = asyncio.create_task(writer.run())
            try:
                apply(hub_cluster, policy("reviews-split", 80, 20))
                apply(hub_cluster, {**policy("fancy", 80, 20), "spec": {
                    "destination": {"service": "ratings"},
                    "http": [{"name": "all", "match": [{"headers": {"x user": {"exact": "a"}}}],
                              "route": [{"cluster": "us-east-1", "weight": 100}]}]}})
                apply(hub_cluster, {**policy("dangling", 80, 20), "spec": {
                    "destination": {"multiclusterService": "nope"},
                    "route": [{"cluster": "us-east-1", "weight": 100}]}})

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
                    "False", "spec.http[0].match[0].headers.x user: 'x user' is not a valid header name")
                # valid, but naming what does not exist: accepted, unresolved, applied nowhere
                await until(lambda: len(status("dangling").get("conditions", [])) == 3, within=5, what="dangling")
                conditions = {c["type"]: c for c in status("dangling")["conditions"]}
                assert conditions["Accepted"]["status"] == "True"
                assert (conditions["ResolvedRefs"]["status"], conditions["ResolvedRefs"]["message"]) == (
                    "False", "MulticlusterService bookinfo/nope does not exist (or is not applied)")
                assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "NotApplied")
                assert status("dangling")["clusters"] == []
                # fixed: the file goes, the agent applies on the hub's retry, the status follows
                theirs.unlink()
                await until(lambda: set(states().values()) == {"Applied"}, within=20, what="all Applied")
                await until(lambda: next(c for c in status("reviews-split")["conditions"]
                                         if c["type"] == "Ready")["status"] == "True", within=5, what="Ready")
                # nothing changes any more: several flush rounds write nothing
                await asyncio.sleep(0.3)  # the write that made Ready True returns to the writer
                hub_cluster.clear_requests()
                rounds = writer.rounds
                await asyncio.sleep(0.6)
                assert [r for r in hub_cluster.writes() if r.subresource == "status"] == []
                # and, heartbeats going on, no round even recomputes the statuses
                assert writer.rounds == rounds
            finally:
                task.cancel()
                await asyncio.to_thread(source.stop)
                await fleet.stop()
    run(scenario())
