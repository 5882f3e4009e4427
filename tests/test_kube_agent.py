"""An agent in Kubernetes mode: discovery from and server-side apply to a fake API server, over real gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.applying import KubernetesSink
from agent.discovering import ClusterDiscovery
from agent.kubeapi import Rest, RetryPolicy
from tests.fakekube import FakeKube
from tests.fleets import make_fleet, run, until
from tests.istio_support import istio_available, istio_schemas

CLUSTER = "eu-west-1"


def service(ns: str, name: str, port: int = 9080) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port}]}}


def pod(ns: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name, "labels": labels},
            "status": {"phase": "Running"}}


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(crds=istio_schemas() if istio_available() else None) as fake:
        # what eu-west-1 runs, as examples/inventories/eu-west-1.yaml describes it
        for name in ("productpage", "reviews", "details"):
            fake.put(service("bookinfo", name))
        for i, version in enumerate(("v1", "v2")):
            fake.put(pod("bookinfo", f"reviews-{i}", {"app": "reviews", "version": version}))
        fake.put({"apiVersion": "v1", "kind": "Service",
                  "metadata": {"namespace": "istio-system", "name": "istio-eastwestgateway"},
                  "spec": {"type": "LoadBalancer", "ports": [{"name": "tls", "port": 15443}]},
                  "status": {"loadBalancer": {"ingress": [{"hostname": "eastwest.eu-west-1.meshfleet.example"}]}}})
        yield fake


def test_agent_discovers_applies_and_acks_through_the_api_server(tmp_path: Path, kube: FakeKube) -> None:
    async def scenario() -> None:
        fleet = make_fleet(tmp_path)
        with kube.api_client() as api:
            rest = Rest(api, RetryPolicy(initial=0.001, maximum=0.01))
            await fleet.start(agents=["us-east-1", "ap-south-1"])
            try:
                fleet.start_agent(CLUSTER, sink=KubernetesSink(rest, CLUSTER), discovery=ClusterDiscovery(rest))
                assert await fleet.wait_converged(30)
                discovered = fleet.hub.discovery[CLUSTER]
                assert discovered.gateway_address == "eastwest.eu-west-1.meshfleet.example"
                assert [s.name for s in discovered.services[("bookinfo", "reviews")].subsets] == ["v1", "v2"]
                vs = kube.get("networking.istio.io/v1", "VirtualService", "reviews-global", "bookinfo")
                assert vs is not None
                assert [r["weight"] for r in vs["spec"]["http"][0]["route"]] == [80, 20]
                # a resync of the same intent makes no write
                kube.clear_requests()
                agent = fleet.agents[CLUSTER]
                await asyncio.to_thread(agent.apply, agent_push(fleet))
                assert kube.writes() == []
            finally:
                await fleet.stop()
    run(scenario())


def test_api_server_refusal_is_nacked_with_its_text_and_shown_in_status(tmp_path: Path, kube: FakeKube) -> None:
    async def scenario() -> None:
        fleet = make_fleet(tmp_path)
        kube.deny_admission(r"/virtualservices/", "route weights must not change during the freeze", times=100)
        with kube.api_client() as api:
            rest = Rest(api, RetryPolicy(initial=0.001, maximum=0.01))
            await fleet.start(agents=["us-east-1", "ap-south-1"])
            try:
                fleet.start_agent(CLUSTER, sink=KubernetesSink(rest, CLUSTER), discovery=ClusterDiscovery(rest))
                status = fleet.hub.statuses[CLUSTER]
                await until(lambda: bool(status.nack_error), within=30, what="a NACK")
                assert status.nack_error.startswith("VirtualService bookinfo/")
                assert ('admission webhook "validation.istio.io" denied the request: route weights must not change '
                        "during the freeze") in status.nack_error
            finally:
                await fleet.stop()
    run(scenario())


def agent_push(fleet: Any) -> Any:
    from meshfleet.intents import MEDIA_TYPE
    from meshfleet.v1 import hub_pb2

    intent = fleet.hub.intents[CLUSTER]
    return hub_pb2.IntentPush(version=intent.version, content=intent.content, content_type=MEDIA_TYPE)
