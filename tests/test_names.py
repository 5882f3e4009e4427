"""Name rules shared by every place that accepts a name from a user or an agent."""

from __future__ import annotations

import pytest

from agent.inventory import InventoryError, parse
from meshfleet.names import address_error, labels_error, parse_duration, topology_name_error
from mgmt.model import DiscoveryError, discovery_from_json


@pytest.mark.parametrize("value, ok", [
    pytest.param("10.0.0.1", True, id="ipv4"), pytest.param("2001:db8::1", True, id="ipv6"),
    pytest.param("eastwest.us-east-1.example.net", True, id="dns"), pytest.param("LB.Example.COM", True, id="upper"),
    pytest.param("", False, id="empty"), pytest.param("a b", False, id="space"),
    pytest.param("unix:///x", False, id="uds"), pytest.param("-bad.example", False, id="leading-dash"),
])
def test_address_error(value: str, ok: bool) -> None:
    assert (address_error(value) is None) == ok


@pytest.mark.parametrize("labels, ok", [
    pytest.param({"version": "v1", "app.kubernetes.io/name": "reviews", "empty": ""}, True, id="valid"),
    pytest.param({"bad key": "v"}, False, id="space-in-key"),
    pytest.param({"a/b/c": "v"}, False, id="two-slashes"),
    pytest.param({"k": "-v"}, False, id="value-leading-dash"),
    pytest.param({"k": "v" * 64}, False, id="value-too-long"),
    pytest.param({"k": 1}, False, id="int-value"),
])
def test_labels_error(labels: dict[str, object], ok: bool) -> None:
    assert (labels_error(labels) is None) == ok


def test_bad_gateway_address_in_inventory_names_the_field() -> None:
    with pytest.raises(InventoryError, match=r"gateway\.address: 'not an address'"):
        parse("gateway: {address: not an address}\nservices: []\n", "inv.yaml")


def test_hub_refuses_a_report_with_bad_subset_labels() -> None:
    doc = {"gateway": {"address": "gw.example", "port": 15443}, "services": [
        {"namespace": "ns", "name": "svc", "ports": [{"name": "http", "number": 80, "protocol": "HTTP"}],
         "subsets": [{"name": "v1", "labels": {"version": "v 1"}}]}]}
    with pytest.raises(DiscoveryError, match="subset 'v1': label value 'v 1'"):
        discovery_from_json(doc)


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1h", "0"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_topology_names_cannot_hold_the_locality_separator() -> None:
    assert topology_name_error("us/east") is not None
    assert topology_name_error("us-east-1a") is None
