"""MeshCluster resources as the source of clusters, and their status: pure cores, the registry adapter,
and both against a fake API server running the real `kubernetes` client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from kubernetes.client import CustomObjectsApi

from meshfleet.crdschemas import CRDSchemas
from meshfleet.demo import EXAMPLES
from mgmt.enrollment import issue_token
from mgmt.kubewatching import WatchSettings
from mgmt.meshclusters import (
    Action,
    ClusterView,
    MeshClusterSource,
    MeshClusterStatusWriter,
    MeshClusterSync,
    needs_write,
    parse_meshcluster,
    plan,
    status_patch,
)
from mgmt.meshclusters import meshcluster_status as status_of
from mgmt.model import Discovery
from mgmt.registry import ORIGIN_CLI, ORIGIN_MESHCLUSTER, ClusterRecord, ClusterStatus, Registry
from mgmt.rotation import CaFacts
from tests.fakekube import DEFAULT_KINDS, FakeKube

if TYPE_CHECKING:
    from mgmt.meshclusters import ClusterHub
    from mgmt.serving import Hub

    def _the_real_hub_fits(hub: Hub) -> ClusterHub:
        return hub  # mypy checks that the hub still offers what the writer and the manager read

ROOT = Path(__file__).resolve().parents[1]
FAST = WatchSettings(resync=30.0, watch_timeout=1, backoff_initial=0.01, backoff_max=0.05)
GROUP, VERSION, PLURAL = "meshfleet.io", "v1alpha1", "meshclusters"
V1 = "meshfleet.io/v1alpha1"
A, B = "a" * 64, "b" * 64
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def mc(name: str, region: str = "us-east", zone: str = "us-east-1a", network: str = "n1",
       labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "MeshCluster",
            "metadata": {"name": name, **({"labels": labels} if labels is not None else {})},
            "spec": {"region": region, "zone": zone, "network": network, **spec}}


def rec(name: str, origin: str = ORIGIN_MESHCLUSTER, region: str = "us-east", zone: str = "us-east-1a",
        network: str = "n1", labels: dict[str, str] | None = None, **more: Any) -> ClusterRecord:
    return ClusterRecord(name, region, zone, network, 1.0, labels=labels or {}, origin=origin, **more)


# ---------------------------------------------------------------------------------------------
# plan (pure)


@pytest.mark.parametrize("records, resources, actions, errors, unmanaged", [
    pytest.param([], [mc("east", labels={"env": "prod"})], [("add", "east", False)], {}, [], id="add"),
    pytest.param([rec("east", labels={"env": "prod"})], [mc("east", labels={"env": "prod"})], [], {}, [],
                 id="unchanged-nothing-to-do"),
    pytest.param([rec("east", labels={"env": "dev"})], [mc("east", labels={"env": "prod"})],
                 [("update", "east", False)], {}, [], id="update-labels"),
    pytest.param([rec("east")], [mc("east", zone="us-east-1b")], [("update", "east", False)], {}, [],
                 id="update-topology"),
    pytest.param([rec("east"), rec("west")], [mc("west")], [("remove", "east", False)], {}, [],
                 id="remove-managed-without-resource"),
    pytest.param([rec("legacy", ORIGIN_CLI)], [mc("east")], [("add", "east", False)], {}, ["legacy"],
                 id="leave-cli-added-alone"),
    pytest.param([rec("legacy", ORIGIN_CLI, zone="old")], [mc("legacy")], [("update", "legacy", True)], {}, [],
                 id="adopt-cli-added-of-the-same-name"),
    pytest.param([rec("legacy", ORIGIN_CLI)], [mc("legacy")], [("update", "legacy", True)], {}, [],
                 id="adopt-even-when-identical"),
    pytest.param([], [mc("East_1")], [], {"East_1": "metadata.name"}, [], id="invalid-name"),
    pytest.param([rec("east")], [mc("east", region="us/east")], [], {"east": "spec.region"}, [],
                 id="invalid-spec-keeps-the-cluster"),
    pytest.param([], [mc("east", labels={"bad key": "x"})], [], {"east": "metadata.labels"}, [],
                 id="invalid-label-key"),
    pytest.param([], [mc("east", gateway={"address": "gw.example", "port": 70000})], [],
                 {"east": "spec.gateway.port"}, [], id="invalid-gateway-port"),
    pytest.param([], [{"apiVersion": V1, "kind": "MeshCluster", "metadata": {"name": "east"}}], [],
                 {"east": "spec: required"}, [], id="missing-spec"),
    pytest.param([rec("b"), rec("a", ORIGIN_CLI)], [mc("c"), mc("a"), mc("d")],
                 [("remove", "b", False), ("add", "c", False), ("add", "d", False), ("update", "a", True)], {}, [],
                 id="removals-then-additions-then-updates"),
])
def test_plan(records: list[ClusterRecord], resources: list[dict[str, Any]], actions: list[tuple[str, str, bool]],
              errors: dict[str, str], unmanaged: list[str]) -> None:
    got = plan({r.name: r for r in records}, resources)
    assert [(a.verb, a.name, a.adopt) for a in got.actions] == actions
    assert set(got.errors) == set(errors)
    for name, fragment in errors.items():
        assert fragment in got.errors[name]
    assert list(got.unmanaged) == unmanaged


def test_parse_takes_labels_and_gateway_with_its_default_port() -> None:
    spec = parse_meshcluster(mc("east", labels={"env": "prod"}, gateway={"address": "gw.example"}))
    assert (spec.name, spec.region, spec.zone, spec.network) == ("east", "us-east", "us-east-1a", "n1")
    assert (dict(spec.labels), spec.gateway) == ({"env": "prod"}, ("gw.example", 15443))


def test_every_example_resource_is_valid() -> None:
    got = plan({}, yaml.safe_load_all((ROOT / "examples" / "crs" / "meshclusters.yaml").read_text()))
    assert not got.errors
    assert [a.name for a in got.actions] == ["ap-south-1", "eu-west-1", "us-east-1"]


# ---------------------------------------------------------------------------------------------
# MeshClusterSync against a real registry


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(tmp_path / "hub")
    yield registry
    registry.close()


def test_sync_adds_updates_and_removes_only_what_it_manages(registry: Registry) -> None:
    registry.add_cluster("legacy", "r", "z", "n", 1.0)
    sync = MeshClusterSync(registry, now=lambda: 5.0)
    done = sync.apply([mc("east", labels={"env": "prod"}), mc("west", "eu-west", "eu-west-1a", "n2")])
    assert [(a.verb, a.name) for a in done.actions] == [("add", "east"), ("add", "west")]
    assert done.unmanaged == ("legacy",)
    east = registry.cluster("east")
    assert east == ClusterRecord("east", "us-east", "us-east-1a", "n1", 5.0, labels={"env": "prod"},
                                 origin=ORIGIN_MESHCLUSTER)
    assert sync.apply([mc("east", labels={"env": "prod"}), mc("west", "eu-west", "eu-west-1a", "n2")]).actions == ()

    registry._db.execute("UPDATE clusters SET cert_fingerprint='ab', cert_not_after=99.0, registered_at=3.0"
                         " WHERE name='east'")
    sync.apply([mc("east", zone="us-east-1c", labels={"env": "prod", "tier": "edge"})])
    east = registry.cluster("east")
    assert east is not None
    assert (east.zone, dict(east.labels), east.created_at, east.cert_fingerprint) == (
        "us-east-1c", {"env": "prod", "tier": "edge"}, 5.0, "ab")  # updated in place: the identity stays
    assert set(registry.clusters()) == {"east", "legacy"}  # west's resource is gone, the CLI-added one stays

    assert sync.apply([]).actions == (Action("remove", "east"),)
    assert set(registry.clusters()) == {"legacy"}


def test_sync_reports_invalid_resources_until_fixed(registry: Registry) -> None:
    sync = MeshClusterSync(registry)
    sync.apply([mc("east")])
    sync.apply([mc("east", network="bad/net"), mc("Bad")])
    assert set(sync.errors()) == {"east", "Bad"}
    east = registry.cluster("east")
    assert east is not None and east.network == "n1"  # the last valid topology stays
    sync.apply([mc("east", network="n7")])
    assert sync.errors() == {}
    assert registry.clusters()["east"].network == "n7"


def test_a_join_token_can_be_issued_for_a_cluster_a_meshcluster_created(tmp_path: Path, registry: Registry) -> None:
    MeshClusterSync(registry).apply([mc("east")])
    issued = issue_token(registry, tmp_path / "hub", "east")
    registry.peek_token(issued.token.credential, "east", time.time())  # raises if the token were refused


# ---------------------------------------------------------------------------------------------
# status (pure)

REGISTERED: dict[str, Any] = {"cert_fingerprint": "ab", "cert_not_after": T0 + 86400, "registered_at": T0 - 60}


@pytest.mark.parametrize("view, error, gateway, expect, conditions", [
    pytest.param(ClusterView(rec("east")), "", None, {"connection": "Pending"},
                 {"Accepted": "True", "Registered": "AwaitingJoin", "Connected": "Pending", "InSync": "NoIntent",
                  "Ready": "AwaitingJoin"}, id="created-not-joined"),
    pytest.param(ClusterView(rec("east", **REGISTERED),
                             ClusterStatus("east", "Connected", "0.3.0", T0 - 2, acked_version=A, desired_version=A),
                             ("10.0.0.7", 15443)), "", None,
                 {"connection": "Connected", "agentVersion": "0.3.0", "lastHeartbeat": "2023-11-14T22:13:18Z",
                  "desiredVersion": A, "ackedVersion": A, "ackedVersionShort": A[:12],
                  "gatewayAddress": "10.0.0.7:15443", "agentCertificateExpiry": "2023-11-15T22:13:20Z"},
                 {"Accepted": "True", "Registered": "True", "Connected": "True", "InSync": "True", "Ready": "True"},
                 id="connected-in-sync"),
    pytest.param(ClusterView(rec("east", **REGISTERED),
                             ClusterStatus("east", "Connected", "0.3.0", T0, acked_version=A, desired_version=B,
                                           nack_version=B, nack_error="no CRD", nack_at=T0 - 1)), "", None,
                 {"lastNack": {"version": B, "message": "no CRD", "time": "2023-11-14T22:13:19Z"}},
                 {"InSync": "Rejected", "Ready": "Rejected"}, id="nacked"),
    pytest.param(ClusterView(rec("east", **REGISTERED), ClusterStatus("east", "Unreachable", "0.3.0", T0 - 99,
                                                                   acked_version=A, desired_version=B)),
                 "", None, {"connection": "Unreachable"},
                 {"Connected": "Unreachable", "InSync": "Pending", "Ready": "Unreachable"}, id="unreachable"),
    pytest.param(ClusterView(rec("east", cert_fingerprint="ab", cert_not_after=T0 - 1, registered_at=T0 - 99)),
                 "", None, {"agentCertificateExpiry": "2023-11-14T22:13:19Z"},
                 {"Registered": "CertificateExpired"}, id="certificate-expired"),
    pytest.param(ClusterView(None), "metadata.name: 'East' is not a DNS-1123 label", None, {},
                 {"Accepted": "Invalid", "Registered": "NotRegistered", "Ready": "Invalid"}, id="invalid"),
    pytest.param(ClusterView(rec("east"), None, ("10.0.0.7", 15443)), "", ("gw.example", 443),
                 {"gatewayAddress": "gw.example:443"}, {}, id="spec-gateway-overrides-discovery"),
    pytest.param(ClusterView(rec("east"), None, ("fd00::7", 15443)), "", None,
                 {"gatewayAddress": "[fd00::7]:15443"}, {}, id="ipv6-gateway-in-brackets"),
])
def test_meshcluster_status(view: ClusterView, error: str, gateway: tuple[str, int] | None, expect: dict[str, Any],
                            conditions: dict[str, str]) -> None:
    status = status_of(None, 3, "east", view, T0, error=error, gateway_override=gateway)
    assert {k: status.get(k) for k in expect} == expect
    got = {c["type"]: c for c in status["conditions"]}
    assert list(got) == ["Accepted", "Registered", "Connected", "InSync", "Ready"]
    for type_, want in conditions.items():  # "True", or the reason of a False one
        assert (got[type_]["status"] if want == "True" else got[type_]["reason"]) == want, got[type_]
        assert want == "True" or got[type_]["status"] == "False"
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] == "2023-11-14T22:13:20Z"
               for c in status["conditions"])
    assert status["observedGeneration"] == 3


def test_lastTransitionTime_moves_only_with_a_conditions_status() -> None:
    pending = ClusterView(rec("east", **REGISTERED), ClusterStatus("east", "Pending"))
    first = status_of(None, 1, "east", pending, T0)
    later = status_of(first, 1, "east", pending, T0 + 30)
    assert later == first
    connected = ClusterView(rec("east", **REGISTERED), ClusterStatus("east", "Connected"))
    moved = {c["type"]: c["lastTransitionTime"] for c in status_of(first, 1, "east", connected, T0 + 60)["conditions"]}
    assert moved["Connected"] == "2023-11-14T22:14:20Z"
    assert moved["Registered"] == "2023-11-14T22:13:20Z"


def beat(status: dict[str, Any], at: str) -> dict[str, Any]:
    return {**status, "lastHeartbeat": at}


BASE = status_of(None, 1, "east", ClusterView(rec("east"), ClusterStatus("east", "Connected", "", T0)), T0)


@pytest.mark.parametrize("live, desired, now, write", [
    pytest.param(BASE, BASE, T0, False, id="identical"),
    pytest.param({**BASE, "conditions": [{**c, "lastTransitionTime": "2020-01-01T00:00:00Z"}
                                         for c in BASE["conditions"]]}, BASE, T0, False,
                 id="only-lastTransitionTime-differs"),
    pytest.param(BASE, {**BASE, "connection": "Unreachable"}, T0, True, id="connection-changed"),
    pytest.param(BASE, beat(BASE, "2023-11-14T22:13:50Z"), T0 + 30, False, id="newer-heartbeat-live-fresh"),
    pytest.param(BASE, beat(BASE, "2023-11-14T22:14:25Z"), T0 + 65, True, id="newer-heartbeat-live-stale"),
    pytest.param({k: v for k, v in BASE.items() if k != "lastHeartbeat"}, BASE, T0, True, id="first-heartbeat"),
    pytest.param(None, BASE, T0, True, id="no-status-yet"),
    pytest.param({**BASE, "clusters": []}, BASE, T0, False, id="fields-owned-by-others-ignored"),
    pytest.param({**BASE, "intermediateCertificateExpiry": "2024-01-01T00:00:00Z"}, BASE, T0, True,
                 id="intermediate-expiry-no-longer-reported"),
])
def test_needs_write(live: dict[str, Any] | None, desired: dict[str, Any], now: float, write: bool) -> None:
    assert needs_write(live, desired, now, heartbeat_refresh=60.0) is write


def test_status_patch_nulls_what_this_writer_no_longer_sets_and_nothing_else() -> None:
    live = {**BASE, "lastNack": {"version": B, "message": "x"}, "clusters": []}
    patch = status_patch(live, BASE)
    assert patch == {**BASE, "lastNack": None}


# ---------------------------------------------------------------------------------------------
# against the fake API server


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    schemas = CRDSchemas.from_documents(
        d for p in sorted((ROOT / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()))
    with FakeKube(crds=schemas) as fake:
        yield fake


def create(kube: FakeKube, obj: dict[str, Any]) -> None:
    with kube.api_client() as api:
        CustomObjectsApi(api).create_cluster_custom_object(GROUP, VERSION, PLURAL, obj)


def wait(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextlib.contextmanager
def watching(kube: FakeKube, registry: Registry, nudge: Callable[[], None] = lambda: None
             ) -> Iterator[MeshClusterSource]:
    """A started source applying to a Registry of its own on `registry`'s file, as the hub gives it."""
    own = Registry(registry.path.parent)
    with kube.api_client() as api:
        source = MeshClusterSource.for_api(api, own, nudge, FAST).start()
        try:
            yield source
        finally:
            source.stop()
            own.close()


def test_meshclusters_on_the_api_server_become_clusters_and_leave_with_their_resource(
        kube: FakeKube, registry: Registry) -> None:
    registry.add_cluster("legacy", "r", "z", "n", 1.0)
    for doc in yaml.safe_load_all((ROOT / "examples" / "crs" / "meshclusters.yaml").read_text()):
        create(kube, doc)
    nudged = threading.Event()
    with watching(kube, registry, nudged.set):
        wait(lambda: len(registry.clusters()) == 4)
        records = registry.clusters()
        assert dict(records["eu-west-1"].labels) == {"env": "prod", "tier": "primary", "region": "eu-west"}
        assert {n: r.origin for n, r in records.items()} == {
            "legacy": ORIGIN_CLI, "us-east-1": ORIGIN_MESHCLUSTER, "eu-west-1": ORIGIN_MESHCLUSTER,
            "ap-south-1": ORIGIN_MESHCLUSTER}
        assert nudged.is_set()

        with kube.api_client() as api:
            CustomObjectsApi(api).patch_cluster_custom_object(
                GROUP, VERSION, PLURAL, "eu-west-1", {"metadata": {"labels": {"tier": "edge"}}},
                _content_type="application/merge-patch+json")
        wait(lambda: registry.clusters()["eu-west-1"].labels.get("tier") == "edge")

        kube.delete(V1, "MeshCluster", "ap-south-1")
        wait(lambda: "ap-south-1" not in registry.clusters())
        assert set(registry.clusters()) == {"legacy", "us-east-1", "eu-west-1"}


def test_a_managed_cluster_whose_resource_went_away_while_the_hub_was_down_is_removed(
        kube: FakeKube, registry: Registry) -> None:
    """The first list is empty, so the watch reports no change: the periodic apply still catches it."""
    registry.add_cluster("gone", "r", "z", "n", 1.0, origin=ORIGIN_MESHCLUSTER)

    async def main(source: MeshClusterSource) -> None:
        task = asyncio.create_task(source.run(interval=0.05))
        try:
            await asyncio.to_thread(wait, lambda: "gone" not in registry.clusters())
        finally:
            task.cancel()

    with watching(kube, registry) as source:
        asyncio.run(asyncio.wait_for(main(source), 10))
    assert registry.clusters() == {}


def test_nothing_is_removed_while_meshclusters_cannot_be_listed(registry: Registry) -> None:
    registry.add_cluster("kept", "r", "z", "n", 1.0, origin=ORIGIN_MESHCLUSTER)
    with FakeKube(kinds=[k for k in DEFAULT_KINDS if k.kind != "MeshCluster"]) as kube, \
            watching(kube, registry) as source:
        wait(lambda: bool(source.watch.last_error))  # 404: the CRD is not installed
        assert source.apply() is None
    assert set(registry.clusters()) == {"kept"}


@dataclass
class StandInHub:
    """What the status writer reads of a hub, driven directly by the test."""

    registry: Registry
    statuses: dict[str, ClusterStatus] = field(default_factory=dict)
    discovery: dict[str, Discovery] = field(default_factory=dict)
    ca_reports: dict[str, CaFacts] = field(default_factory=dict)


def test_status_is_written_once_and_again_only_when_the_cluster_changes(kube: FakeKube, registry: Registry) -> None:
    create(kube, mc("east", labels={"env": "prod"}))
    create(kube, mc("west", "eu-west", "eu-west-1a", "n2", gateway={"address": "gw.example", "port": 443}))
    hub, clock = StandInHub(registry), [T0]

    def status_writes() -> list[str]:
        return [str(r.name) for r in kube.writes() if r.resource == PLURAL and r.subresource == "status"]

    def live(name: str) -> dict[str, Any]:
        return dict((kube.get(V1, "MeshCluster", name) or {}).get("status") or {})

    def seen(source: MeshClusterSource, name: str) -> Callable[[], bool]:
        return lambda: source.objects()[name].get("status") == live(name) != {}

    with watching(kube, registry) as source, kube.api_client() as api:
        wait(lambda: set(registry.clusters()) == {"east", "west"})
        writer = MeshClusterStatusWriter(hub, source, api, now=lambda: clock[0])

        def flush() -> int:
            return asyncio.run(writer.flush())

        assert flush() == 2
        assert sorted(status_writes()) == ["east", "west"]
        assert flush() == 0  # before the watch shows our write: remembered, not rewritten
        wait(seen(source, "east"))
        wait(seen(source, "west"))
        assert flush() == 0
        assert len(status_writes()) == 2
        east = live("east")
        assert east["connection"] == "Pending"
        assert {c["type"]: c["reason"] for c in east["conditions"]}["Ready"] == "AwaitingJoin"
        assert live("west")["gatewayAddress"] == "gw.example:443"
        assert kube.get(V1, "MeshCluster", "east")["metadata"]["generation"] == 1  # type: ignore[index]

        # the agent joins and connects: the status follows
        registry._db.execute("UPDATE clusters SET cert_fingerprint='ab', cert_not_after=?, registered_at=?"
                             " WHERE name='east'", (T0 + 86400, T0 - 10))
        hub.statuses["east"] = ClusterStatus("east", "Connected", "0.3.0", T0, acked_version=A, desired_version=A)
        hub.discovery["east"] = Discovery("10.0.0.7", 15443)
        assert flush() == 1
        assert status_writes()[-1] == "east"
        east = live("east")
        assert {c["type"]: c["status"] for c in east["conditions"]} == {
            "Accepted": "True", "Registered": "True", "Connected": "True", "InSync": "True", "Ready": "True"}
        assert (east["connection"], east["agentVersion"], east["ackedVersionShort"], east["gatewayAddress"],
                east["agentCertificateExpiry"]) == ("Connected", "0.3.0", A[:12], "10.0.0.7:15443",
                                                    "2023-11-15T22:13:20Z")
        wait(seen(source, "east"))

        # heartbeats alone are written at most once a minute
        hub.statuses["east"] = dataclasses.replace(hub.statuses["east"], last_heartbeat=T0 + 5)
        clock[0] = T0 + 5
        assert flush() == 0
        hub.statuses["east"] = dataclasses.replace(hub.statuses["east"], last_heartbeat=T0 + 61)
        clock[0] = T0 + 61
        assert flush() == 1
        assert live("east")["lastHeartbeat"] == "2023-11-14T22:14:21Z"
        wait(seen(source, "east"))

        # a NACK then its recovery: lastNack appears, then is removed (merge patch with null)
        hub.statuses["east"] = dataclasses.replace(hub.statuses["east"], desired_version=B, nack_version=B,
                                                   nack_error="no CRD", nack_at=T0 + 61)
        assert flush() == 1
        assert live("east")["lastNack"]["message"] == "no CRD"
        wait(seen(source, "east"))
        hub.statuses["east"] = dataclasses.replace(hub.statuses["east"], acked_version=B, nack_version="",
                                                   nack_error="")
        assert flush() == 1
        assert "lastNack" not in live("east")
        assert len(status_writes()) == 6


def test_status_of_an_invalid_meshcluster_says_why(registry: Registry) -> None:
    # the CRD schema refuses this name: a server without it (an older CRD) is what lets it through
    with FakeKube() as kube:
        kube.put(mc("East_1"))
        with watching(kube, registry) as source, kube.api_client() as api:
            wait(lambda: "East_1" in source.errors())
            writer = MeshClusterStatusWriter(StandInHub(registry), source, api, now=lambda: T0)
            assert asyncio.run(writer.flush()) == 1
        status = (kube.get(V1, "MeshCluster", "East_1") or {})["status"]
    assert registry.clusters() == {}
    accepted = next(c for c in status["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert "metadata.name" in accepted["message"]


# ---------------------------------------------------------------------------------------------
# the hub process in kube mode, end to end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def meshfleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshfleet.cli", *args]


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "nobody"}}],
        "users": [{"name": "nobody", "user": {}}]}))
    return path


@pytest.mark.slow
def test_hub_in_kube_mode_takes_clusters_from_meshclusters_and_writes_their_status(
        kube: FakeKube, tmp_path: Path) -> None:
    hub_dir, port, bport = tmp_path / "hub", free_port(), free_port()
    create(kube, mc("us-east-1", labels={"env": "prod"}))
    logs = [(tmp_path / "hub.log").open("w"), (tmp_path / "agent.log").open("w")]
    procs = [subprocess.Popen(meshfleet("hub", "--state-dir", str(hub_dir), "--listen", f"127.0.0.1:{port}",
                                        "--bootstrap-listen", f"127.0.0.1:{bport}", "--heartbeat-interval", "0.5",
                                        "--kubeconfig", str(kubeconfig(tmp_path / "kubeconfig", kube.url))),
                              stderr=logs[0])]

    def status_doc() -> dict[str, Any]:
        out = subprocess.run(meshfleet("status", "--state-dir", str(hub_dir), "-o", "json"), capture_output=True,
                             text=True)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else {"clusters": []}

    def conditions() -> dict[str, str]:
        status = (kube.get(V1, "MeshCluster", "us-east-1") or {}).get("status") or {}
        return {c["type"]: c["status"] for c in status.get("conditions", [])}

    def hub_log() -> str:
        return (tmp_path / "hub.log").read_text()[-3000:]

    try:
        wait(lambda: [(c["name"], c["labels"], c["origin"]) for c in status_doc()["clusters"]]
             == [("us-east-1", {"env": "prod"}, "meshcluster")], within=30)
        wait(lambda: conditions().get("Registered") == "False", within=30)
        token = subprocess.run(meshfleet("cluster", "token", "us-east-1", "--state-dir", str(hub_dir)),
                               check=True, capture_output=True, text=True).stdout.strip()
        procs.append(subprocess.Popen(meshfleet(
            "agent", "--hub", f"127.0.0.1:{port}", "--hub-bootstrap", f"127.0.0.1:{bport}", "--cluster",
            "us-east-1", "--token", token, "--state-dir", str(tmp_path / "agent"), "--inventory",
            str(EXAMPLES / "inventories" / "us-east-1.yaml"), "--output", str(tmp_path / "out"),
            "--heartbeat-interval", "0.5"), stderr=logs[1]))
        try:
            wait(lambda: conditions().get("Ready") == "True", within=30)
        except AssertionError:
            pytest.fail(f"never Ready: {conditions()}\n{hub_log()}")
        kube.delete(V1, "MeshCluster", "us-east-1")
        try:
            wait(lambda: status_doc()["clusters"] == [], within=30)
        except AssertionError:
            pytest.fail(f"not removed: {status_doc()}\n{hub_log()}")
        wait(lambda: procs[1].poll() is not None, within=30)  # its certificate is refused: the agent gives up
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=15) for p in procs]
        for log in logs:
            log.close()
    assert codes[0] == 0, hub_log()
    assert codes[1] == 3, (tmp_path / "agent.log").read_text()[-2000:]
