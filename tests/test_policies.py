"""mgmt.policies: policy files and custom resources of every kind in, model resources or precise errors out."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import CustomObjectsApi

from meshfleet.crdschemas import CRDSchemas
from meshfleet.intents import AccessOperation, Fault, Mirror, OutlierDetection, Port, RequestMatch, Retries, StringMatch
from meshfleet.pki import ALGORITHMS
from mgmt.kubewatching import GROUP, PLURALS, VERSION
from mgmt.model import (
    AccessFrom,
    AccessPolicy,
    AnyResource,
    ClusterSelector,
    Destination,
    FailoverPolicy,
    HttpRule,
    Meta,
    MulticlusterService,
    Requirement,
    Resources,
    RouteTarget,
    TrafficPolicy,
    TrustPolicy,
    cr_ref,
)
from mgmt.policies import (
    CLUSTER_SCOPED,
    KEY_ALGORITHMS,
    KINDS,
    PolicyError,
    duration_seconds,
    parse_file,
    parse_resource,
)
from tests import test_crds
from tests.fakekube import FakeKube

ROOT = Path(__file__).resolve().parents[1]
FILE = "team-a/policies.yaml"
MARK = "# <-"  # marks the line(s) an error must point at
CRD_DOCS = [d for p in sorted((ROOT / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
SCHEMAS = CRDSchemas.from_documents(CRD_DOCS)

FIRST = """\
# a valid policy first, so the lines of the document under test do not start at 1
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata:
  name: details-split
  namespace: bookinfo
spec:
  destination:
    service: details
  route:
    - {cluster: eu-west-1, weight: 50}
    - {cluster: ap-south-1, weight: 50}
---
"""

# One document per kind that uses every field of its CRD (the simple TrafficPolicy form apart).
SIMPLE_TP = """\
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata:
  name: reviews-split
  namespace: bookinfo
spec:
  destination:
    service: reviews
  route:
    - cluster: us-east-1
      weight: 80
    - cluster: eu-west-1
      weight: 20
"""

MCS = """\
apiVersion: meshfleet.io/v1alpha1
kind: MulticlusterService
metadata:
  name: ratings
  namespace: bookinfo
  labels: {team: a}
spec:
  service: ratings-v2
  host: ratings.mesh.example
  backends:
    clusterSelector:
      matchLabels:
        env: prod
      matchExpressions:
        - key: region
          operator: In
          values: [us-east, ap-south]
        - key: example.com/tier
          operator: Exists
  exportTo:
    clusters: [us-east-1, eu-west-1]
  ports:
    - name: http
      number: 9080
      protocol: HTTP
    - name: grpc
      number: 7070
      protocol: GRPC
"""

TP = """\
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata:
  name: reviews-rules
  namespace: bookinfo
spec:
  destination:
    multiclusterService: reviews
  clients:
    clusters: [us-east-1, eu-west-1]
  http:
    - name: canary
      match:
        - headers:
            x-user: {exact: jason}
            cookie: {regex: "^(.*;)?canary=1(;.*)?$"}
          queryParams:
            v: {regex: "^3"}
            filter[state]: {exact: open}
          uri: {prefix: /reviews/}
        - uri: {exact: /canary}
      route:
        - cluster: us-east-1
          subset: v3
          weight: 50
        - cluster: ap-south-1
          subset: v3
          weight: 50
      timeout: 3s
      retries:
        attempts: 2
        perTryTimeout: 1500ms
        retryOn: 5xx,reset
      fault:
        delay:
          fixedDelay: 1m30s
          percentage: 0.5
        abort:
          httpStatus: 503
      mirror:
        cluster: eu-west-1
        subset: v2
    - name: default
      route:
        - cluster: us-east-1
          weight: 100
"""

FP = """\
apiVersion: meshfleet.io/v1alpha1
kind: FailoverPolicy
metadata:
  name: ratings-failover
  namespace: bookinfo
spec:
  destination:
    service: ratings
  priority:
    mode: Explicit
    clusters: [us-east-1, ap-south-1]
  outlierDetection:
    consecutive5xxErrors: 3
    interval: 5s
    baseEjectionTime: 1m
    maxEjectionPercent: 50
  evictLostClusters: false
  holdDown: 5m
  peerConfirmation: false
"""

AP = """\
apiVersion: meshfleet.io/v1alpha1
kind: AccessPolicy
metadata:
  name: ratings-readers
  namespace: bookinfo
spec:
  destination:
    service: ratings
  action: DENY
  from:
    - clusters: [us-east-1, eu-west-1]
      namespaces: [bookinfo]
      serviceAccounts: [bookinfo-reviews, bookinfo-admin]
    - namespaces: [sandbox]
  to:
    - ports: [9080, 8080]
      methods: [POST, GET]
      paths: [/ratings/*, /health]
    - paths: ["*.png"]
  mtls: PERMISSIVE
"""


TRUST = """\
apiVersion: meshfleet.io/v1alpha1
kind: TrustPolicy
metadata:
  name: mesh
  labels: {team: platform}
spec:
  trustDomain: mesh.example.com
  root:
    generate:
      algorithm: EC-P384
      validity: 43800h
  intermediate:
    ttl: 720h
    renewBefore: 30
    pathLength: 1
  rotation:
    gracePeriod: 1h30m
    restartIstiod: true
"""

# a supplied root: no validity of its own, so an intermediate TTL beyond the default validity is fine
TRUST_SECRET = """\
apiVersion: meshfleet.io/v1alpha1
kind: TrustPolicy
metadata:
  name: corporate
spec:
  root:
    secretRef:
      namespace: meshfleet-system
      name: mesh-root-ca
  intermediate:
    ttl: 100000h
"""

TRUST_FILES = """\
apiVersion: meshfleet.io/v1alpha1
kind: TrustPolicy
metadata:
  name: on-disk
spec:
  root:
    files:
      certificate: /etc/meshfleet/root/ca.crt
      key: /etc/meshfleet/root/ca.key
  rotation:
    gracePeriod: 0s
"""


def meta(kind: str, name: str, source: str = "") -> Meta:
    return Meta(kind, "" if kind in CLUSTER_SCOPED else "bookinfo", name, source)


HOUR = 3600.0
EXPECTED: dict[str, AnyResource] = {
    "simple-traffic-policy": TrafficPolicy(
        meta("TrafficPolicy", "reviews-split"), Destination(service="reviews"),
        (HttpRule("default", (RouteTarget("us-east-1", 80), RouteTarget("eu-west-1", 20))),), None, simple=True),
    "multicluster-service": MulticlusterService(
        meta("MulticlusterService", "ratings"), "ratings-v2", "ratings.mesh.example",
        ClusterSelector(match_labels=(("env", "prod"),),
                        match_expressions=(Requirement("region", "In", ("us-east", "ap-south")),
                                           Requirement("example.com/tier", "Exists"))),
        ClusterSelector(clusters=("eu-west-1", "us-east-1")),
        (Port("grpc", 7070, "GRPC"), Port("http", 9080, "HTTP"))),  # by number
    "traffic-policy": TrafficPolicy(
        meta("TrafficPolicy", "reviews-rules"), Destination(multicluster_service="reviews"),
        (HttpRule("canary", (RouteTarget("us-east-1", 50, "v3"), RouteTarget("ap-south-1", 50, "v3")),
                  (RequestMatch(headers=(("cookie", StringMatch("regex", "^(.*;)?canary=1(;.*)?$")),
                                         ("x-user", StringMatch("exact", "jason"))),
                                query_params=(("filter[state]", StringMatch("exact", "open")),
                                              ("v", StringMatch("regex", "^3"))),
                                uri=StringMatch("prefix", "/reviews/")),
                   RequestMatch(uri=StringMatch("exact", "/canary"))),
                  "3s", Retries(2, "1500ms", "5xx,reset"), Fault("1m30s", 0.5, 503, 100.0),
                  Mirror("eu-west-1", "v2", 100.0)),
         HttpRule("default", (RouteTarget("us-east-1", 100),))),
        ("eu-west-1", "us-east-1"), simple=False),
    "failover-policy": FailoverPolicy(
        meta("FailoverPolicy", "ratings-failover"), Destination(service="ratings"),
        OutlierDetection(3, "5s", "1m", 50), "Explicit", ("us-east-1", "ap-south-1"),  # in the order given
        evict_lost_clusters=False, hold_down="5m", peer_confirmation=False),
    "access-policy": AccessPolicy(
        meta("AccessPolicy", "ratings-readers"), Destination(service="ratings"), "DENY",
        (AccessFrom(("eu-west-1", "us-east-1"), ("bookinfo",), ("bookinfo-admin", "bookinfo-reviews")),
         AccessFrom(namespaces=("sandbox",))),
        (AccessOperation((8080, 9080), ("GET", "POST"), ("/health", "/ratings/*")), AccessOperation(paths=("*.png",))),
        "PERMISSIVE"),
    "trust-policy": TrustPolicy(
        meta("TrustPolicy", "mesh"), "mesh.example.com", "EC-P384", 43800 * HOUR, None, None, True, 720 * HOUR, 30, 1,
        1.5 * HOUR, True),
    "trust-policy-secret": TrustPolicy(
        meta("TrustPolicy", "corporate"), secret_ref=("meshfleet-system", "mesh-root-ca"), generate=False,
        intermediate_ttl=100000 * HOUR),
    "trust-policy-files": TrustPolicy(
        meta("TrustPolicy", "on-disk"), files=("/etc/meshfleet/root/ca.crt", "/etc/meshfleet/root/ca.key"),
        generate=False, grace_period=0.0),
}
DOCUMENTS = {"simple-traffic-policy": SIMPLE_TP, "multicluster-service": MCS, "traffic-policy": TP,
             "failover-policy": FP, "access-policy": AP, "trust-policy": TRUST, "trust-policy-secret": TRUST_SECRET,
             "trust-policy-files": TRUST_FILES}


def bare(resource: AnyResource) -> AnyResource:
    """The resource without where it came from (what a file and a CR of the same text share)."""
    m = resource.meta
    return dataclasses.replace(resource, meta=Meta(m.kind, m.namespace, m.name))


def marked_lines(text: str) -> set[int]:
    return {i for i, line in enumerate(text.splitlines(), start=1) if MARK in line}


def variant(base: str, old: str, new: str) -> str:
    """`base` with one passage replaced (the replacement marks the line(s) the error must point at)."""
    assert base.count(old) == 1, old
    return base.replace(old, new)


# ------------------------------------------------------------------------------------ valid documents


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_field_is_parsed(name: str) -> None:
    text = DOCUMENTS[name]
    assert [str(e) for e in SCHEMAS.validate(yaml.safe_load(text))] == []  # what the API server takes too

    resources, errors = parse_file(FIRST + text, FILE)

    assert errors == []
    assert resources[1] == dataclasses.replace(EXPECTED[name], meta=dataclasses.replace(
        EXPECTED[name].meta, source=f"{FILE}:14"))


def test_every_kind_in_one_file_each_with_its_line() -> None:
    text = FIRST + "---\n".join(DOCUMENTS.values())
    resources, errors = parse_file(text, FILE)
    assert errors == []
    starts = [i for i, line in enumerate(text.splitlines(), start=1) if line.startswith("apiVersion:")]
    assert [r.meta.source for r in resources] == [f"{FILE}:{n}" for n in starts]
    assert [(r.meta.created, r.meta.generation) for r in resources] == [("", 0)] * (len(DOCUMENTS) + 1)
    assert [bare(r) for r in resources[1:]] == list(EXPECTED.values())


EXAMPLE_COUNTS = {"multiclusterservices.yaml": 4, "trafficpolicies.yaml": 2, "failoverpolicies.yaml": 2,
                  "accesspolicies.yaml": 5, "trustpolicy.yaml": 1, "details-split.yaml": 2, "reviews-split.yaml": 1,
                  "trust.yaml": 1}


@pytest.mark.parametrize("name", list(EXAMPLE_COUNTS))
def test_example_files_parse(name: str) -> None:
    path = next(p for d in ("crs", "policies") if (p := ROOT / "examples" / d / name).exists())
    resources, errors = parse_file(path.read_text(), name)
    assert errors == []
    assert len(resources) == EXAMPLE_COUNTS[name]
    assert {type(r).__name__ for r in resources} == {d["kind"] for d in yaml.safe_load_all(path.read_text())}


def test_examples_mean_what_their_comments_say() -> None:
    def parsed(name: str, directory: str = "crs") -> dict[str, AnyResource]:
        resources, errors = parse_file((ROOT / "examples" / directory / name).read_text(), name)
        assert errors == []
        return {r.meta.name: bare(r) for r in resources}

    services = parsed("multiclusterservices.yaml")
    assert services["ratings"] == MulticlusterService(
        meta("MulticlusterService", "ratings"), "ratings", "",
        ClusterSelector(match_expressions=(Requirement("region", "In", ("us-east", "ap-south")),)),
        ClusterSelector(match_labels=(("env", "prod"),)), ())
    details = services["details"]
    assert isinstance(details, MulticlusterService) and details.host == "details.bookinfo.mesh.example"
    canary = parsed("trafficpolicies.yaml")["reviews-canary"]
    assert isinstance(canary, TrafficPolicy)
    assert [r.name for r in canary.http] == ["fault-drill", "abort-drill", "canary", "default"]
    assert canary.http[1].fault == Fault("", 0.0, 503, 10.0)
    assert canary.http[3].mirror == Mirror("ap-south-1", "v3", 5.0)
    assert canary.http[3].retries == Retries(3, "500ms", "5xx,connect-failure,refused-stream")
    split = parsed("trafficpolicies.yaml")["productpage-split"]
    assert isinstance(split, TrafficPolicy)
    assert (split.simple, split.http) == (True, (HttpRule("default", (RouteTarget("eu-west-1", 70),
                                                                       RouteTarget("us-east-1", 30, "v1"))),))
    sandbox = parsed("accesspolicies.yaml")["deny-sandbox"]
    assert sandbox == AccessPolicy(meta("AccessPolicy", "deny-sandbox"), Destination(all=True), "DENY",
                                   (AccessFrom(namespaces=("sandbox",)),), (), "STRICT")
    # ten-year EC P-256 root, 90-day intermediates renewed with a fifth left, phases held a day
    assert parsed("trustpolicy.yaml")["mesh"] == TrustPolicy(meta("TrustPolicy", "mesh"))
    # the demo's: the same root, 30-day intermediates, phases held an hour
    assert parsed("trust.yaml", "policies")["mesh"] == TrustPolicy(
        meta("TrustPolicy", "mesh"), intermediate_ttl=720 * HOUR, grace_period=HOUR)


@pytest.mark.parametrize(("name", "message"), [
    pytest.param("meshclusters.yaml", "MeshCluster is not a policy: clusters are added with `meshfleet cluster add`",
                 id="meshcluster"),
])
def test_kinds_that_are_not_policies_are_refused_by_name(name: str, message: str) -> None:
    text = (ROOT / "examples" / "crs" / name).read_text()
    resources, errors = parse_file(text, name)
    assert resources == []
    assert errors and all(message in e.message for e in errors)
    assert [e.line for e in errors] == [i for i, line in enumerate(text.splitlines(), start=1)
                                        if line.startswith("kind:")]


def test_empty_file_has_no_resources_and_no_errors() -> None:
    assert parse_file("# nothing here yet\n---\n", FILE) == ([], [])


# ------------------------------------------------------------------------------------ defaults

MINIMAL = {
    "multicluster-service": ("MulticlusterService", "reviews", "backends: {clusters: [us-east-1]}",
                             MulticlusterService(meta("MulticlusterService", "reviews"), "reviews", "",
                                                 ClusterSelector(clusters=("us-east-1",)), None, ())),
    "traffic-policy": ("TrafficPolicy", "tp", "destination: {service: reviews}\n  route: [{cluster: a, weight: 100}]",
                       TrafficPolicy(meta("TrafficPolicy", "tp"), Destination(service="reviews"),
                                     (HttpRule("default", (RouteTarget("a", 100),)),), None, True)),
    "traffic-policy-http": ("TrafficPolicy", "tp",
                            "destination: {service: reviews}\n  http:\n    - name: r\n"
                            "      route: [{cluster: a, weight: 100}]\n"
                            "      fault: {delay: {fixedDelay: 1s}, abort: {httpStatus: 500}}\n"
                            "      mirror: {cluster: b}",
                            TrafficPolicy(meta("TrafficPolicy", "tp"), Destination(service="reviews"),
                                          (HttpRule("r", (RouteTarget("a", 100),), fault=Fault("1s", 100.0, 500, 100.0),
                                                    mirror=Mirror("b", "", 100.0)),), None, False)),
    "failover-policy": ("FailoverPolicy", "fp", "destination: {service: reviews}",
                        FailoverPolicy(meta("FailoverPolicy", "fp"), Destination(service="reviews"),
                                       OutlierDetection(5, "10s", "30s", 100), "Topology", (), True, "1m", True)),
    "failover-policy-partial": ("FailoverPolicy", "fp", "destination: {service: reviews}\n"
                                "  outlierDetection: {interval: 2s}\n  peerConfirmation: false",
                                FailoverPolicy(meta("FailoverPolicy", "fp"), Destination(service="reviews"),
                                               OutlierDetection(5, "2s", "30s", 100), peer_confirmation=False)),
    "access-policy": ("AccessPolicy", "ap", "destination: {multiclusterService: reviews}",
                      AccessPolicy(meta("AccessPolicy", "ap"), Destination(multicluster_service="reviews"), "ALLOW",
                                   (), (), "STRICT")),
    "trust-policy": ("TrustPolicy", "mesh", "root: {generate: {}}",
                     TrustPolicy(meta("TrustPolicy", "mesh"), "cluster.local", "EC-P256", 87600 * HOUR, None, None,
                                 True, 2160 * HOUR, 20, 0, 24 * HOUR, False)),
    "trust-policy-partial": ("TrustPolicy", "mesh", "root: {generate: {algorithm: RSA-4096}}\n"
                             "  intermediate: {pathLength: 2}\n  rotation: {restartIstiod: true}",
                             TrustPolicy(meta("TrustPolicy", "mesh"), algorithm="RSA-4096", path_length=2,
                                         restart_istiod=True)),
    "trust-policy-secret": ("TrustPolicy", "mesh", "root: {secretRef: {namespace: meshfleet-system, name: root-ca}}",
                            TrustPolicy(meta("TrustPolicy", "mesh"), secret_ref=("meshfleet-system", "root-ca"),
                                        generate=False)),
}


def minimal(kind: str, name: str, spec: str) -> str:
    namespace = "" if kind in CLUSTER_SCOPED else ", namespace: bookinfo"
    return (f"apiVersion: meshfleet.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}{namespace}}}\n"
            f"spec:\n  {spec}\n")


@pytest.mark.parametrize("case", list(MINIMAL))
def test_defaults_are_applied(case: str) -> None:
    kind, name, spec, expected = MINIMAL[case]
    resources, errors = parse_file(minimal(kind, name, spec), FILE)
    assert errors == []
    assert [bare(r) for r in resources] == [expected]


def crd_schema(kind: str) -> dict[str, Any]:
    crd = next(d for d in CRD_DOCS if d["spec"]["names"]["kind"] == kind)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def defaulted(value: Any, schema: dict[str, Any], path: str, applied: set[str]) -> Any:
    """`value` with the CRD's defaults filled in as the API server does (a defaulted object gets its own)."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = dict(value)
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
                applied.add(f"{path}.{key}")
        return {k: defaulted(v, props[k], f"{path}.{k}", applied) if k in props else v for k, v in out.items()}
    if isinstance(value, list) and "items" in schema:
        return [defaulted(v, schema["items"], f"{path}[]", applied) for v in value]
    return value


def default_paths(schema: dict[str, Any], path: str = "") -> set[str]:
    found = {f"{path}.{k}" for k, s in schema.get("properties", {}).items() if "default" in s}
    for k, s in schema.get("properties", {}).items():
        found |= default_paths(s, f"{path}.{k}")
    if "items" in schema:
        found |= default_paths(schema["items"], f"{path}[]")
    return found


def test_a_resource_as_the_api_server_defaults_it_means_what_the_bare_file_means() -> None:
    """Every `default:` of every policy CRD is exercised, and the parser's default is the CRD's."""
    applied: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for kind, name, spec, _ in MINIMAL.values():
        text = minimal(kind, name, spec)
        doc = yaml.safe_load(text)
        server_side = defaulted(doc, crd_schema(kind), "", applied[kind])
        server_side["metadata"] |= {"uid": "1", "resourceVersion": "7", "generation": 1,
                                    "creationTimestamp": "2026-01-02T03:04:05Z"}
        assert [str(e) for e in SCHEMAS.validate(doc)] == []
        [from_file], errors = parse_file(text, FILE)
        assert errors == []
        assert bare(parse_resource(server_side)) == bare(from_file)
    for kind in KINDS:
        assert applied[kind] == {p for p in default_paths(crd_schema(kind)) if not p.startswith(".status")}, kind


# ------------------------------------------------------------------------------------ mistakes

def bad(base: str, old: str, new: str, message: str, case: str, schema: bool = True) -> Any:
    """A mistake: `base` with `old` replaced by `new`; `schema`: whether the CRD's schema refuses it too.

    The mistakes the schema lets through are the ones only the hub can judge (its parser is the last line).
    """
    return pytest.param(variant(base, old, new), message, schema, id=case)


BAD_DOCUMENTS = [
    # envelope and metadata
    # the API server would drop it (status is written through its subresource); a file must not carry one
    bad(SIMPLE_TP, "metadata:", f"status: {{}}  {MARK}\nmetadata:", "unknown field 'status'", "unknown-top-level-field",
        schema=False),
    bad(SIMPLE_TP, "apiVersion: meshfleet.io/v1alpha1", f"apiVersion: meshfleet.io/v1  {MARK}",
        "apiVersion must be meshfleet.io/v1alpha1, got 'meshfleet.io/v1'", "wrong-api-version"),
    bad(SIMPLE_TP, "apiVersion: meshfleet.io/v1alpha1\nkind: TrafficPolicy", f"kind: TrafficPolicy  {MARK}",
        "apiVersion must be meshfleet.io/v1alpha1, got None", "missing-api-version"),
    bad(SIMPLE_TP, "kind: TrafficPolicy", f"kind: RoutePolicy  {MARK}",
        "unsupported kind 'RoutePolicy' (supported: MulticlusterService, TrafficPolicy, FailoverPolicy, AccessPolicy,"
        " TrustPolicy)",
        "unsupported-kind"),
    bad(SIMPLE_TP, "kind: TrafficPolicy", f"kind: MeshCluster  {MARK}", "MeshCluster is not a policy",
        "meshcluster-kind"),
    bad(SIMPLE_TP, "  name: reviews-split", f"  name: Reviews_Split  {MARK}",
        "metadata.name: 'Reviews_Split' is not a DNS-1123 subdomain", "bad-metadata-name"),
    bad(SIMPLE_TP, "  namespace: bookinfo", f"  namespace: book.info  {MARK}",
        "metadata.namespace: 'book.info' is not a DNS-1123 label", "bad-metadata-namespace"),
    bad(SIMPLE_TP, "  namespace: bookinfo", f"  namespace: bookinfo\n  labels: {{app: 'a b'}}  {MARK}",
        "metadata.labels: label value 'a b' of 'app'", "bad-label"),
    # the simple TrafficPolicy form
    bad(SIMPLE_TP, "      weight: 20", f"      weigth: 20  {MARK}", "unknown field 'spec.route[1].weigth'",
        "unknown-field-typo"),
    bad(SIMPLE_TP, "      weight: 20", f"      weight: 101  {MARK}",
        "spec.route[1].weight: must be an integer 0-100, got 101", "weight-101"),
    bad(SIMPLE_TP, "      weight: 20", f"      weight: -1  {MARK}",
        "spec.route[1].weight: must be an integer 0-100, got -1", "weight-negative"),
    bad(SIMPLE_TP, "      weight: 20", f'      weight: "20"  {MARK}',
        "spec.route[1].weight: must be an integer 0-100, got '20'", "weight-string"),
    bad(SIMPLE_TP, "      weight: 20", f"      weight: true  {MARK}",
        "spec.route[1].weight: must be an integer 0-100, got True", "weight-bool"),
    # the API server would take 20.0 as 20; a file is held to the integer the CRD declares
    bad(SIMPLE_TP, "      weight: 20", f"      weight: 20.0  {MARK}",
        "spec.route[1].weight: must be an integer 0-100, got 20.0", "weight-float", schema=False),
    # the error may point at `route:` or at the start of its list: both are the offending field
    bad(SIMPLE_TP, "  route:\n    - cluster: us-east-1\n      weight: 80",
        f"  route:  {MARK}\n    - cluster: us-east-1  {MARK}\n      weight: 70",
        "spec.route: weights add up to 90, not 100", "weights-sum-to-90"),
    bad(SIMPLE_TP, "    - cluster: eu-west-1", f"    - cluster: us-east-1  {MARK}",
        "spec.route[1].cluster: cluster 'us-east-1' listed twice", "duplicate-route-cluster"),
    bad(SIMPLE_TP, "    - cluster: eu-west-1", f"    - cluster: EU_West  {MARK}",
        "spec.route[1].cluster: 'EU_West' is not a DNS-1123 label", "bad-route-cluster-name"),
    bad(SIMPLE_TP, "  route:\n    - cluster: us-east-1\n      weight: 80\n    - cluster: eu-west-1\n      weight: 20\n",
        f"  route: []  {MARK}\n", "spec.route must be a non-empty list", "empty-route"),
    bad(SIMPLE_TP, "    service: reviews", f"    service: 42  {MARK}",
        "spec.destination.service: must be a string, got int", "service-not-a-string"),
    bad(SIMPLE_TP, "spec:\n", f"spec:\n  clients: {{clusters: []}}  {MARK}\n",
        "spec.clients.clusters must be a non-empty list", "empty-clients"),
    bad(SIMPLE_TP, "spec:\n", f"spec:\n  clients: {{clusters: [us-east-1, eu-west-1, us-east-1]}}  {MARK}\n",
        "spec.clients.clusters[2]: cluster 'us-east-1' listed twice", "client-twice"),
    bad(SIMPLE_TP, "spec:\n  destination:\n    service: reviews\n", f"spec:  {MARK}\n",
        "spec.destination: required field missing", "missing-spec-destination"),
    bad(SIMPLE_TP, "    service: reviews", f"    service: reviews\n    multiclusterService: reviews  {MARK}",
        "spec.destination: exactly one of service and multiclusterService must be set", "service-and-mcs"),
    # MulticlusterService
    bad(MCS, "  host: ratings.mesh.example", f"  hosts: ratings.mesh.example  {MARK}", "unknown field 'spec.hosts'",
        "mcs-unknown-field"),
    bad(MCS, "  name: ratings", f"  name: ratings.v2  {MARK}", "metadata.name: 'ratings.v2' is not a DNS-1123 label",
        "mcs-name-not-a-label", schema=False),  # the CRD says so; the real API server checks it, CRDSchemas not
    bad(MCS, "  service: ratings-v2", f"  service: Ratings  {MARK}", "spec.service: 'Ratings' is not a DNS-1123 label",
        "mcs-bad-service"),
    bad(MCS, "  host: ratings.mesh.example", f"  host: ratings.bookinfo.svc.cluster.local  {MARK}",
        "spec.host: 'ratings.bookinfo.svc.cluster.local' is a cluster-local name", "mcs-host-cluster-local"),
    bad(MCS, "  host: ratings.mesh.example", f"  host: Ratings.Mesh  {MARK}",
        "spec.host: 'Ratings.Mesh' is not a DNS-1123 subdomain", "mcs-host-uppercase"),
    bad(MCS, "  backends:\n    clusterSelector:",
        f"  backends:\n    clusters: [us-east-1]\n    clusterSelector:  {MARK}",
        "spec.backends: exactly one of clusters and clusterSelector must be set", "mcs-both-backends"),
    bad(MCS, "  exportTo:\n    clusters: [us-east-1, eu-west-1]\n", f"  exportTo: {{}}  {MARK}\n",
        "spec.exportTo: exactly one of clusters and clusterSelector must be set", "mcs-empty-export"),
    bad(MCS, "          operator: In", f"          operator: in  {MARK}",
        "spec.backends.clusterSelector.matchExpressions[0].operator: must be one of In, NotIn, Exists, DoesNotExist,"
        " got 'in'", "mcs-bad-operator"),
    bad(MCS, "        - key: region\n          operator: In\n          values: [us-east, ap-south]\n",
        f"        - key: region  {MARK}\n          operator: NotIn\n",
        "spec.backends.clusterSelector.matchExpressions[0].values: must be non-empty for NotIn", "mcs-notin-no-values"),
    bad(MCS, "          operator: Exists", f"          operator: Exists\n          values: [a]  {MARK}",
        "spec.backends.clusterSelector.matchExpressions[1].values: must be empty for Exists", "mcs-exists-values"),
    bad(MCS, "        - key: example.com/tier", f"        - key: example.com/Tier/x  {MARK}",
        "spec.backends.clusterSelector.matchExpressions[1].key: 'example.com/Tier/x'", "mcs-bad-expression-key"),
    bad(MCS, "        env: prod", f"        env: prod!  {MARK}",
        "spec.backends.clusterSelector.matchLabels: label value 'prod!' of 'env'", "mcs-bad-label-value"),
    bad(MCS, "        env: prod", f"        not a key: prod  {MARK}",
        "spec.backends.clusterSelector.matchLabels: label key 'not a key'", "mcs-bad-label-key", schema=False),
    bad(MCS, "    clusters: [us-east-1, eu-west-1]", f"    clusters: [us-east-1, us-east-1]  {MARK}",
        "spec.exportTo.clusters[1]: cluster 'us-east-1' listed twice", "mcs-export-twice"),
    bad(MCS, "    - name: grpc", f"    - name: http  {MARK}", "spec.ports[1].name: port name 'http' listed twice",
        "mcs-port-name-twice"),
    bad(MCS, "      number: 7070", f"      number: 9080  {MARK}", "spec.ports[1].number: port 9080 listed twice",
        "mcs-port-number-twice"),
    bad(MCS, "      protocol: GRPC", f"      protocol: MONGO  {MARK}",
        "spec.ports[1].protocol: must be one of HTTP, HTTP2, GRPC, TCP, TLS, HTTPS, got 'MONGO'", "mcs-bad-protocol"),
    bad(MCS, "      number: 7070", f"      number: 70000  {MARK}",
        "spec.ports[1].number: must be an integer 1-65535, got 70000", "mcs-port-70000"),
    # TrafficPolicy with HTTP rules
    bad(TP, "    - name: default", f"    - name: canary  {MARK}",
        "spec.http[1].name: rule name 'canary' is already used by spec.http[0]", "tp-rule-name-twice"),
    bad(TP, "      route:\n        - cluster: us-east-1\n          weight: 100",
        f"      route:  {MARK}\n        - cluster: us-east-1\n          weight: 90",
        "spec.http[1].route: weights add up to 90, not 100", "tp-weights-sum-to-90"),
    bad(TP, "        - cluster: ap-south-1", f"        - cluster: us-east-1  {MARK}",
        "spec.http[0].route[1].cluster: cluster 'us-east-1' with subset 'v3' listed twice", "tp-target-twice"),
    bad(TP, "          subset: v3\n          weight: 50\n        - cluster: ap-south-1",
        f"          subset: V3  {MARK}\n          weight: 50\n        - cluster: ap-south-1",
        "spec.http[0].route[0].subset: 'V3' is not a DNS-1123 label", "tp-subset-uppercase"),
    bad(TP, "          weight: 100\n",
        f"          weight: 100\n  route: [{{cluster: us-east-1, weight: 100}}]  {MARK}\n",
        "spec: exactly one of route and http must be set (http and route are)", "tp-route-and-http"),
    bad(TP, "      retries:", f"      retry:  {MARK}", "unknown field 'spec.http[0].retry'", "tp-unknown-field"),
    bad(TP, "      timeout: 3s", f"      timeout: 3 seconds  {MARK}",
        "spec.http[0].timeout: '3 seconds' is not a duration", "tp-bad-duration"),
    bad(TP, "      timeout: 3s", f"      timeout: 1d  {MARK}", "spec.http[0].timeout: '1d' is not a duration",
        "tp-duration-in-days"),
    bad(TP, "      timeout: 3s", f"      timeout: 0s  {MARK}", "spec.http[0].timeout: must be at least 1ms, got 0s",
        "tp-zero-timeout"),
    bad(TP, "        perTryTimeout: 1500ms", f"        perTryTimeout: 3001ms  {MARK}",
        "spec.http[0].retries.perTryTimeout: 3001ms exceeds the rule's timeout 3s", "tp-try-longer-than-timeout"),
    bad(TP, "        attempts: 2", f"        attempts: 11  {MARK}",
        "spec.http[0].retries.attempts: must be an integer 0-10, got 11", "tp-11-retries"),
    bad(TP, "        retryOn: 5xx,reset", f'        retryOn: "5xx, reset"  {MARK}',
        "spec.http[0].retries.retryOn: '5xx, reset' is not valid", "tp-retry-on-with-space"),
    bad(TP, "          httpStatus: 503", f"          httpStatus: 600  {MARK}",
        "spec.http[0].fault.abort.httpStatus: must be an integer 200-599, got 600", "tp-abort-600"),
    bad(TP, "          percentage: 0.5", f"          percentage: 120  {MARK}",
        "spec.http[0].fault.delay.percentage: must be a number 0-100 (percent), got 120", "tp-delay-120-percent"),
    bad(TP, "          fixedDelay: 1m30s", f"          fixedDelay: 90  {MARK}",
        "spec.http[0].fault.delay.fixedDelay: must be a string, got int", "tp-delay-number"),
    bad(TP, "      fault:\n        delay:\n          fixedDelay: 1m30s\n          percentage: 0.5\n        abort:\n"
        "          httpStatus: 503\n", f"      fault: {{}}  {MARK}\n",
        "spec.http[0].fault: needs a delay, an abort or both", "tp-empty-fault"),
    bad(TP, "      mirror:\n        cluster: eu-west-1\n", f"      mirror:  {MARK}\n",
        "spec.http[0].mirror.cluster: required field missing", "tp-mirror-without-cluster"),
    bad(TP, "          uri: {prefix: /reviews/}", f"          uri: {{prefix: /reviews/, exact: /r}}  {MARK}",
        "spec.http[0].match[0].uri: exactly one of exact, prefix and regex must be set", "tp-uri-exact-and-prefix"),
    bad(TP, "            x-user: {exact: jason}", f"            x-user: {{}}  {MARK}",
        "spec.http[0].match[0].headers.x-user: exactly one of exact, prefix and regex must be set",
        "tp-empty-header-match"),
    bad(TP, "            x-user: {exact: jason}", f"            x user: {{exact: jason}}  {MARK}",
        "spec.http[0].match[0].headers.x user: 'x user' is not a valid header name", "tp-bad-header-name",
        schema=False),
    bad(TP, "            v: {regex: \"^3\"}", f"            v&w: {{regex: \"^3\"}}  {MARK}",
        "spec.http[0].match[0].queryParams.v&w: 'v&w' is not a valid query parameter name", "tp-bad-query-name",
        schema=False),
    bad(TP, "            v: {regex: \"^3\"}", f"            v: {{prefix: \"3\"}}  {MARK}",
        "spec.http[0].match[0].queryParams.v: Istio matches query parameters by exact or regex only",
        "tp-query-prefix"),
    bad(TP, "        - uri: {exact: /canary}", f"        - {{}}  {MARK}",
        "spec.http[0].match[1]: an empty match matches every request", "tp-empty-match"),
    bad(TP, "    - name: default\n", f"    - name: default\n      match: []  {MARK}\n",
        "spec.http[1].match must be a non-empty list", "tp-empty-match-list"),
    bad(TP, "    clusters: [us-east-1, eu-west-1]", f"    clusters: [us-east-1, EU]  {MARK}",
        "spec.clients.clusters[1]: 'EU' is not a DNS-1123 label", "tp-bad-client"),
    # FailoverPolicy
    bad(FP, "  priority:\n    mode: Explicit\n    clusters: [us-east-1, ap-south-1]\n",
        f"  priority:  {MARK}\n    mode: Explicit\n", "spec.priority.clusters: required when mode is Explicit",
        "fp-explicit-without-clusters"),
    bad(FP, "    clusters: [us-east-1, ap-south-1]", f"    clusters: [us-east-1, us-east-1]  {MARK}",
        "spec.priority.clusters[1]: cluster 'us-east-1' listed twice", "fp-priority-cluster-twice"),
    bad(FP, "    mode: Explicit", f"    mode: Nearest  {MARK}",
        "spec.priority.mode: must be one of Topology, Explicit, got 'Nearest'", "fp-bad-mode"),
    bad(FP, "    consecutive5xxErrors: 3", f"    consecutive5xxErrors: 0  {MARK}",
        "spec.outlierDetection.consecutive5xxErrors: must be an integer 1-1000, got 0", "fp-zero-errors"),
    bad(FP, "    maxEjectionPercent: 50", f"    maxEjectionPercent: 150  {MARK}",
        "spec.outlierDetection.maxEjectionPercent: must be an integer 0-100, got 150", "fp-eject-150-percent"),
    bad(FP, "    interval: 5s", f"    interval: 0ms  {MARK}",
        "spec.outlierDetection.interval: must be at least 1ms, got 0ms", "fp-zero-interval"),
    bad(FP, "    baseEjectionTime: 1m", f"    baseEjectionTime: forever  {MARK}",
        "spec.outlierDetection.baseEjectionTime: 'forever' is not a duration", "fp-bad-ejection-time"),
    bad(FP, "  holdDown: 5m", f"  holdDown: 5 min  {MARK}", "spec.holdDown: '5 min' is not a duration",
        "fp-bad-duration"),
    bad(FP, "  holdDown: 5m", f"  holdDown: 24h1s  {MARK}", "spec.holdDown: must be at most 24h, got 24h1s",
        "fp-hold-down-over-24h"),
    bad(FP, "  evictLostClusters: false", f'  evictLostClusters: "no"  {MARK}',
        "spec.evictLostClusters: must be true or false, got 'no'", "fp-evict-string"),
    bad(FP, "  peerConfirmation: false", f'  peerConfirmation: "off"  {MARK}',
        "spec.peerConfirmation: must be true or false, got 'off'", "fp-peer-confirmation-string"),
    bad(FP, "  peerConfirmation: false", f"  peerConfirmations: false  {MARK}",
        "unknown field 'spec.peerConfirmations'", "fp-peer-confirmation-typo"),
    bad(FP, "    service: ratings", f"    all: true  {MARK}", "unknown field 'spec.destination.all'",
        "fp-destination-all"),
    # AccessPolicy
    bad(AP, "  action: DENY", f"  action: deny  {MARK}", "spec.action: must be one of ALLOW, DENY, got 'deny'",
        "ap-bad-action"),
    bad(AP, "      methods: [POST, GET]", f"      methods: [POST, FETCH]  {MARK}",
        "spec.to[0].methods[1]: must be one of GET, HEAD, POST", "ap-bad-method"),
    bad(AP, "      methods: [POST, GET]", f"      methods: [POST, POST]  {MARK}",
        "spec.to[0].methods[1]: method 'POST' listed twice", "ap-method-twice"),
    bad(AP, "    service: ratings", f"    all: false  {MARK}",
        "spec.destination.all: must be true (omit it to name a service), got False", "ap-all-false"),
    bad(AP, "    service: ratings", f"    service: ratings\n    all: true  {MARK}",
        "spec.destination: exactly one of service, multiclusterService and all must be set", "ap-all-and-service"),
    bad(AP, "    - namespaces: [sandbox]", f"    - {{}}  {MARK}",
        "spec.from[1]: needs clusters, namespaces or serviceAccounts", "ap-empty-source"),
    bad(AP, "    - paths: [\"*.png\"]", f"    - {{}}  {MARK}", "spec.to[1]: needs ports, methods or paths",
        "ap-empty-operation"),
    bad(AP, "    - ports: [9080, 8080]", f"    - ports: [9080, 0]  {MARK}",
        "spec.to[0].ports[1]: must be an integer 1-65535, got 0", "ap-port-0"),
    bad(AP, "      paths: [/ratings/*, /health]", f"      paths: [ratings/*]  {MARK}",
        "spec.to[0].paths[0]: 'ratings/*' is not valid", "ap-path-without-slash"),
    bad(AP, "      paths: [/ratings/*, /health]", f"      paths: [/ratings/*/x*]  {MARK}",
        "spec.to[0].paths[0]: '/ratings/*/x*' is not valid", "ap-path-two-wildcards"),
    bad(AP, "      namespaces: [bookinfo]", f"      namespaces: [Bookinfo]  {MARK}",
        "spec.from[0].namespaces[0]: 'Bookinfo' is not a DNS-1123 label", "ap-bad-namespace"),
    bad(AP, "      serviceAccounts: [bookinfo-reviews, bookinfo-admin]",
        f"      serviceAccounts: [bookinfo-reviews, bookinfo-reviews]  {MARK}",
        "spec.from[0].serviceAccounts[1]: service account 'bookinfo-reviews' listed twice", "ap-account-twice"),
    bad(AP, "  mtls: PERMISSIVE", f"  mtls: DISABLE  {MARK}",
        "spec.mtls: must be one of STRICT, PERMISSIVE, got 'DISABLE'", "ap-mtls-disable"),
    bad(AP, "  from:\n    - clusters: [us-east-1, eu-west-1]\n      namespaces: [bookinfo]\n"
        "      serviceAccounts: [bookinfo-reviews, bookinfo-admin]\n    - namespaces: [sandbox]\n",
        f"  from: []  {MARK}\n", "spec.from must be a non-empty list", "ap-empty-from"),
]
BAD_DOCUMENTS += [
    # TrustPolicy
    bad(TRUST, "  labels: {team: platform}", f"  namespace: istio-system  {MARK}",
        "metadata.namespace: a TrustPolicy is cluster-scoped: remove the namespace ('istio-system')",
        "trust-namespaced"),
    bad(TRUST, "  root:\n    generate:\n", "  root:\n    secretRef: {namespace: meshfleet-system, name: root-ca}\n"
        f"    generate:  {MARK}\n",  # the second alternative given is the one too many
        "spec.root: exactly one of generate, secretRef and files must be set (secretRef and generate are)",
        "trust-secret-and-generate"),
    bad(TRUST_SECRET, "      name: mesh-root-ca\n", f"      name: mesh-root-ca\n    files:  {MARK}\n"
        "      certificate: /etc/meshfleet/root/ca.crt\n      key: /etc/meshfleet/root/ca.key\n",
        "spec.root: exactly one of generate, secretRef and files must be set (secretRef and files are)",
        "trust-secret-and-files"),
    bad(TRUST_FILES, "  root:\n    files:\n      certificate: /etc/meshfleet/root/ca.crt\n"
        "      key: /etc/meshfleet/root/ca.key\n", f"  root: {{}}  {MARK}\n",
        "spec.root: exactly one of generate, secretRef and files must be set", "trust-no-root"),
    bad(TRUST, "spec:\n  trustDomain: mesh.example.com\n  root:\n    generate:\n      algorithm: EC-P384\n"
        "      validity: 43800h\n", f"spec:  {MARK}\n  trustDomain: mesh.example.com\n",
        "spec.root: required field missing", "trust-root-missing"),
    bad(TRUST, "      algorithm: EC-P384", f"      algorithm: RSA-2048  {MARK}",
        "spec.root.generate.algorithm: must be one of EC-P256, EC-P384, RSA-4096, got 'RSA-2048'",
        "trust-bad-algorithm"),
    bad(TRUST, "    ttl: 720h", f"    ttl: 43800h  {MARK}",
        "spec.intermediate.ttl: intermediate.ttl must be shorter than root.generate.validity (43800h is not"
        " shorter than 43800h)", "trust-ttl-as-long-as-root"),
    bad(TRUST, "    ttl: 720h", f"    ttl: 50000h  {MARK}",
        "intermediate.ttl must be shorter than root.generate.validity", "trust-ttl-beyond-root"),
    bad(TRUST, "    ttl: 720h", f"    ttl: 30d  {MARK}", "spec.intermediate.ttl: '30d' is not a duration",
        "trust-ttl-in-days"),
    bad(TRUST, "    ttl: 720h", f"    ttl: 30m  {MARK}", "spec.intermediate.ttl: must be at least 1h, got 30m",
        "trust-ttl-30m"),
    bad(TRUST, "      validity: 43800h", f"      validity: 12h  {MARK}",
        "spec.root.generate.validity: must be at least 24h, got 12h", "trust-validity-12h"),
    bad(TRUST, "    gracePeriod: 1h30m", f"    gracePeriod: a day  {MARK}",
        "spec.rotation.gracePeriod: 'a day' is not a duration", "trust-bad-grace-period"),
    bad(TRUST, "    pathLength: 1", f"    pathLength: 4  {MARK}", "spec.intermediate.pathLength: must be an integer"
        " 0-3, got 4", "trust-path-length-4"),
    bad(TRUST, "    renewBefore: 30", f"    renewBefore: 0  {MARK}",
        "spec.intermediate.renewBefore: must be an integer 1-90, got 0", "trust-renew-before-0"),
    bad(TRUST_FILES, "      key: /etc/meshfleet/root/ca.key", f"      key: root/ca.key  {MARK}",
        "spec.root.files.key: must be an absolute path, got 'root/ca.key'", "trust-relative-key-path"),
    bad(TRUST_FILES, "      certificate: /etc/meshfleet/root/ca.crt\n", f"      certificate: ./ca.crt  {MARK}\n",
        "spec.root.files.certificate: must be an absolute path, got './ca.crt'", "trust-relative-certificate-path"),
    bad(TRUST_FILES, "    files:\n      certificate: /etc/meshfleet/root/ca.crt\n"
                     "      key: /etc/meshfleet/root/ca.key\n",
        f"    files:  {MARK}\n      certificate: /etc/meshfleet/root/ca.crt\n",
        "spec.root.files.key: required field missing", "trust-files-without-key"),
    bad(TRUST_SECRET, "      namespace: meshfleet-system", f"      namespace: Meshfleet  {MARK}",
        "spec.root.secretRef.namespace: 'Meshfleet' is not a DNS-1123 label", "trust-bad-secret-namespace"),
    bad(TRUST, "  trustDomain: mesh.example.com", f"  trustDomain: Mesh.Example  {MARK}",
        "spec.trustDomain: 'Mesh.Example' is not a DNS-1123 subdomain", "trust-bad-domain"),
    bad(TRUST, "    restartIstiod: true", f"    restartIstiod: yes please  {MARK}",
        "spec.rotation.restartIstiod: must be true or false, got 'yes please'", "trust-restart-string"),
    bad(TRUST, "    gracePeriod: 1h30m", f"    grace: 1h  {MARK}", "unknown field 'spec.rotation.grace'",
        "trust-rotation-typo"),
]
BAD_DOCUMENTS += [
    bad(MCS, "    clusterSelector:", f"    clusterSelectors:  {MARK}", "unknown field 'spec.backends.clusterSelectors'",
        "mcs-selector-typo"),
    pytest.param(variant(FP, "    mode: Explicit\n    clusters: [us-east-1, ap-south-1]",
                         f"    mode: Topology\n    clusters: [us-east-1, ap-south-1]  {MARK}"),
                 "spec.priority.clusters: only allowed when mode is Explicit", True, id="fp-topology-with-clusters"),
    pytest.param(f"- not a mapping  {MARK}\n", "document must be a mapping, got list", True,
                 id="document-not-a-mapping"),
]


@pytest.mark.parametrize(("document", "message", "schema_refuses"), BAD_DOCUMENTS)
def test_error_names_file_line_and_field(document: str, message: str, schema_refuses: bool) -> None:
    text = FIRST + document
    resources, errors = parse_file(text, FILE)

    assert len(errors) == 1, errors
    [error] = errors
    assert error.file == FILE
    assert message in error.message
    assert error.line in marked_lines(text), (error.line, text.splitlines()[error.line - 1], error.message)
    assert str(error) == f"{FILE}:{error.line}: {error.message}"
    assert [r.meta.name for r in resources] == ["details-split"]  # the other document was fine
    # the CRD refuses the same document (or, for the hub's own checks, accepts it: only the hub can tell)
    assert bool(SCHEMAS.validate(yaml.safe_load(document))) == schema_refuses


def crd_mistakes() -> list[Any]:
    """The mistakes tests/test_crds.py shows the CRDs refuse, in the spec of a policy kind."""
    docs = [(p.values[0], p.id) for p in test_crds.MISTAKES]
    return [pytest.param(doc, id=case) for doc, case in docs
            if isinstance(doc, dict) and doc.get("kind") in KINDS and "status" not in doc]


@pytest.mark.parametrize("doc", crd_mistakes())
def test_every_mistake_the_crds_refuse_is_refused_here_too(doc: dict[str, Any]) -> None:
    """A file is held to what the API server holds a CR to (tests/test_crds.py lists the mistakes)."""
    with pytest.raises(ValueError, match=r"spec|metadata|apiVersion|kind"):
        parse_resource(doc)
    resources, errors = parse_file(yaml.safe_dump(doc, sort_keys=False), FILE)
    assert (resources, len(errors)) == ([], 1)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param(FIRST + SIMPLE_TP.replace("  namespace: bookinfo", "    namespace: bookinfo"), 18,
                     id="bad-indentation-in-second-document"),
        pytest.param(FIRST + SIMPLE_TP.replace("    service: reviews", "    service: [reviews"), 22,
                     id="unclosed-flow-sequence"),
        pytest.param("apiVersion: meshfleet.io/v1alpha1\nkind: 'TrafficPolicy\n", 3, id="unterminated-quote"),
    ],
)
def test_yaml_syntax_error_gives_line_and_no_resources(text: str, line: int) -> None:
    resources, errors = parse_file(text, FILE)
    assert resources == []
    assert len(errors) == 1
    assert (errors[0].file, errors[0].line) == (FILE, line)
    assert errors[0].message.startswith("YAML syntax error: ")


def test_one_good_and_one_bad_document_returns_the_error() -> None:
    bad_doc = SIMPLE_TP.replace("      weight: 20", "      weight: 101")
    _, errors = parse_file(FIRST + bad_doc, FILE)
    assert errors == [PolicyError(FILE, 26, "spec.route[1].weight: must be an integer 0-100, got 101")]


def test_every_bad_document_is_reported() -> None:
    bad_kind = SIMPLE_TP.replace("kind: TrafficPolicy", "kind: Nope")
    bad_name = FP.replace("  name: ratings-failover", "  name: UPPER")
    resources, errors = parse_file(bad_kind + "---\n" + bad_name + "---\n" + AP, FILE)
    assert [r.meta.kind for r in resources] == ["AccessPolicy"]
    assert [e.line for e in errors] == [2, 18]


def test_duplicate_keys_are_an_error_at_the_second_key() -> None:
    text = ("apiVersion: meshfleet.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: a, namespace: bookinfo}\n"
            "spec:\n  destination: {service: reviews}\n  route:\n    - cluster: us-east-1\n      weight: 100\n"
            "      weight: 0\n")
    resources, errors = parse_file(text, "dup.yaml")
    assert not resources
    assert [str(e) for e in errors] == ["dup.yaml:9: key 'weight' given twice in one mapping"]


@pytest.mark.parametrize(("text", "seconds"), [
    pytest.param("500ms", 0.5, id="ms"), pytest.param("1m30s", 90, id="minutes-and-seconds"),
    pytest.param("1.5h", 5400, id="fraction"), pytest.param("0s", 0, id="zero"),
    pytest.param("1h1m1s1ms", 3661.001, id="every-unit"),
])
def test_duration_seconds(text: str, seconds: float) -> None:
    assert float(duration_seconds(text)) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1d", "-1s", "1 s", "s", "1.s", "1us", "1m 30s"])
def test_duration_seconds_refuses_what_the_crd_pattern_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        duration_seconds(text)


# ------------------------------------------------------------------------------------ custom resources


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(crds=SCHEMAS) as fake:
        yield fake


def create(kube: FakeKube, doc: dict[str, Any]) -> dict[str, Any]:
    """Create `doc` through the API (validated against the CRDs) and read it back as a watcher would see it."""
    namespace = doc["metadata"].get("namespace")
    with kube.api_client() as api:
        custom = CustomObjectsApi(api)
        if doc["kind"] in CLUSTER_SCOPED:
            custom.create_cluster_custom_object(GROUP, VERSION, PLURALS[doc["kind"]], doc)
        else:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[doc["kind"]], doc)
    obj = kube.get(doc["apiVersion"], doc["kind"], doc["metadata"]["name"], namespace)
    assert obj is not None
    return obj


FILE_TEXTS = [pytest.param(text, id=name) for name, text in DOCUMENTS.items()] + [
    pytest.param(minimal(*MINIMAL[case][:3]), id=f"minimal-{case}") for case in MINIMAL] + [
    pytest.param(yaml.safe_dump(doc), id=f"example-{doc['metadata']['name']}")
    for d in ("crs", "policies") for p in sorted((ROOT / "examples" / d).glob("*.yaml"))
    for doc in yaml.safe_load_all(p.read_text()) if doc["kind"] in KINDS]


@pytest.mark.parametrize("text", FILE_TEXTS)
def test_a_custom_resource_means_what_the_same_file_text_means(kube: FakeKube, text: str) -> None:
    [from_file], errors = parse_file(text, FILE)
    assert errors == []
    obj = create(kube, yaml.safe_load(text))

    from_cr = parse_resource(obj)

    assert bare(from_cr) == bare(from_file)
    m = from_cr.meta
    assert (m.source, m.created, m.generation) == (
        m.ref, obj["metadata"]["creationTimestamp"], obj["metadata"]["generation"])
    assert m.ref == (f"{m.kind} {m.name}" if m.kind in CLUSTER_SCOPED else f"{m.kind} bookinfo/{m.name}")
    assert m.created and m.generation == 1


def test_a_custom_resource_with_status_and_server_metadata_parses(kube: FakeKube) -> None:
    obj = create(kube, yaml.safe_load(FP))
    obj["status"] = {"observedGeneration": 1, "conditions": []}
    obj["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
    assert bare(parse_resource(obj)) == EXPECTED["failover-policy"]


@pytest.mark.parametrize(("obj", "message"), [
    pytest.param(yaml.safe_load(variant(TP, "          weight: 100", "          weight: 90")),
                 r"^spec.http\[1\].route: weights add up to 90, not 100$", id="field-path"),
    pytest.param({**yaml.safe_load(TRUST), "metadata": {"name": "mesh", "namespace": "istio-system"}},
                 r"^metadata.namespace: a TrustPolicy is cluster-scoped: remove the namespace \('istio-system'\)$",
                 id="trust-policy-with-namespace"),
    pytest.param(yaml.safe_load(variant(TRUST_FILES, "      key: /etc/meshfleet/root/ca.key", "      key: ca.key")),
                 r"^spec.root.files.key: must be an absolute path, got 'ca.key'$", id="trust-policy-relative-key"),
    pytest.param({**yaml.safe_load(AP), "kind": "AuthorizationPolicy"}, "unsupported kind 'AuthorizationPolicy'",
                 id="other-kind"),
])
def test_parse_resource_raises_value_error_naming_the_field(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_resource(obj)


# ------------------------------------------------------------------------------------ TrustPolicy


def test_key_algorithms_are_the_crds_and_the_pkis() -> None:
    generate = crd_schema("TrustPolicy")["properties"]["spec"]["properties"]["root"]["properties"]["generate"]
    assert KEY_ALGORITHMS == ALGORITHMS == tuple(generate["properties"]["algorithm"]["enum"])


def test_trust_policies_are_kept_apart_from_what_translation_reads() -> None:
    text = FIRST + TRUST + "---\n" + TRUST_FILES
    resources, errors = parse_file(text, FILE)
    assert errors == []  # two TrustPolicies are no parse error: the hub's trust manager says which one it uses
    grouped = Resources.of(resources)
    assert [t.meta.name for t in grouped.trust] == ["mesh", "on-disk"]
    assert [r.meta.kind for r in grouped.all()] == ["TrafficPolicy"]
    assert grouped != Resources.of(resources[:2])  # a TrustPolicy change is a change of the resources
    assert [t.meta.source for t in grouped.trust] == [f"{FILE}:14", f"{FILE}:33"]
    assert grouped.trust[0].meta.ref == "TrustPolicy mesh" and grouped.trust[0].key == "TrustPolicy//mesh"


@pytest.mark.parametrize("alternatives", [
    pytest.param({"generate": False}, id="none"),
    pytest.param({"secret_ref": ("meshfleet-system", "root-ca")}, id="generate-and-secret"),
    pytest.param({"generate": False, "secret_ref": ("a", "b"), "files": ("/c", "/k")}, id="secret-and-files"),
])
def test_a_trust_policy_model_has_exactly_one_root(alternatives: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly one of generate, secret_ref and files"):
        TrustPolicy(meta("TrustPolicy", "mesh"), **alternatives)


def test_cr_ref_names_cluster_scoped_resources_without_a_namespace() -> None:
    assert cr_ref("TrustPolicy", "", "mesh") == cr_ref("TrustPolicy", None, "mesh") == "TrustPolicy mesh"
    assert cr_ref("TrafficPolicy", "bookinfo", "split") == "TrafficPolicy bookinfo/split"
