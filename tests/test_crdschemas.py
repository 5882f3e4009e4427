"""meshfleet.crdschemas: API-server-equivalent validation of objects against CRDs.

The main test replays Istio's own CRD-validation fixtures (../shared/istio/testdata):
every *-valid.yaml document must be accepted, every *-invalid.yaml document must be
rejected with an error containing its `_err` text.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfleet import crdschemas
from meshfleet.crdschemas import CRDSchemas, FieldError, parse_go_duration
from tests.istio_support import MISSING_REASON, TESTDATA_DIR, istio_available, istio_schemas

# Vectors that cannot pass here, with the exact reason.  strict=True: if one starts
# passing, the test fails so the entry gets removed.
XFAIL = {
    "serviceentry-valid:full": (
        "PyYAML (YAML 1.1) reads the flow-sequence item `001:db8::` as the mapping {'001:db8:': None}; "
        "go-yaml, used by kubectl and Istio's own test, reads the string '001:db8::'. "
        "test_serviceentry_full_with_go_yaml_reading covers the document as the API server receives it."
    ),
}


def _load_vectors() -> list[Any]:
    if not istio_available():
        return [pytest.param("", {}, None, marks=pytest.mark.skip(reason=MISSING_REASON), id="istio-testdata-missing")]
    params = []
    for path in sorted(TESTDATA_DIR.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(d, Mapping)]
        names = [f"{path.stem}:{(d.get('metadata') or {}).get('name')}" for d in docs]
        for i, (doc, name) in enumerate(zip(docs, names, strict=True)):
            vector_id = name if names.count(name) == 1 else f"{name}#{names[: i + 1].count(name)}"
            expected = doc.get("_err")
            obj = {k: v for k, v in doc.items() if k != "_err"}
            marks = [pytest.mark.xfail(strict=True, reason=XFAIL[vector_id])] if vector_id in XFAIL else []
            params.append(pytest.param(path.name, obj, expected, marks=marks, id=vector_id))
    return params


VECTORS = _load_vectors()


@pytest.mark.parametrize(("file_name", "obj", "expected"), VECTORS)
def test_istio_conformance_vector(file_name: str, obj: dict[str, Any], expected: str | None) -> None:
    errors = istio_schemas().validate(obj)
    if file_name.endswith("-valid.yaml"):
        assert errors == [], [str(e) for e in errors]
    else:
        assert expected, f"invalid vector without _err in {file_name}"
        assert any(expected in str(e) for e in errors), (expected, [str(e) for e in errors])


def test_vectors_were_found() -> None:
    if not istio_available():
        pytest.skip(MISSING_REASON)
    files = {p.name for p in TESTDATA_DIR.glob("*.yaml")}
    assert len(VECTORS) > 90
    assert {"serviceentry-valid.yaml", "serviceentry-invalid.yaml", "workloadentry-invalid.yaml"} <= files


def test_serviceentry_full_with_go_yaml_reading() -> None:
    schemas = istio_schemas()
    doc = next(yaml.safe_load_all((TESTDATA_DIR / "serviceentry-valid.yaml").read_text(encoding="utf-8")))
    assert doc["metadata"]["name"] == "full"
    doc["spec"]["addresses"] = ["1.2.3.4", "001:db8::"]
    assert schemas.validate(doc) == []


def test_every_istio_rule_is_evaluated() -> None:
    schemas = istio_schemas()
    for _, obj, _ in (p.values for p in VECTORS):
        schemas.validate(obj)
    assert schemas.skipped_rules == {}


def test_kinds_the_agent_renders_are_served() -> None:
    kinds = istio_schemas().kinds()
    for api_version, kind in [
        ("networking.istio.io/v1", "ServiceEntry"),
        ("networking.istio.io/v1", "DestinationRule"),
        ("networking.istio.io/v1", "VirtualService"),
        ("networking.istio.io/v1", "Gateway"),
        ("networking.istio.io/v1", "Sidecar"),
        ("networking.istio.io/v1", "WorkloadEntry"),
        ("security.istio.io/v1", "AuthorizationPolicy"),
        ("security.istio.io/v1", "PeerAuthentication"),
        ("networking.istio.io/v1alpha3", "VirtualService"),
        ("networking.istio.io/v1beta1", "ProxyConfig"),
    ]:
        assert (api_version, kind) in kinds
    assert ("networking.istio.io/v1beta1", "EnvoyFilter") not in kinds


# --------------------------------------------------------------------------- Istio objects


def _service_entry(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "external-api", "namespace": "payments"},
        "spec": {"hosts": ["api.example.com"], **spec},
    }


def _messages(errors: list[FieldError]) -> list[str]:
    return [str(e) for e in errors]


def test_valid_service_entry() -> None:
    obj = _service_entry(
        location="MESH_EXTERNAL",
        resolution="DNS",
        ports=[{"name": "https", "number": 443, "protocol": "TLS"}],
        endpoints=[{"address": "api.example.com", "ports": {"https": 8443}}],
    )
    assert istio_schemas().validate(obj) == []


def test_typo_field_is_an_error() -> None:
    errors = istio_schemas().validate(_service_entry(hostz=["x"]))
    assert _messages(errors) == ["spec.hostz: field not declared in schema"]


def test_typo_nested_and_top_level_fields_are_all_reported() -> None:
    obj = _service_entry(ports=[{"name": "http", "number": 80, "protocl": "HTTP"}])
    obj["sepc"] = {}
    assert {e.path for e in istio_schemas().validate(obj)} == {"spec.ports[0].protocl", "sepc"}


def test_wrong_enum() -> None:
    errors = istio_schemas().validate(_service_entry(resolution="DNS_RR"))
    assert errors[0] == FieldError(
        "spec.resolution",
        'Unsupported value: "DNS_RR": supported values: "NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"',
    )


def test_duplicate_list_map_key() -> None:
    obj = _service_entry(ports=[{"name": "http", "number": 80}, {"name": "http", "number": 8080}])
    assert _messages(istio_schemas().validate(obj)) == ['spec.ports[1]: Duplicate value: {"name":"http"}']


def test_integer_given_as_string() -> None:
    errors = istio_schemas().validate(_service_entry(ports=[{"name": "http", "number": "80"}]))
    assert str(errors[0]) == (
        'spec.ports[0].number: Invalid value: "string": spec.ports[0].number in body must be of type integer: "string"'
    )


def test_bool_is_not_an_integer() -> None:
    errors = istio_schemas().validate(_service_entry(ports=[{"name": "http", "number": True}]))
    assert 'must be of type integer: "boolean"' in str(errors[0])


def test_integral_float_is_an_integer_but_fraction_is_not() -> None:
    schemas = istio_schemas()
    assert schemas.validate(_service_entry(ports=[{"name": "http", "number": 80.0}])) == []
    errors = schemas.validate(_service_entry(ports=[{"name": "http", "number": 80.5}]))
    assert 'must be of type integer: "number"' in str(errors[0])


def test_unknown_api_version_or_kind() -> None:
    schemas = istio_schemas()
    obj = {"apiVersion": "networking.istio.io/v9", "kind": "Foo", "metadata": {"name": "x"}}
    assert schemas.validate(obj) == [FieldError("", "no CRD serves networking.istio.io/v9 Foo")]
    assert str(schemas.validate(obj)[0]) == "no CRD serves networking.istio.io/v9 Foo"
    assert schemas.validate({**_service_entry(), "apiVersion": "networking.istio.io/v2"})[0].path == ""


def test_invalid_metadata_name() -> None:
    obj = _service_entry()
    obj["metadata"]["name"] = "External_API"
    errors = istio_schemas().validate(obj)
    assert len(errors) == 1
    assert errors[0].path == "metadata.name"
    assert errors[0].message.startswith('Invalid value: "External_API": a lowercase RFC 1123 subdomain')


def test_metadata_rules() -> None:
    schemas = istio_schemas()
    obj = _service_entry()
    obj["metadata"] = {"name": "a" * 254, "namespace": "Payments", "labels": {"app": "-x", "a/b/c": "v"}}
    paths = [e.path for e in schemas.validate(obj)]
    assert paths == ["metadata.name", "metadata.namespace", "metadata.labels", "metadata.labels"]
    obj["metadata"] = {"generateName": "external-", "labels": {"app.kubernetes.io/name": "x"}, "extra": 1}
    assert schemas.validate(obj) == []
    obj["metadata"] = {"namespace": "payments"}
    # A missing name is a "blocking" error: like the API server, CEL rules are then not evaluated.
    errors = schemas.validate(obj)
    assert str(errors[0]) == "metadata.name: Required value: name or generateName is required"
    assert [e.path for e in errors] == ["metadata.name", ""]
    assert "some validation rules were not checked" in errors[1].message
    obj["metadata"] = {"name": "x", "annotations": {"bad key": "v"}}
    assert [e.path for e in schemas.validate(obj)] == ["metadata.annotations"]


def test_value_under_preserve_unknown_fields_is_allowed() -> None:
    obj = {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "lua"},
        "spec": {
            "configPatches": [
                {
                    "applyTo": "HTTP_FILTER",
                    "patch": {"operation": "INSERT_BEFORE", "value": {"name": "lua", "typed_config": {"any": [1, {}]}}},
                }
            ]
        },
    }
    assert istio_schemas().validate(obj) == []


def test_errors_are_collected_not_stopped_at_first() -> None:
    obj = _service_entry(hostz=1, ports=[{"name": "a", "number": 1}, {"name": "a", "number": 2}])
    obj["metadata"]["name"] = "Bad"
    assert {e.path for e in istio_schemas().validate(obj)} == {"metadata.name", "spec.hostz", "spec.ports[1]"}


def test_cel_rules_of_istio_kinds() -> None:
    schemas = istio_schemas()
    errors = schemas.validate(_service_entry(hosts=["*"], ports=[{"name": "a", "number": 70000}]))
    assert _messages(errors) == [
        'spec.hosts[0]: Invalid value: "string": hostname cannot be wildcard',
        'spec.ports[0].number: Invalid value: "integer": port must be between 1-65535',
    ]
    dr: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews"},
        "spec": {"host": "reviews", "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "1.5s"}}}},
    }
    assert schemas.validate(dr) == []
    dr["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["connectTimeout"] = "500us"
    assert _messages(schemas.validate(dr)) == [
        'spec.trafficPolicy.connectionPool.tcp.connectTimeout: Invalid value: "string": '
        "must be a valid duration greater than 1ms"
    ]


def test_one_of_alternatives() -> None:
    dr: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews"},
        "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}},
    }
    schemas = istio_schemas()
    assert schemas.validate(dr) == []
    dr["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"] = {"useSourceIp": True}
    assert _messages(schemas.validate(dr)) == [
        'spec.trafficPolicy.loadBalancer: Invalid value: "": "spec.trafficPolicy.loadBalancer" '
        "must validate one and only one schema (oneOf). Found 2 valid alternatives"
    ]


def test_typical_virtual_service_is_fast() -> None:
    schemas = istio_schemas()
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": "reviews",
            "namespace": "bookinfo",
            "labels": {"app.kubernetes.io/managed-by": "meshfleet"},
        },
        "spec": {
            "hosts": ["reviews.bookinfo.svc.cluster.local"],
            "http": [
                {
                    "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                    "route": [{"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}}],
                    "timeout": "10s",
                    "retries": {"attempts": 3, "perTryTimeout": "2s"},
                },
                {
                    "route": [
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                        {"destination": {"host": "reviews", "subset": "v3"}, "weight": 10},
                    ]
                },
            ],
        },
    }
    assert schemas.validate(vs) == []
    # rules are compiled once per distinct text: validating again compiles nothing new
    misses = crdschemas._compile.cache_info().misses
    for _ in range(5):
        assert schemas.validate(vs) == []
    assert crdschemas._compile.cache_info().misses == misses


# --------------------------------------------------------------------------- synthetic CRDs


def _crd(
    spec_schema: dict[str, Any], *, scope: str = "Namespaced", served: bool = True, version: str = "v1"
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets"},
            "scope": scope,
            "versions": [
                {
                    "name": version,
                    "served": served,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}},
                }
            ],
        },
    }


def _widget(spec: Any, version: str = "v1") -> dict[str, Any]:
    return {"apiVersion": f"example.com/{version}", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}


def _schemas(spec_schema: dict[str, Any], **kwargs: Any) -> CRDSchemas:
    return CRDSchemas.from_documents([{"kind": "Namespace"}, _crd(spec_schema, **kwargs)])


def _obj(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, **extra}


def test_only_served_versions() -> None:
    schemas = _schemas(_obj({}), served=False)
    assert schemas.kinds() == set()
    assert schemas.validate(_widget({}))[0].message == "no CRD serves example.com/v1 Widget"
    assert _schemas(_obj({})).kinds() == {("example.com/v1", "Widget")}


def test_cluster_scoped_kind_forbids_namespace() -> None:
    obj = _widget({})
    obj["metadata"]["namespace"] = "default"
    assert _messages(_schemas(_obj({}), scope="Cluster").validate(obj)) == [
        "metadata.namespace: Forbidden: not allowed on this type"
    ]


def test_preserve_unknown_fields_still_validates_declared_properties() -> None:
    schemas = _schemas(_obj({"size": {"type": "integer"}}, **{"x-kubernetes-preserve-unknown-fields": True}))
    assert schemas.validate(_widget({"size": 3, "anything": {"x": [1]}})) == []
    assert "must be of type integer" in str(schemas.validate(_widget({"size": "3", "anything": 1}))[0])


def test_maps_strings_numbers_arrays() -> None:
    schemas = _schemas(
        _obj(
            {
                "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}},
                "name": {"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-zé]+$"},
                "ratio": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True, "nullable": True},
                "step": {"type": "integer", "multipleOf": 5},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2, "x-kubernetes-list-type": "set"},
                "blob": {"type": "string", "format": "byte"},
                "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "flags": {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": {"type": "integer"},
                },
            }
        )
    )
    good = {
        "labels": {"a.b/c": "xyz"},
        "name": "éé",
        "ratio": None,
        "step": 10,
        "tags": ["a"],
        "blob": "aGk=",
        "port": "http",
        "flags": {"x": 1},
    }
    assert schemas.validate(_widget(good)) == []
    assert schemas.validate(_widget({**good, "port": 8080, "ratio": 0.5})) == []
    bad = {
        "labels": {"a.b/c": "wxyz"},
        "name": "ab1",
        "ratio": 1,
        "step": 7,
        "tags": ["a", "a", "b"],
        "blob": "not base64!",
        "port": True,
        "flags": {},
    }
    assert _messages(schemas.validate(_widget(bad))) == [
        "spec.labels[a.b/c]: Too long: may not be more than 3 bytes",
        "spec.name: Invalid value: \"ab1\": spec.name in body should match '^[a-zé]+$'",
        "spec.ratio: Invalid value: 1: spec.ratio in body should be less than 1",
        "spec.step: Invalid value: 7: spec.step in body should be a multiple of 5",
        "spec.tags: Too many: 3: must have at most 2 items",
        'spec.tags[1]: Duplicate value: "a"',
        'spec.blob: Invalid value: "not base64!": spec.blob in body must be of type byte: "not base64!"',
        'spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean"',
        "spec.flags: Invalid value: 1: spec.flags in body should have at least 1 properties",
    ]


def _ruled(rules: list[dict[str, Any]], properties: dict[str, Any] | None = None) -> CRDSchemas:
    return _schemas(
        _obj(properties or {"a": {"type": "string"}, "n": {"type": "integer"}}, **{"x-kubernetes-validations": rules})
    )


def test_cel_message_field_path_and_reason() -> None:
    schemas = _ruled(
        [
            {"rule": "self.n > 0", "messageExpression": "'n is ' + string(self.n)"},
            {"rule": "self.n > 1", "fieldPath": ".n", "reason": "FieldValueForbidden", "message": "too small"},
            {"rule": "self.n > 2"},
            {"rule": "has(self.a)", "reason": "FieldValueRequired", "fieldPath": ".a", "message": "a is needed"},
        ]
    )
    assert _messages(schemas.validate(_widget({"n": 0}))) == [
        'spec: Invalid value: "object": n is 0',
        "spec.n: Forbidden: too small",
        'spec: Invalid value: "object": failed rule: self.n > 2',
        "spec.a: Required value: a is needed",
    ]
    assert schemas.validate(_widget({"n": 3, "a": "x"})) == []


def test_cel_is_skipped_after_blocking_errors() -> None:
    schemas = _ruled([{"rule": "self.n > 0", "message": "positive"}])
    errors = _messages(schemas.validate(_widget({"n": "zero"})))
    assert len(errors) == 2
    assert errors[1].endswith(
        "some validation rules were not checked because the object was invalid; "
        "correct the existing errors to complete validation"
    )


def test_cel_sees_the_pruned_value() -> None:
    schemas = _ruled([{"rule": "!has(self.typo)", "message": "typo visible"}])
    assert _messages(schemas.validate(_widget({"typo": 1}))) == ["spec.typo: field not declared in schema"]


def test_unevaluable_rules_are_listed_not_passed_silently() -> None:
    transition = "self.a == oldSelf.a"
    unknown_fn = "quantity(self.a).isInteger()"
    schemas = _ruled([{"rule": transition}, {"rule": unknown_fn}, {"rule": "self.n < 10"}])
    assert set(schemas.skipped_rules) == {transition, unknown_fn}
    assert "oldSelf" in schemas.skipped_rules[transition]
    assert "quantity" in schemas.skipped_rules[unknown_fn]
    assert _messages(schemas.validate(_widget({"a": "x", "n": 11}))) == [
        'spec: Invalid value: "object": failed rule: self.n < 10'
    ]


@pytest.mark.parametrize(
    ("rule", "a", "ok"),
    [
        ("self.a.substring(1, 3) == 'bc'", "abcd", True),
        ("self.a.substring(2) == 'cd'", "abcd", True),
        ("self.a.lowerAscii() == 'abÉ'", "ABÉ", True),
        ("self.a.upperAscii() == 'AB'", "ab", True),
        ("self.a.split('/') == ['x', 'y']", "x/y", True),
        ("self.a.split('/', 1) == ['x/y']", "x/y", True),
        ("self.a.indexOf('b') == 1 && self.a.lastIndexOf('b') == 3", "abab", True),
        ("self.a.charAt(1) == 'é'", "hé", True),
        ("self.a.replace('-', '_') == 'a_b_c'", "a-b-c", True),
        ("self.a.trim() == 'x'", "  x ", True),
        ("['a', 'b'].join('-') == self.a", "a-b", True),
        ("self.a.find('[0-9]+') == '42'", "ab42c7", True),
        ("self.a.findAll('[0-9]+') == ['42', '7']", "ab42c7", True),
        ("self.a.matches('^[a-z]+$')", "abc", True),
        (
            "url(self.a).getScheme() == 'https' && url(self.a).getHostname() == 'example.com'",
            "https://example.com:8443/p",
            True,
        ),
        (
            "url(self.a).getPort() == '8443' && url(self.a).getHost() == 'example.com:8443'",
            "https://example.com:8443/p",
            True,
        ),
        ("url(self.a).getEscapedPath() == '/p'", "https://example.com:8443/p", True),
        ("isURL(self.a)", "/absolute/path", True),
        ("isURL(self.a)", "relative/path", False),
        ("isURL(self.a)", "http://exa mple.com", False),
        ("duration(self.a) == duration('90m')", "1h30m", True),
        ("duration(self.a) < duration('1s')", "999ms", True),
        ("self.a.size() == 3", "héé", True),
        ("[1, 2, 2].exists_one(x, x == 1) && [1].all(x, x > 0)", "", True),
    ],
)
def test_kubernetes_cel_library(rule: str, a: str, ok: bool) -> None:
    schemas = _ruled([{"rule": rule}])
    assert schemas.skipped_rules == {}
    assert (schemas.validate(_widget({"a": a})) == []) is ok


@pytest.mark.parametrize(
    ("rule", "a", "error"),
    [
        ("self.a.substring(0, 9) == ''", "abc", "index out of range: 9 evaluating rule"),
        (
            "duration(self.a) > duration('0s')",
            "1d",
            "type conversion error from 'string' to 'google.protobuf.Duration'",
        ),
        ("int(self.a) > 0", "8_0", "type conversion error from 'string' to 'int'"),
        ("url(self.a).getScheme() == ''", "no scheme", "URL parse error during conversion from string"),
        ("self.missing == 1", "", "no such key: missing"),
    ],
)
def test_cel_runtime_errors_reject_like_the_api_server(rule: str, a: str, error: str) -> None:
    schemas = _ruled([{"rule": rule}], {"a": {"type": "string"}, "missing": {"type": "integer"}})
    errors = _messages(schemas.validate(_widget({"a": a})))
    assert len(errors) == 1 and error in errors[0], errors
    assert schemas.skipped_rules == {}


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("1.5s", 1_500_000_000),
        ("10ms", 10_000_000),
        ("1h2m", 3_720_000_000_000),
        ("-1.5h", -5_400_000_000_000),
        ("+5us", 5_000),
        ("1µs", 1_000),
        ("1.s", 1_000_000_000),
        (".5m", 30_000_000_000),
        ("0", 0),
        ("1", None),
        ("", None),
        ("1d", None),
        (".s", None),
        ("5 s", None),
        ("3000000h", None),
    ],
)
def test_parse_go_duration(text: str, nanos: int | None) -> None:
    assert parse_go_duration(text) == nanos


def test_from_file_reads_multi_document_yaml(tmp_path: Path) -> None:
    crd = _crd(_obj({"size": {"type": "integer"}}), version="v2")
    path = tmp_path / "crds.yaml"
    path.write_text(yaml.safe_dump_all([{"kind": "ConfigMap"}, None, crd]), encoding="utf-8")
    schemas = CRDSchemas.from_file(path)
    assert schemas.kinds() == {("example.com/v2", "Widget")}
    assert schemas.validate(_widget({"size": 1}, version="v2")) == []


def test_validate_does_not_modify_its_input() -> None:
    obj = _service_entry(ports=[{"name": "http", "number": 80}], typo=1)
    before = copy.deepcopy(obj)
    istio_schemas().validate(obj)
    assert obj == before


def test_field_error_str() -> None:
    assert str(FieldError("spec.hosts", "Required value")) == "spec.hosts: Required value"
    assert str(FieldError("", "no CRD serves v1 Foo")) == "no CRD serves v1 Foo"
