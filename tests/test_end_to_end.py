"""Kubernetes on both ends: CRs on a hub API server, three workload API servers, real hub and agents.

Every API server is tests.fakekube over HTTP, driven by the real `kubernetes` client: the hub
watches the example resources of every kind on its own, each agent discovers its cluster's
Services and Pods and applies what it renders with server-side apply to its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import CustomObjectsApi

from agent.applying import KubernetesSink
from agent.discovering import ClusterDiscovery
from agent.kubeapi import Rest, RetryPolicy
from meshfleet.crdschemas import CRDSchemas
from meshfleet.demo import EXAMPLES, Fleet, demo_clusters
from mgmt.kubewatching import PLURALS, KubePolicySource, WatchSettings
from mgmt.statuswriting import PolicyStatusWriter
from tests.fakekube import FakeKube
from tests.fleets import run, until
from tests.istio_support import istio_available, istio_schemas

CRDS = Path(__file__).resolve().parents[1] / "crds"
FAST = WatchSettings(resync=30.0, watch_timeout=1, backoff_initial=0.01, backoff_max=0.05)
CLUSTERS = ("us-east-1", "eu-west-1", "ap-south-1")
KINDS = ("multiclusterservices", "trafficpolicies", "failoverpolicies", "accesspolicies")


def cluster_objects(inventory: dict[str, Any]) -> list[dict[str, Any]]:
    """The Services, Pods and east-west gateway Service a cluster runs, as its example inventory says."""
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "istio-system", "name": "istio-eastwestgateway"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "tls", "port": inventory["gateway"]["port"]}]},
        "status": {"loadBalancer": {"ingress": [{"hostname": inventory["gateway"]["address"]}]}}}]
    for s in inventory["services"]:
        ns, name, selector = s["namespace"], s["name"], s.get("selector") or {}
        objects.append({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"namespace": ns, "name": name, "labels": s.get("labels") or {}},
                        "spec": {"selector": selector,
                                 "ports": [{"name": p["name"], "port": p["number"],
                                            "appProtocol": p.get("protocol", "TCP").lower()} for p in s["ports"]]}})
        for i, subset in enumerate(s.get("subsets") or [{"labels": {}}]):
            objects.append({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"namespace": ns, "name": f"{name}-{i}",
                                         "labels": {**selector, **subset["labels"]}},
                            "status": {"phase": "Running"}})
    return objects


@pytest.fixture
def apis() -> Iterator[dict[str, FakeKube]]:
    """The hub's API server (key "hub") and one per workload cluster, populated from the examples."""
    meshfleet_crds = CRDSchemas.from_documents(
        d for p in sorted(CRDS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()))
    with ExitStack() as stack:
        servers = {"hub": stack.enter_context(FakeKube(crds=meshfleet_crds))}
        for name in CLUSTERS:
            fake = stack.enter_context(FakeKube(crds=istio_schemas() if istio_available() else None))
            inventory = yaml.safe_load((EXAMPLES / "inventories" / f"{name}.yaml").read_text())
            for obj in cluster_objects(inventory):
                fake.put(obj)
            servers[name] = fake
        yield servers


def apply_examples(hub: FakeKube, only: set[str] | None = None, but: frozenset[str] = frozenset()) -> None:
    """kubectl apply the example resources (those named in `only`, if given; not those in `but`)."""
    with hub.api_client() as api:
        custom = CustomObjectsApi(api)
        for kind in KINDS:
            for doc in yaml.safe_load_all((EXAMPLES / "crs" / f"{kind}.yaml").read_text()):
                name = doc and doc["metadata"]["name"]
                if doc and (only is None or name in only) and name not in but:
                    custom.patch_namespaced_custom_object(
                        "meshfleet.io", "v1alpha1", doc["metadata"]["namespace"], PLURALS[doc["kind"]],
                        doc["metadata"]["name"], doc, field_manager="kubectl", force=True,
                        _content_type="application/apply-patch+yaml")


def test_example_resources_reach_every_clusters_api_server_with_status_and_are_pruned_on_delete(
        tmp_path: Path, apis: dict[str, FakeKube]) -> None:
    foreign = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"namespace": "bookinfo", "name": "productpage-global", "labels": {"team": "web"}},
               "spec": {"hosts": ["productpage.bookinfo.svc.cluster.local"],
                        "http": [{"route": [{"destination": {"host": "productpage.bookinfo.svc.cluster.local"}}]}]}}
    apis["eu-west-1"].put(foreign)  # someone else's object where the agent would write productpage's route

    async def scenario() -> None:
        hub = apis["hub"]
        with ExitStack() as stack:
            hub_api = stack.enter_context(hub.api_client())
            source = KubePolicySource.for_api(hub_api, settings=FAST)
            fleet = Fleet(tmp_path, demo_clusters(3, tmp_path), None, heartbeat=0.5, grace=3, source=source)
            source.on_change = fleet.hub.policy_changed
            writer = PolicyStatusWriter(fleet.hub, source, hub_api, interval=0.1)
            await fleet.start(agents=[])
            for name in CLUSTERS:
                rest = Rest(stack.enter_context(apis[name].api_client()), RetryPolicy(initial=0.001, maximum=0.01))
                fleet.start_agent(name, sink=KubernetesSink(rest, name), discovery=ClusterDiscovery(rest))
            source.start()
            task = asyncio.create_task(writer.run())
            try:
                apply_examples(hub, but=frozenset({"productpage-split"}))

                def states(kind: str, name: str) -> dict[str, str]:
                    obj = hub.get("meshfleet.io/v1alpha1", kind, name, "bookinfo") or {}
                    return {c["cluster"]: c["state"] for c in (obj.get("status") or {}).get("clusters", [])}

                # the canary's clients are the clusters reviews is exported to
                await until(lambda: states("TrafficPolicy", "reviews-canary") == {
                    "us-east-1": "Applied", "eu-west-1": "Applied"}, within=30, what="reviews-canary Applied")
                await until(lambda: states("AccessPolicy", "deny-sandbox") == dict.fromkeys(CLUSTERS, "Applied"),
                            within=10, what="deny-sandbox Applied everywhere")
                await until(lambda: states("MulticlusterService", "reviews") == dict.fromkeys(CLUSTERS, "Applied"),
                            within=10, what="the reviews MulticlusterService Applied")

                # eu-west-1 refuses to overwrite the foreign VirtualService: the policy is Rejected there with
                # the reason, what eu-west-1 applied before stays Applied, the object is left as it was
                apply_examples(hub, only={"productpage-split"})
                await until(lambda: states("TrafficPolicy", "productpage-split") == {"eu-west-1": "Rejected"},
                            within=15, what="productpage-split Rejected in eu-west-1")
                split = apis["hub"].get("meshfleet.io/v1alpha1", "TrafficPolicy", "productpage-split", "bookinfo")
                assert split is not None
                [state] = split["status"]["clusters"]
                assert "refusing to modify VirtualService bookinfo/productpage-global" in state["message"]
                assert states("TrafficPolicy", "reviews-canary")["eu-west-1"] == "Applied"
                live = apis["eu-west-1"].get("networking.istio.io/v1", "VirtualService", "productpage-global",
                                             "bookinfo")
                assert live is not None and live["spec"] == foreign["spec"]
                assert live["metadata"]["labels"] == {"team": "web"}
                hub.delete("meshfleet.io/v1alpha1", "TrafficPolicy", "productpage-split", "bookinfo")
                assert await fleet.wait_converged(15)

                # what reached each cluster's API server
                for name in ("us-east-1", "eu-west-1"):
                    vs = apis[name].get("networking.istio.io/v1", "VirtualService", "reviews-global", "bookinfo")
                    assert vs is not None, name
                    assert [r["name"] for r in vs["spec"]["http"]] == ["fault-drill", "abort-drill", "canary",
                                                                      "default"]
                    dr = apis[name].get("networking.istio.io/v1", "DestinationRule", "reviews-global", "bookinfo")
                    assert dr is not None and dr["spec"]["trafficPolicy"]["outlierDetection"]["interval"] == "10s"
                # ap-south-1 backs reviews (v3) without being a client: serving side only, no route
                assert apis["ap-south-1"].get("networking.istio.io/v1", "VirtualService", "reviews-global",
                                              "bookinfo") is None
                assert apis["ap-south-1"].get("networking.istio.io/v1", "ServiceEntry", "reviews-global",
                                              "bookinfo") is not None
                gateway = apis["ap-south-1"].get("networking.istio.io/v1", "Gateway", "meshfleet-eastwest",
                                                 "istio-system")
                assert gateway is not None and "*.global" in gateway["spec"]["servers"][0]["hosts"]
                for name in CLUSTERS:
                    authz = apis[name].get("security.istio.io/v1", "AuthorizationPolicy", "meshfleet-deny-sandbox",
                                           "bookinfo")
                    assert authz is not None and authz["spec"]["action"] == "DENY", name

                # deleting the canary prunes its route from every cluster; the rest stays
                hub.delete("meshfleet.io/v1alpha1", "TrafficPolicy", "reviews-canary", "bookinfo")
                await until(lambda: all(apis[c].get("networking.istio.io/v1", "VirtualService", "reviews-global",
                                                    "bookinfo") is None for c in CLUSTERS),
                            within=15, what="the canary's VirtualService pruned everywhere")
                assert apis["us-east-1"].get("networking.istio.io/v1", "DestinationRule", "reviews-global",
                                             "bookinfo") is not None
                assert apis["eu-west-1"].get("networking.istio.io/v1", "VirtualService", "productpage-global",
                                             "bookinfo") is not None  # still not ours, still there
            finally:
                task.cancel()
                await asyncio.to_thread(source.stop)
                await fleet.stop()
    run(scenario())
