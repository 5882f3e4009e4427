"""What agents render from the hub's translation, checked against Istio 1.30's real CRD schemas."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import inventory as inventories
from agent.render import RenderContext, render
from meshfleet.demo import EXAMPLES, demo_clusters
from meshfleet.intents import ClusterRef, decode, encode
from meshfleet.offline import discovery_of
from mgmt.model import Snapshot
from mgmt.policies import parse_file
from mgmt.translate import translate
from tests.istio_support import istio_schemas

MONGO_POLICY = """\
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata: {name: mongo, namespace: bookinfo}
spec:
  destination: {service: mongodb}
  route:
    - {cluster: ap-south-1, weight: 100}
"""


def example_snapshot(count: int, tmp_path: Path, extra_policies: str = "") -> Snapshot:
    clusters = demo_clusters(count, tmp_path)
    discovery = {}
    for c in clusters:
        discovery[c.name] = discovery_of(inventories.parse(c.inventory.read_text(), str(c.inventory)))
    policies = []
    texts = [(p.name, p.read_text()) for p in sorted((EXAMPLES / "policies").glob("*.yaml"))]
    for name, text in [*texts, ("extra.yaml", extra_policies)]:
        parsed, errors = parse_file(text, name)
        assert not errors
        policies += parsed
    return Snapshot({c.name: ClusterRef(c.name, c.region, c.zone, c.network) for c in clusters}, discovery,
                    tuple(policies))


def rendered(snapshot: Snapshot) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name in snapshot.clusters:
        version, content = encode(translate(snapshot, name).intent)
        out[name] = render(decode(version, content), RenderContext(name))  # through the wire format
    return out


@pytest.mark.parametrize("count", [1, 3, 6], ids=lambda n: f"{n}-clusters")
def test_every_rendered_object_is_valid_for_istio(tmp_path: Path, count: int) -> None:
    schemas = istio_schemas()
    objects = rendered(example_snapshot(count, tmp_path, MONGO_POLICY))
    kinds = set()
    for cluster, objs in objects.items():
        for obj in objs:
            kinds.add(obj["kind"])
            errors = schemas.validate(obj)
            assert not errors, f"{cluster} {obj['kind']}/{obj['metadata']['name']}: {[str(e) for e in errors]}"
    if count > 1:
        assert kinds == {"ServiceEntry", "DestinationRule", "VirtualService", "Gateway"}


def test_validation_is_strict_about_fields_the_api_server_would_drop(tmp_path: Path) -> None:
    schemas = istio_schemas()
    objs = rendered(example_snapshot(3, tmp_path))["eu-west-1"]
    vs = copy.deepcopy(next(o for o in objs if o["kind"] == "VirtualService"))
    vs["spec"]["http"][0]["route"][0]["weigth"] = vs["spec"]["http"][0]["route"][0].pop("weight")
    assert any("weigth" in str(e) for e in schemas.validate(vs))


def test_remote_backends_go_through_the_east_west_gateway(tmp_path: Path) -> None:
    objs = {(o["kind"], o["metadata"]["name"]): o for o in rendered(example_snapshot(3, tmp_path))["eu-west-1"]}
    se = objs[("ServiceEntry", "reviews-global")]["spec"]
    assert se["hosts"] == ["reviews.bookinfo.global"]
    assert se["location"] == "MESH_INTERNAL"
    by_cluster = {e["labels"]["meshfleet.io/cluster"]: e for e in se["endpoints"]}
    assert set(by_cluster) == {"us-east-1", "eu-west-1", "ap-south-1"}
    assert by_cluster["us-east-1"] == {"address": "eastwest.us-east-1.meshfleet.example", "ports": {"http": 15443},
                                       "labels": {"meshfleet.io/cluster": "us-east-1"},
                                       "locality": "us-east/us-east-1a", "network": "net-us-east"}
    assert by_cluster["eu-west-1"]["address"] == "reviews.bookinfo.svc.cluster.local"
    assert by_cluster["eu-west-1"]["ports"] == {"http": 9080}
    dr = objs[("DestinationRule", "reviews-global")]["spec"]
    assert dr["trafficPolicy"] == {"tls": {"mode": "ISTIO_MUTUAL"}}
    assert {s["name"] for s in dr["subsets"]} == {"us-east-1", "eu-west-1", "ap-south-1"}
    vs = objs[("VirtualService", "reviews-global")]["spec"]
    assert vs["hosts"] == ["reviews.bookinfo.global", "reviews.bookinfo.svc.cluster.local"]
    assert [(r["destination"]["subset"], r["weight"]) for r in vs["http"][0]["route"]] == [
        ("us-east-1", 80), ("eu-west-1", 20)]


def test_every_object_carries_the_ownership_labels(tmp_path: Path) -> None:
    for cluster, objs in rendered(example_snapshot(3, tmp_path)).items():
        for obj in objs:
            assert obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "meshfleet-agent",
                                                 "meshfleet.io/cluster": cluster}


def test_tcp_services_get_tcp_routes(tmp_path: Path) -> None:
    objs = rendered(example_snapshot(3, tmp_path, MONGO_POLICY))["us-east-1"]
    vs = next(o for o in objs if o["kind"] == "VirtualService" and o["metadata"]["name"] == "mongodb-global")
    assert "http" not in vs["spec"]
    assert vs["spec"]["tcp"] == [{"route": [{"destination": {"host": "mongodb.bookinfo.global",
                                                             "subset": "ap-south-1"}, "weight": 100}]}]


def test_a_backing_cluster_outside_the_clients_only_serves(tmp_path: Path) -> None:
    """ratings-for-eu routes eu-west-1's clients to us-east-1 and ap-south-1: those two serve, no more."""
    objs = rendered(example_snapshot(3, tmp_path))
    assert [o["kind"] for o in objs["eu-west-1"] if o["metadata"]["name"] == "ratings-global"] == [
        "DestinationRule", "ServiceEntry", "VirtualService"]
    served = {o["kind"]: o for o in objs["us-east-1"] if o["metadata"]["name"] == "ratings-global"}
    assert set(served) == {"DestinationRule", "ServiceEntry"}  # no route of its own
    assert [e["address"] for e in served["ServiceEntry"]["spec"]["endpoints"]] == [
        "ratings.bookinfo.svc.cluster.local"]
    assert [x["name"] for x in served["DestinationRule"]["spec"]["subsets"]] == ["us-east-1"]


def test_a_cluster_that_serves_gets_the_east_west_gateway(tmp_path: Path) -> None:
    objs = rendered(example_snapshot(3, tmp_path))
    gateways = [o for o in objs["us-east-1"] if o["kind"] == "Gateway"]
    assert [(g["metadata"]["namespace"], g["metadata"]["name"]) for g in gateways] == [
        ("istio-system", "meshfleet-eastwest")]
    assert gateways[0]["spec"] == {
        "selector": {"istio": "eastwestgateway"},
        "servers": [{"port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                     "tls": {"mode": "AUTO_PASSTHROUGH"}, "hosts": ["*.global"]}]}


def test_render_matches_golden_files(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Per-cluster rendered YAML for the 3-cluster example; regenerate with --update-golden."""
    golden_dir = Path(__file__).parent / "golden" / "three-regions"
    for cluster, objs in rendered(example_snapshot(3, tmp_path, MONGO_POLICY)).items():
        text = yaml.safe_dump_all(objs, sort_keys=False)
        path = golden_dir / f"{cluster}.yaml"
        if request.config.getoption("--update-golden"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"missing golden file {path}; run pytest --update-golden"
        assert text == path.read_text(), f"{cluster} differs from {path}; review and run pytest --update-golden"
