"""agent.inventory.parse: the local inventory file, with errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.inventory import Inventory, InventoryError, LocalService, parse
from agent.settings import AgentSettings
from agent.syncing import Agent
from meshfleet.intents import EAST_WEST_PORT, Port, Subset
from meshfleet.v1 import hub_pb2

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "inventories").glob("*.yaml"))
FILE = "inv/us-east-1.yaml"

GOOD = """\
gateway:
  address: eastwest.us-east-1.example
  port: 15443
services:
  - namespace: bookinfo
    name: reviews
    ports:
      - {name: http, number: 9080, protocol: HTTP}
    labels: {app: reviews}
    selector: {app: reviews, tier: backend}
    subsets:
      - {name: v1, labels: {version: v1}}
"""


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_inventories_parse(path: Path) -> None:
    inv = parse(path.read_text(), str(path))
    assert inv.gateway_address
    assert inv.gateway_port == EAST_WEST_PORT
    assert inv.services
    assert [(s.namespace, s.name) for s in inv.services] == sorted((s.namespace, s.name) for s in inv.services)


def test_examples_exist() -> None:
    assert [p.name for p in EXAMPLES] == ["ap-south-1.yaml", "eu-west-1.yaml", "us-east-1.yaml"]


def test_us_east_1_example_content() -> None:
    inv = parse((Path(__file__).parent.parent / "examples" / "inventories" / "us-east-1.yaml").read_text())
    reviews = next(s for s in inv.services if s.name == "reviews")
    assert reviews == LocalService("bookinfo", "reviews", (Port("http", 9080, "HTTP"),), (("app", "reviews"),),
                                   (Subset("v1", {"version": "v1"}), Subset("v2", {"version": "v2"}),
                                    Subset("v3", {"version": "v3"})), (("app", "reviews"),))
    assert [s.name for s in inv.services] == ["details", "productpage", "ratings", "reviews"]


def test_parse_good_inventory() -> None:
    assert parse(GOOD, FILE) == Inventory(
        "eastwest.us-east-1.example", 15443,
        (LocalService("bookinfo", "reviews", (Port("http", 9080, "HTTP"),), (("app", "reviews"),),
                      (Subset("v1", {"version": "v1"}),), (("app", "reviews"), ("tier", "backend"))),),
    )


def test_the_selector_reaches_the_discovery_report_on_the_wire(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(GOOD + "  - {namespace: bookinfo, name: db, ports: [{name: tcp, number: 5432}]}\n")
    agent = Agent(AgentSettings(hub="127.0.0.1:1", cluster="us-east-1", state_dir=tmp_path / "state",
                                inventory=inventory, output=tmp_path / "out"))
    report = agent._read_inventory()
    assert report is not None
    wire = hub_pb2.DiscoveryReport.FromString(report.SerializeToString())
    assert {s.name: dict(s.selector) for s in wire.services} == {
        "reviews": {"app": "reviews", "tier": "backend"}, "db": {}}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_service_reports_its_pod_selector(path: Path) -> None:
    for s in parse(path.read_text(), str(path)).services:
        assert s.selector == (("app", s.name),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("services: []\n", Inventory("", EAST_WEST_PORT, ()), id="no-gateway-defaults"),
        pytest.param("gateway: {address: gw.example}\nservices: []\n", Inventory("gw.example", EAST_WEST_PORT, ()),
                     id="gateway-port-defaults-to-15443"),
        pytest.param(
            "services:\n  - {namespace: ns, name: db, ports: [{name: tcp, number: 5432}]}\n",
            Inventory("", EAST_WEST_PORT, (LocalService("ns", "db", (Port("tcp", 5432, "TCP"),)),)),
            id="protocol-defaults-to-tcp"),
        pytest.param(
            "services:\n  - {namespace: ns, name: web, ports: [{name: http, number: 80, protocol: http2}]}\n",
            Inventory("", EAST_WEST_PORT, (LocalService("ns", "web", (Port("http", 80, "HTTP2"),)),)),
            id="protocol-upper-cased"),
    ],
)
def test_defaults(text: str, expected: Inventory) -> None:
    assert parse(text, FILE) == expected


def test_services_are_sorted_by_namespace_and_name() -> None:
    text = """\
services:
  - {namespace: b, name: a, ports: [{name: p, number: 1}]}
  - {namespace: a, name: z, ports: [{name: p, number: 1}]}
  - {namespace: a, name: b, ports: [{name: p, number: 1}]}
"""
    assert [(s.namespace, s.name) for s in parse(text, FILE).services] == [("a", "b"), ("a", "z"), ("b", "a")]


def replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(replace("    ports:", "    prots:"),
                     f"{FILE}: services[0]: unknown field 'prots'", id="unknown-service-field"),
        pytest.param(replace("gateway:", "gatway:"), f"{FILE}: unknown field 'gatway'", id="unknown-top-level-field"),
        pytest.param(replace("  port: 15443", "  prot: 15443"), f"{FILE}: gateway: unknown field 'prot'",
                     id="unknown-gateway-field"),
        pytest.param(replace("protocol: HTTP}", "protocol: HTTP, weight: 1}"),
                     f"{FILE}: services[0].ports[0]: unknown field 'weight'", id="unknown-port-field"),
        pytest.param(replace("number: 9080", "number: 70000"),
                     f"{FILE}: services[0].ports[0].number: must be an integer 1-65535, got 70000", id="port-too-big"),
        pytest.param(replace("number: 9080", "number: 0"),
                     f"{FILE}: services[0].ports[0].number: must be an integer 1-65535, got 0", id="port-zero"),
        pytest.param(replace("number: 9080", 'number: "9080"'),
                     f"{FILE}: services[0].ports[0].number: must be an integer 1-65535, got '9080'",
                     id="port-string"),
        pytest.param(replace("number: 9080", "number: true"),
                     f"{FILE}: services[0].ports[0].number: must be an integer 1-65535, got True", id="port-bool"),
        pytest.param(replace("  port: 15443", "  port: 0"),
                     f"{FILE}: gateway needs a string address and a port 1-65535", id="gateway-port-zero"),
        pytest.param(replace("  port: 15443", "  port: '15443'"),
                     f"{FILE}: gateway needs a string address and a port 1-65535", id="gateway-port-string"),
        pytest.param(replace("  port: 15443", "  port: true"),
                     f"{FILE}: gateway needs a string address and a port 1-65535",
                     id="gateway-port-bool"),
        pytest.param(replace("protocol: HTTP}", "protocol: SCTP}"),
                     f"{FILE}: services[0].ports[0].protocol: 'SCTP' is not one of", id="bad-protocol"),
        pytest.param(replace("{name: http, number", "{name: HTTP_port, number"),
                     f"{FILE}: services[0].ports[0].name: 'HTTP_port' is not a DNS-1123 label", id="bad-port-name"),
        pytest.param(replace("    ports:\n      - {name: http, number: 9080, protocol: HTTP}\n", "    ports: []\n"),
                     f"{FILE}: services[0].ports: must be a non-empty list", id="no-ports"),
        pytest.param(GOOD + "  - {namespace: bookinfo, name: reviews, ports: [{name: tcp, number: 1}]}\n",
                     f"{FILE}: services[1]: bookinfo/reviews listed twice", id="duplicate-service"),
        pytest.param(replace("namespace: bookinfo", "namespace: Book_Info"),
                     f"{FILE}: services[0].namespace: 'Book_Info' is not a DNS-1123 label", id="bad-namespace"),
        pytest.param(replace("name: reviews", "name: reviews.v1"),
                     f"{FILE}: services[0].name: 'reviews.v1' is not a DNS-1123 label", id="bad-service-name"),
        pytest.param(replace("    name: reviews\n", ""),
                     f"{FILE}: services[0]: missing required field 'name'", id="missing-service-name"),
        pytest.param(replace("labels: {app: reviews}", "labels: {app: 3}"),
                     f"{FILE}: services[0]: labels must map strings to strings", id="label-not-string"),
        pytest.param(replace("selector: {app: reviews, tier: backend}", "selector: [app]"),
                     f"{FILE}: services[0].selector: labels must be a mapping, got list", id="selector-not-a-mapping"),
        pytest.param(replace("tier: backend}", "tier: 3}"),
                     f"{FILE}: services[0].selector: labels must map strings to strings",
                     id="selector-value-not-string"),
        pytest.param(replace("tier: backend}", "tier: -bad-}"),
                     f"{FILE}: services[0].selector: label value '-bad-' of 'tier'", id="selector-bad-value"),
        pytest.param(replace("{app: reviews, tier", "{Bad Key: reviews, tier"),
                     f"{FILE}: services[0].selector: label key 'Bad Key'", id="selector-bad-key"),
        pytest.param(replace("{name: v1, labels", "{name: V1, labels"),
                     f"{FILE}: services[0].subsets[0].name: 'V1' is not a DNS-1123 label", id="bad-subset-name"),
        pytest.param("gateway: {}\n", f"{FILE}: missing required field 'services'", id="missing-services"),
        pytest.param("services: {a: b}\n", f"{FILE}: services must be a list", id="services-not-a-list"),
        pytest.param("- services\n", f"{FILE}: must be a mapping, got list", id="root-not-a-mapping"),
        pytest.param("", f"{FILE}: must be a mapping, got NoneType", id="empty-file"),
        pytest.param(replace("  port: 15443", "  port: [15443"), f"{FILE}: YAML error:", id="yaml-error"),
        pytest.param(GOOD + "---\nservices: []\n", f"{FILE}: YAML error:", id="two-documents"),
    ],
)
def test_errors_name_file_and_field(text: str, message: str) -> None:
    with pytest.raises(InventoryError) as info:
        parse(text, FILE)
    assert str(info.value).startswith(message), str(info.value)


def test_yaml_error_mentions_the_line() -> None:
    with pytest.raises(InventoryError, match=r"line 3"):
        parse(replace("  port: 15443", "  port: [15443"), FILE)


@pytest.mark.parametrize("ports, message", [
    pytest.param("[{name: http, number: 80}, {name: http, number: 81}]", "port name 'http' or number 81 used twice",
                 id="duplicate-port-name"),
    pytest.param("[{name: a, number: 80}, {name: b, number: 80}]", "port name 'b' or number 80 used twice",
                 id="duplicate-port-number"),
])
def test_duplicate_ports_are_refused(ports: str, message: str) -> None:
    text = f"services:\n  - {{namespace: ns, name: svc, ports: {ports}}}\n"
    with pytest.raises(InventoryError, match=message):
        parse(text, "inv.yaml")


def test_duplicate_subsets_are_refused() -> None:
    text = ("services:\n  - namespace: ns\n    name: svc\n    ports: [{name: http, number: 80}]\n"
            "    subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]\n")
    with pytest.raises(InventoryError, match="subset 'v1' listed twice"):
        parse(text, "inv.yaml")
