"""meshfleet.intents: canonical encoding, versioning and strict decoding of a cluster's intent."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from meshfleet.intents import (
    MEDIA_TYPE,
    AccessOperation,
    AccessRule,
    AccessSource,
    Backend,
    ClusterIntent,
    ClusterRef,
    Encoder,
    Fault,
    IntentError,
    Mirror,
    MtlsRule,
    OutlierDetection,
    Port,
    RequestMatch,
    Retries,
    RouteRule,
    ServiceIntent,
    StringMatch,
    Subset,
    TrafficRoute,
    WeightedTarget,
    canonical_json,
    decode,
    encode,
    to_json,
)

US = ClusterRef("us-east-1", "us-east", "us-east-1a", "net-us-east")
EU = ClusterRef("eu-west-1", "eu-west", "", "net-eu-west")
INTENT = ClusterIntent(
    cluster=US,
    services=(
        ServiceIntent("bookinfo", "reviews", (Port("http", 9080, "HTTP"), Port("grpc", 9090, "GRPC")), (
            Backend(EU, address="eastwest.eu-west-1.example", port=15443,
                    subsets=(Subset("v3", {"version": "v3", "équipe": "ünïcode"}),)),
            Backend(US, subsets=(Subset("v1", {"version": "v1"}), Subset("v2", {}))),
        )),
        ServiceIntent("bookinfo", "ratings", (Port("tcp", 5432, "TCP"),), (Backend(US),)),
    ),
    traffic=(TrafficRoute("bookinfo/reviews-split", "bookinfo", "reviews", (
        RouteRule("canary", (WeightedTarget("eu-west-1", 100, "v3"),),
                  (RequestMatch((("end-user", StringMatch("exact", "jason")),),
                                (("canary", StringMatch("regex", "^1$")),), StringMatch("prefix", "/reviews/")),),
                  "3s", Retries(2, "1s", "5xx,reset"), Fault("7s", 100.0, 503, 10.0), Mirror("eu-west-1", "v3", 5.0)),
        RouteRule("default", (WeightedTarget("us-east-1", 80), WeightedTarget("eu-west-1", 20))),
    )),),
    access=(AccessRule("bookinfo/reviews-access", "bookinfo", "ALLOW", (("app", "reviews"),),
                       (AccessSource(("bookinfo",), ("*/ns/bookinfo/sa/productpage",)),),
                       (AccessOperation((9080,), ("GET",), ("/reviews/*",)),)),),
    mtls=(MtlsRule("bookinfo/reviews-access", "bookinfo", "STRICT", (("app", "reviews"),)),),
)
# a service with a custom host and failover settings, as a MulticlusterService sends it
CUSTOM = ServiceIntent("bookinfo", "details-mesh", (Port("http", 9080, "HTTP"),), (Backend(US),),
                       host="details.bookinfo.mesh.example", service="details", outlier=OutlierDetection(3, "5s"))


def test_round_trip() -> None:
    version, content = encode(INTENT)
    assert decode(version, content) == INTENT
    assert decode(version, content, MEDIA_TYPE) == INTENT


@pytest.mark.parametrize(
    "intent",
    [
        pytest.param(ClusterIntent(US), id="empty-intent"),
        pytest.param(INTENT, id="services-traffic-access-subsets-unicode"),
        pytest.param(ClusterIntent(EU, (CUSTOM,)), id="custom-host-outlier"),
    ],
)
def test_round_trip_table(intent: ClusterIntent) -> None:
    assert decode(*encode(intent)) == intent


def test_version_is_sha256_of_canonical_bytes() -> None:
    version, content = encode(INTENT)
    assert version == hashlib.sha256(content).hexdigest()
    assert content == json.dumps(to_json(INTENT), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert "équipe".encode() in content  # not \u-escaped
    assert b" " not in content and b"\n" not in content  # no whitespace between tokens


def test_same_intent_from_differently_ordered_labels_has_the_same_version() -> None:
    a = ClusterIntent(US, (ServiceIntent("ns", "svc", (), (Backend(US, "gw", 15443, subsets=(
        Subset("v1", {"a": "1", "b": "2", "c": "3"}),)),)),))
    b = ClusterIntent(US, (ServiceIntent("ns", "svc", (), (Backend(US, "gw", 15443, subsets=(
        Subset("v1", {"c": "3", "b": "2", "a": "1"}),)),)),))
    assert encode(a) == encode(b)


def test_different_intents_have_different_versions() -> None:
    other = ClusterIntent(US, INTENT.services, (TrafficRoute("bookinfo/reviews-split", "bookinfo", "reviews", (
        RouteRule("default", (WeightedTarget("us-east-1", 79), WeightedTarget("eu-west-1", 21))),)),),
                          INTENT.access, INTENT.mtls)
    assert encode(other)[0] != encode(INTENT)[0]
    assert encode(ClusterIntent(US, INTENT.services, INTENT.traffic, INTENT.access))[0] != encode(INTENT)[0]


@pytest.mark.parametrize("position", [pytest.param(0, id="first-byte"), pytest.param(57, id="middle-byte"),
                                      pytest.param(-2, id="last-but-one-byte")])
def test_decode_refuses_a_flipped_byte(position: int) -> None:
    version, content = encode(INTENT)
    corrupt = bytearray(content)
    corrupt[position] ^= 0x01
    with pytest.raises(IntentError, match="corrupt intent: content hashes to"):
        decode(version, bytes(corrupt))


def test_decode_refuses_a_wrong_version() -> None:
    _, content = encode(INTENT)
    with pytest.raises(IntentError, match="corrupt intent"):
        decode("0" * 64, content)


@pytest.mark.parametrize("media_type", [
    pytest.param("application/json", id="plain-json"),
    pytest.param("application/vnd.meshfleet.intent.v2+json", id="future-version"),
    pytest.param("", id="empty"),
])
def test_decode_refuses_a_wrong_media_type(media_type: str) -> None:
    version, content = encode(INTENT)
    with pytest.raises(IntentError, match="unsupported intent media type"):
        decode(version, content, media_type)


@pytest.mark.parametrize("content", [
    pytest.param(b"{not json", id="broken-json"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    pytest.param(b"", id="empty"),
])
def test_decode_refuses_non_json_with_a_matching_hash(content: bytes) -> None:
    with pytest.raises(IntentError, match="corrupt intent: not JSON"):
        decode(hashlib.sha256(content).hexdigest(), content)


def _push(doc: Any) -> tuple[str, bytes]:
    """Bytes and a matching version, so decode gets past the hash check to the field checks."""
    content = json.dumps(doc).encode()
    return hashlib.sha256(content).hexdigest(), content


def _edit(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(to_json(INTENT))
    change(doc)
    return doc


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split("/")

    def change(doc: dict[str, Any]) -> None:
        node: Any = doc
        for step in parents:
            node = node[int(step)] if step.isdigit() else node[step]
        node[int(last) if last.isdigit() else last] = value

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split("/")

    def change(doc: dict[str, Any]) -> None:
        node: Any = doc
        for step in parents:
            node = node[int(step)] if step.isdigit() else node[step]
        del node[last]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(_delete("cluster"), "malformed intent: cluster: missing", id="missing-cluster"),
        pytest.param(_delete("traffic"), "malformed intent: traffic: missing", id="missing-traffic"),
        pytest.param(_delete("services/0/backends/1/port"), "malformed intent: services[0].backends[1].port: missing",
                     id="missing-nested-port"),
        pytest.param(_delete("cluster/network"), "malformed intent: cluster.network: missing", id="missing-network"),
        pytest.param(_set("services/0/ports/1/number", "9090"),
                     "malformed intent: services[0].ports[1].number: expected int, got str", id="port-as-string"),
        pytest.param(_set("services/0/ports/0/number", True),
                     "malformed intent: services[0].ports[0].number: expected int, got bool", id="bool-for-int-port"),
        pytest.param(_set("traffic/0/rules/1/targets/1/weight", False),
                     "malformed intent: traffic[0].rules[1].targets[1].weight: expected int, got bool",
                     id="bool-for-int-weight"),
        pytest.param(_set("traffic/0/rules/1/targets/0/weight", 80.0),
                     "malformed intent: traffic[0].rules[1].targets[0].weight: expected int, got float",
                     id="float-for-int"),
        pytest.param(_set("traffic/0/rules/0/matches/0/uri/kind", "glob"),
                     "malformed intent: traffic[0].rules[0].matches[0].uri.kind: unknown match kind 'glob'",
                     id="unknown-match-kind"),
        pytest.param(_set("traffic/0/rules/0/fault/delayPercent", "10"),
                     "malformed intent: traffic[0].rules[0].fault.delayPercent: expected number, got str",
                     id="percent-as-string"),
        pytest.param(_set("access/0/operations/0/ports", ["9080"]),
                     "malformed intent: access[0].operations[0].ports: expected a list of integers",
                     id="port-list-of-strings"),
        pytest.param(_delete("mtls"), "malformed intent: mtls: missing", id="missing-mtls"),
        pytest.param(_set("services/0/outlier", {"interval": "5s"}),
                     "malformed intent: services[0].outlier.consecutive5xxErrors: missing", id="partial-outlier"),
        pytest.param(_set("services/0/backends/0/address", 0),
                     "malformed intent: services[0].backends[0].address: expected str, got int", id="int-for-str"),
        pytest.param(_set("services", {}), "malformed intent: services: expected list, got dict",
                     id="services-not-list"),
        pytest.param(_set("services/1/name", None), "malformed intent: services[1].name: expected str, got NoneType",
                     id="null-name"),
        pytest.param(_set("services/0/backends/0/cluster", "eu-west-1"),
                     "malformed intent: services[0].backends[0].cluster: expected dict, got str",
                     id="cluster-ref-not-object"),
        pytest.param(_set("services/0/backends/0/subsets/0/labels", {"version": 3}),
                     "malformed intent: services[0].backends[0].subsets[0].labels: labels must map strings to strings",
                     id="label-value-not-string"),
        pytest.param(_set("schema", "meshfleet.io/intent/v2"), "unsupported intent schema 'meshfleet.io/intent/v2'",
                     id="other-schema"),
    ],
)
def test_decode_names_the_path_of_a_malformed_field(change: Callable[[dict[str, Any]], None], message: str) -> None:
    with pytest.raises(IntentError) as info:
        decode(*_push(_edit(change)))
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("doc", [pytest.param([], id="list"), pytest.param("intent", id="string"),
                                 pytest.param(None, id="null")])
def test_decode_refuses_a_document_that_is_not_an_object(doc: Any) -> None:
    with pytest.raises(IntentError, match="malformed intent: schema: missing"):
        decode(*_push(doc))


def test_decode_accepts_non_canonical_bytes_whose_hash_matches() -> None:
    # the version names the exact bytes pushed; decode checks integrity, not formatting
    version, content = _push(to_json(INTENT))
    assert content != encode(INTENT)[1]
    assert decode(version, content) == INTENT


def test_encoder_output_is_the_canonical_serialization() -> None:
    """The batch encoder splices shared fragments; its bytes must equal a full canonical dump."""
    shared = INTENT.services[0]
    other = ClusterIntent(cluster=EU, services=(shared, CUSTOM), traffic=INTENT.traffic, access=INTENT.access)
    encoder = Encoder()
    for intent in (INTENT, other, ClusterIntent(cluster=US), INTENT):
        version, content = encoder.encode(intent)
        assert content == canonical_json(to_json(intent))
        assert version == hashlib.sha256(content).hexdigest()


def test_encoder_retain_forgets_objects_no_longer_held_and_stays_canonical() -> None:
    encoder = Encoder()
    encoder.encode(INTENT)
    assert encoder.size() == len(INTENT.services) + len(INTENT.traffic) + len(INTENT.access) + len(INTENT.mtls)
    encoder.retain([INTENT.services, (INTENT.traffic[0],)])
    assert encoder.size() == len(INTENT.services) + 1
    assert encoder.encode(INTENT)[1] == canonical_json(to_json(INTENT))
