"""Discovery from Kubernetes objects (pure): services, ports and protocols, version subsets, gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.discovering import DiscoverySettings, gateway_address, inventory_from_cluster, protocol_of
from agent.inventory import Inventory
from agent.settings import AgentSettings
from agent.syncing import Agent
from meshfleet.intents import Port, Subset
from meshfleet.v1 import hub_pb2


def service(ns: str, name: str, ports: list[dict[str, Any]], selector: dict[str, str] | None = None,
            **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
            "spec": {"ports": ports, "selector": selector or {"app": name}, **spec}}


def pod(ns: str, labels: dict[str, str], phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "labels": labels}, "status": {"phase": phase}}


GATEWAY = {"metadata": {"namespace": "istio-system", "name": "istio-eastwestgateway"},
           "spec": {"type": "LoadBalancer", "ports": [{"name": "status-port", "port": 15021},
                                                      {"name": "tls", "port": 15443}]},
           "status": {"loadBalancer": {"ingress": [{"hostname": "ew.example.net"}]}}}


@pytest.mark.parametrize("port, protocol", [
    pytest.param({"name": "http", "port": 80}, "HTTP", id="name-http"),
    pytest.param({"name": "http-web", "port": 80}, "HTTP", id="prefix-http"),
    pytest.param({"name": "grpc-api", "port": 90}, "GRPC", id="prefix-grpc"),
    pytest.param({"name": "web", "port": 80, "appProtocol": "http2"}, "HTTP2", id="app-protocol"),
    pytest.param({"name": "x", "port": 80, "appProtocol": "kubernetes.io/h2c"}, "TCP", id="unknown-app-protocol"),
    pytest.param({"name": "mongo", "port": 27017}, "MONGO", id="mongo"),
    pytest.param({"port": 5432}, "TCP", id="unnamed"),
])
def test_protocol_of(port: dict[str, Any], protocol: str) -> None:
    assert protocol_of(port) == protocol


def test_services_with_version_subsets_and_gateway() -> None:
    inv = inventory_from_cluster(
        services=[service("bookinfo", "reviews", [{"name": "http", "port": 9080}]),
                  service("bookinfo", "ratings", [{"name": "http", "port": 9080}]),
                  service("kube-system", "kube-dns", [{"name": "dns", "port": 53}]),
                  service("bookinfo", "ext", [{"name": "http", "port": 80}], type="ExternalName"), GATEWAY],
        pods=[pod("bookinfo", {"app": "reviews", "version": "v1"}),
              pod("bookinfo", {"app": "reviews", "version": "v2"}),
              pod("bookinfo", {"app": "reviews", "version": "v2"}),
              pod("bookinfo", {"app": "reviews", "version": "v3"}, phase="Succeeded"),
              pod("bookinfo", {"app": "ratings"}), pod("other", {"app": "reviews", "version": "v9"})],
        gateway=GATEWAY, settings=DiscoverySettings())
    assert (inv.gateway_address, inv.gateway_port) == ("ew.example.net", 15443)
    assert [(s.namespace, s.name) for s in inv.services] == [("bookinfo", "ratings"), ("bookinfo", "reviews")]
    reviews = inv.services[1]
    assert reviews.ports == (Port("http", 9080, "HTTP"),)
    assert reviews.subsets == (Subset("v1", {"version": "v1"}), Subset("v2", {"version": "v2"}))
    assert inv.services[0].subsets == ()


def test_gateway_without_an_address_yet_reports_none() -> None:
    pending = {**GATEWAY, "status": {"loadBalancer": {}}}
    assert gateway_address(pending) == ("", 15443)
    assert gateway_address(None) == ("", 0)


def test_a_service_without_usable_ports_is_skipped() -> None:
    inv = inventory_from_cluster([service("ns", "svc", [])], [], None, DiscoverySettings())
    assert inv.services == ()


def without_selector(ns: str, name: str) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"ports": [{"name": "http", "port": 80}]}}


@pytest.mark.parametrize("svc, selector", [
    pytest.param(service("shop", "cart", [{"name": "http", "port": 80}], {"app": "cart", "tier": "web"}),
                 (("app", "cart"), ("tier", "web")), id="selector-sorted"),
    pytest.param(without_selector("shop", "external"), (), id="no-selector"),
    pytest.param({**without_selector("shop", "odd"), "spec": {"ports": [{"name": "http", "port": 80}],
                                                              "selector": {"app": "-not a label-"}}},
                 (), id="unusable-selector-reported-as-none"),
])
def test_each_service_reports_its_pod_selector(svc: dict[str, Any], selector: tuple[tuple[str, str], ...]) -> None:
    [found] = inventory_from_cluster([svc], [], None, DiscoverySettings()).services
    assert found.selector == selector


class Fixed:
    """A discovery source that always reads the same inventory."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def read(self) -> Inventory:
        return self.inventory


def test_the_selector_reaches_the_discovery_report_on_the_wire(tmp_path: Path) -> None:
    inv = inventory_from_cluster(
        [service("bookinfo", "reviews", [{"name": "http", "port": 9080}], {"app": "reviews", "team": "books"}),
         without_selector("bookinfo", "external")], [], GATEWAY, DiscoverySettings())
    agent = Agent(AgentSettings(hub="127.0.0.1:1", cluster="us-east-1", state_dir=tmp_path / "state",
                                inventory=tmp_path / "inventory.yaml", output=tmp_path / "out"), discovery=Fixed(inv))
    report = agent._read_inventory()
    assert report is not None
    wire = hub_pb2.DiscoveryReport.FromString(report.SerializeToString())
    assert {s.name: dict(s.selector) for s in wire.services} == {
        "reviews": {"app": "reviews", "team": "books"}, "external": {}}
