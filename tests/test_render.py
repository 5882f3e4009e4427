"""What agents render from an intent, every object checked against Istio 1.30's real CRD schemas.

Most tests build intents by hand (the render contract alone, through the wire format); the last ones
render the example fleet through the hub's translation.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.render import ORIGIN_ANNOTATION, RenderContext, RenderError, policy_object_name, render
from agent.settings import AgentSettings
from agent.syncing import Agent
from meshfleet.intents import (
    MEDIA_TYPE,
    AccessOperation,
    AccessRule,
    AccessSource,
    Backend,
    ClusterIntent,
    ClusterRef,
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
    decode,
    encode,
)
from meshfleet.names import dns1123_subdomain_error
from meshfleet.v1 import hub_pb2
from tests.istio_support import istio_schemas

US = ClusterRef("us-east-1", "us-east", "us-east-1a", "net-us-east")
EU = ClusterRef("eu-west-1", "eu-west", "eu-west-1a", "net-eu-west")
AP = ClusterRef("ap-south-1", "ap-south", "ap-south-1a", "net-ap-south")
HTTP = (Port("http", 9080, "HTTP"),)
OWNERSHIP = "app.kubernetes.io/managed-by"
Key = tuple[str, str, str]


def backend(cluster: ClusterRef, *versions: str) -> Backend:
    return Backend(cluster, f"eastwest.{cluster.name}.example", 15443,
                   tuple(Subset(v, {"version": v}) for v in versions))


REVIEWS = ServiceIntent("bookinfo", "reviews", HTTP,
                        (backend(US, "v1", "v2", "v3"), backend(EU, "v1", "v2"), backend(AP)))
DETAILS = ServiceIntent("bookinfo", "details", HTTP, (backend(US), backend(EU)),
                        host="details.bookinfo.mesh.example", service="details-svc")
MONGO = ServiceIntent("bookinfo", "mongodb", (Port("mongo", 27017, "MONGO"),), (backend(US), backend(AP)))


def rendered(cluster: ClusterRef, services: tuple[ServiceIntent, ...] = (), traffic: tuple[TrafficRoute, ...] = (),
             access: tuple[AccessRule, ...] = (), mtls: tuple[MtlsRule, ...] = ()) -> dict[Key, dict[str, Any]]:
    """Render through the wire format; every object must be valid for Istio and share no sub-object."""
    intent = ClusterIntent(cluster, services, traffic, access, mtls)
    objects = render(decode(*encode(intent)), RenderContext(cluster.name))
    schemas = istio_schemas()
    for obj in objects:
        errors = schemas.validate(obj)
        assert not errors, f"{obj['kind']} {obj['metadata']['name']}: {[str(e) for e in errors]}"
        assert "&id" not in yaml.safe_dump(obj), "shared sub-objects come out of YAML as anchors"
        assert obj["metadata"]["labels"] == {OWNERSHIP: "meshfleet-agent", "meshfleet.io/cluster": cluster.name}
    return {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}


def route(*rules: RouteRule, service: ServiceIntent = REVIEWS) -> TrafficRoute:
    return TrafficRoute(f"{service.namespace}/{service.name}-policy", service.namespace, service.name, rules)


def rule(*targets: tuple[ClusterRef, int, str], name: str = "default", **fields: Any) -> RouteRule:
    return RouteRule(name, tuple(WeightedTarget(c.name, w, s) for c, w, s in targets), **fields)


def selected(subset: dict[str, Any], endpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Istio's subset selection: endpoints whose labels include all of the subset's."""
    return [e for e in endpoints if subset["labels"].items() <= e["labels"].items()]


def owner(endpoint: dict[str, Any]) -> str:
    """The cluster whose copy a ServiceEntry endpoint stands for."""
    labels = endpoint["labels"]
    return str(labels.get("meshfleet.io/cluster") or labels["meshfleet.io/subset-of"])


# --------------------------------------------------------------------------- ServiceEntry and DestinationRule


@pytest.mark.parametrize("me", [US, EU, AP], ids=lambda c: c.name)
def test_every_subset_selects_one_endpoint_and_every_cluster_weighs_the_same(me: ClusterRef) -> None:
    objs = rendered(me, (REVIEWS,))
    endpoints = objs[("ServiceEntry", "bookinfo", "reviews-global")]["spec"]["endpoints"]
    subsets = objs[("DestinationRule", "bookinfo", "reviews-global")]["spec"]["subsets"]
    assert [s["name"] for s in subsets] == ["us-east-1", "us-east-1-v1", "us-east-1-v2", "us-east-1-v3",
                                           "eu-west-1", "eu-west-1-v1", "eu-west-1-v2", "ap-south-1"]
    assert len(endpoints) == 1 + 3 + 1 + 2 + 1
    for subset in subsets:
        [endpoint] = selected(subset, endpoints)  # exactly one endpoint (one address) per subset
        cluster, _, version = subset["name"].partition("-v")
        assert owner(endpoint) == cluster
        assert endpoint["labels"].get("version") == (f"v{version}" if version else None)
    totals: dict[str, int] = {}
    for e in endpoints:
        totals[owner(e)] = totals.get(owner(e), 0) + e["weight"]
    assert totals == {"us-east-1": 4, "eu-west-1": 4, "ap-south-1": 4}  # versions do not skew the host's pool


def test_local_copy_direct_remote_copies_through_their_gateway() -> None:
    endpoints = rendered(EU, (REVIEWS,))[("ServiceEntry", "bookinfo", "reviews-global")]["spec"]["endpoints"]
    assert endpoints[4:7] == [
        {"address": "reviews.bookinfo.svc.cluster.local", "ports": {"http": 9080},
         "labels": {"meshfleet.io/cluster": "eu-west-1"}, "locality": "eu-west/eu-west-1a", "network": "net-eu-west",
         "weight": 2},
        {"address": "reviews.bookinfo.svc.cluster.local", "ports": {"http": 9080},
         "labels": {"version": "v1", "meshfleet.io/subset-of": "eu-west-1", "meshfleet.io/subset": "v1"},
         "locality": "eu-west/eu-west-1a", "network": "net-eu-west", "weight": 1},
        {"address": "reviews.bookinfo.svc.cluster.local", "ports": {"http": 9080},
         "labels": {"version": "v2", "meshfleet.io/subset-of": "eu-west-1", "meshfleet.io/subset": "v2"},
         "locality": "eu-west/eu-west-1a", "network": "net-eu-west", "weight": 1},
    ]
    assert endpoints[0]["address"] == "eastwest.us-east-1.example"
    assert endpoints[0]["ports"] == {"http": 15443}


def test_without_versions_one_unweighted_endpoint_per_cluster() -> None:
    objs = rendered(EU, (MONGO,))
    se = objs[("ServiceEntry", "bookinfo", "mongodb-global")]["spec"]
    assert se == {
        "hosts": ["mongodb.bookinfo.global"], "location": "MESH_INTERNAL", "resolution": "DNS",
        "ports": [{"number": 27017, "name": "mongo", "protocol": "MONGO"}],
        "endpoints": [
            {"address": "eastwest.us-east-1.example", "ports": {"mongo": 15443},
             "labels": {"meshfleet.io/cluster": "us-east-1"}, "locality": "us-east/us-east-1a",
             "network": "net-us-east"},
            {"address": "eastwest.ap-south-1.example", "ports": {"mongo": 15443},
             "labels": {"meshfleet.io/cluster": "ap-south-1"}, "locality": "ap-south/ap-south-1a",
             "network": "net-ap-south"},
        ]}
    dr = objs[("DestinationRule", "bookinfo", "mongodb-global")]["spec"]
    assert dr == {"host": "mongodb.bookinfo.global", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
                  "subsets": [{"name": "us-east-1", "labels": {"meshfleet.io/cluster": "us-east-1"}},
                              {"name": "ap-south-1", "labels": {"meshfleet.io/cluster": "ap-south-1"}}]}


def test_a_custom_host_backed_by_a_differently_named_service() -> None:
    objs = rendered(EU, (DETAILS,), (route(rule((EU, 100, "")), service=DETAILS),))
    se = objs[("ServiceEntry", "bookinfo", "details-global")]["spec"]
    assert se["hosts"] == ["details.bookinfo.mesh.example"]
    assert [e["address"] for e in se["endpoints"]] == ["eastwest.us-east-1.example",
                                                       "details-svc.bookinfo.svc.cluster.local"]
    assert objs[("DestinationRule", "bookinfo", "details-global")]["spec"]["host"] == "details.bookinfo.mesh.example"
    vs = objs[("VirtualService", "bookinfo", "details-global")]["spec"]
    assert vs["hosts"] == ["details.bookinfo.mesh.example", "details-svc.bookinfo.svc.cluster.local"]
    assert vs["http"][0]["route"] == [{"destination": {"host": "details.bookinfo.mesh.example", "subset": "eu-west-1"},
                                       "weight": 100}]


TIER_1 = {"meshfleet.io/failover-tier-1": "true"}


@pytest.mark.parametrize("outlier, expected", [
    pytest.param(None, {"tls": {"mode": "ISTIO_MUTUAL"}}, id="none"),
    pytest.param(OutlierDetection(), {
        "tls": {"mode": "ISTIO_MUTUAL"},
        "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s",
                             "maxEjectionPercent": 100},
        "loadBalancer": {"localityLbSetting": {"enabled": True,
                                               "failoverPriority": ["meshfleet.io/failover-tier-1=true"]}}},
                 id="defaults"),
    pytest.param(OutlierDetection(3, "1.5s", "2m", 50), {
        "tls": {"mode": "ISTIO_MUTUAL"},
        "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1.5s", "baseEjectionTime": "2m",
                             "maxEjectionPercent": 50},
        "loadBalancer": {"localityLbSetting": {"enabled": True,
                                               "failoverPriority": ["meshfleet.io/failover-tier-1=true"]}}},
                 id="tuned"),
])
def test_outlier_detection_comes_with_locality_failover(outlier: OutlierDetection | None,
                                                        expected: dict[str, Any]) -> None:
    service = ServiceIntent("bookinfo", "ratings", HTTP, (backend(US), backend(AP)), outlier=outlier)
    objs = rendered(US, (service,))
    assert objs[("DestinationRule", "bookinfo", "ratings-global")]["spec"]["trafficPolicy"] == expected
    # the local copy first, then the other region; no failover order without outlier detection
    labels = [e["labels"] for e in objs[("ServiceEntry", "bookinfo", "ratings-global")]["spec"]["endpoints"]]
    assert labels == [{"meshfleet.io/cluster": "us-east-1", **(TIER_1 if outlier else {})},
                      {"meshfleet.io/cluster": "ap-south-1"}]


def test_a_single_failover_tier_needs_no_failover_priority() -> None:
    service = ServiceIntent("bookinfo", "ratings", HTTP, (backend(EU), backend(AP)), outlier=OutlierDetection())
    objs = rendered(US, (service,))  # both in regions the client does not list: one tier
    assert objs[("DestinationRule", "bookinfo", "ratings-global")]["spec"]["trafficPolicy"]["loadBalancer"] == {
        "localityLbSetting": {"enabled": True}}
    assert [e["labels"] for e in objs[("ServiceEntry", "bookinfo", "ratings-global")]["spec"]["endpoints"]] == [
        {"meshfleet.io/cluster": "eu-west-1"}, {"meshfleet.io/cluster": "ap-south-1"}]


# --------------------------------------------------------------------------- VirtualService

ME_HOSTS = ["reviews.bookinfo.global", "reviews.bookinfo.svc.cluster.local"]


def dest(subset: str, weight: int) -> dict[str, Any]:
    return {"destination": {"host": "reviews.bookinfo.global", "subset": subset}, "weight": weight}


@pytest.mark.parametrize("given, expected", [
    pytest.param(rule((US, 50, "v2"), (EU, 30, "v1"), (AP, 20, "")),
                 {"name": "default", "route": [dest("us-east-1-v2", 50), dest("eu-west-1-v1", 30),
                                               dest("ap-south-1", 20)]}, id="weights-to-clusters-and-subsets"),
    pytest.param(rule((US, 100, "v3"), name="jason",
                      matches=(RequestMatch(headers=(("End-User", StringMatch("exact", "jason")),)),)),
                 {"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                  "route": [dest("us-east-1-v3", 100)]}, id="header-match-lower-cased"),
    pytest.param(rule((EU, 100, ""), matches=(
        RequestMatch(query_params=(("debug", StringMatch("regex", "^(1|true)$")),), uri=StringMatch("prefix", "/api/")),
        RequestMatch(uri=StringMatch("exact", "/health")))),
                 {"name": "default", "match": [{"queryParams": {"debug": {"regex": "^(1|true)$"}},
                                                "uri": {"prefix": "/api/"}}, {"uri": {"exact": "/health"}}],
                  "route": [dest("eu-west-1", 100)]}, id="query-uri-and-alternative-matches"),
    pytest.param(rule((EU, 100, ""), matches=(RequestMatch(uri=StringMatch("prefix", "/a")), RequestMatch())),
                 {"name": "default", "route": [dest("eu-west-1", 100)]}, id="an-empty-match-matches-everything"),
    pytest.param(rule((US, 100, ""), timeout="2.5s", retries=Retries(3, "500ms", "5xx,reset")),
                 {"name": "default", "route": [dest("us-east-1", 100)], "timeout": "2.5s",
                  "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx,reset"}},
                 id="timeout-and-retries"),
    pytest.param(rule((US, 100, ""), retries=Retries(0)),
                 {"name": "default", "route": [dest("us-east-1", 100)], "retries": {"attempts": 0}},
                 id="retries-off"),
    pytest.param(rule((US, 100, ""), fault=Fault(delay="5s", delay_percent=10.0)),
                 {"name": "default", "route": [dest("us-east-1", 100)],
                  "fault": {"delay": {"fixedDelay": "5s", "percentage": {"value": 10.0}}}}, id="fault-delay"),
    pytest.param(rule((US, 100, ""), fault=Fault(abort_status=503, abort_percent=0.5)),
                 {"name": "default", "route": [dest("us-east-1", 100)],
                  "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 0.5}}}}, id="fault-abort"),
    pytest.param(rule((US, 100, ""), fault=Fault("1s", 100.0, 500, 20.0)),
                 {"name": "default", "route": [dest("us-east-1", 100)],
                  "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 100.0}},
                            "abort": {"httpStatus": 500, "percentage": {"value": 20.0}}}}, id="fault-both"),
    pytest.param(rule((US, 100, "v1"), mirror=Mirror("eu-west-1", "v2", 25.0)),
                 {"name": "default", "route": [dest("us-east-1-v1", 100)],
                  "mirror": {"host": "reviews.bookinfo.global", "subset": "eu-west-1-v2"},
                  "mirrorPercentage": {"value": 25.0}}, id="mirror-to-a-subset"),
])
def test_http_rule_features(given: RouteRule, expected: dict[str, Any]) -> None:
    vs = rendered(EU, (REVIEWS,), (route(given),))[("VirtualService", "bookinfo", "reviews-global")]
    assert vs["metadata"]["annotations"] == {"meshfleet.io/policy": "bookinfo/reviews-policy",
                                             "meshfleet.io/origin": "TrafficPolicy/bookinfo/reviews-policy"}
    assert vs["spec"] == {"hosts": ME_HOSTS, "http": [expected]}


def test_rules_keep_their_order() -> None:
    testers = RequestMatch(headers=(("x-test", StringMatch("exact", "1")),))
    rules = (rule((US, 100, "v2"), name="testers", matches=(testers,)), rule((US, 90, "v1"), (AP, 10, ""), name="rest"))
    spec = rendered(AP, (REVIEWS,), (route(*rules),))[("VirtualService", "bookinfo", "reviews-global")]["spec"]
    assert [r["name"] for r in spec["http"]] == ["testers", "rest"]
    assert [[d["destination"]["subset"] for d in r["route"]] for r in spec["http"]] == [
        ["us-east-1-v2"], ["us-east-1-v1", "ap-south-1"]]


def test_a_client_that_does_not_back_the_service_routes_only_the_global_host() -> None:
    vs = rendered(AP, (DETAILS,), (route(rule((US, 100, "")), service=DETAILS),))
    assert vs[("VirtualService", "bookinfo", "details-global")]["spec"]["hosts"] == ["details.bookinfo.mesh.example"]


TCP_AND_HTTP = (Port("http", 8080, "HTTP"), Port("tcp-admin", 9000, "TCP"))


@pytest.mark.parametrize("ports, rules, expected", [
    pytest.param((Port("mongo", 27017, "MONGO"),), (rule((AP, 100, "")),),
                 {"tcp": [{"route": [{"destination": {"host": "svc.bookinfo.global", "subset": "ap-south-1"},
                                      "weight": 100}]}]}, id="tcp-only"),
    pytest.param((Port("https", 443, "HTTPS"),), (rule((US, 70, ""), (AP, 30, "")),),
                 {"tls": [{"match": [{"sniHosts": ["svc.bookinfo.global", "svc.bookinfo.svc.cluster.local"]}],
                           "route": [{"destination": {"host": "svc.bookinfo.global", "subset": "us-east-1"},
                                      "weight": 70},
                                     {"destination": {"host": "svc.bookinfo.global", "subset": "ap-south-1"},
                                      "weight": 30}]}]}, id="tls-routes-by-sni"),
    pytest.param(TCP_AND_HTTP,
                 (rule((US, 100, ""), name="canary", matches=(RequestMatch(uri=StringMatch("prefix", "/beta")),)),
                  rule((AP, 100, ""), name="rest", retries=Retries(2))),
                 {"http": [{"name": "canary", "match": [{"uri": {"prefix": "/beta"}}],
                            "route": [{"destination": {"host": "svc.bookinfo.global", "subset": "us-east-1"},
                                       "weight": 100}]},
                           {"name": "rest", "route": [{"destination": {"host": "svc.bookinfo.global",
                                                                       "subset": "ap-south-1"}, "weight": 100}],
                            "retries": {"attempts": 2}}],
                  "tcp": [{"route": [{"destination": {"host": "svc.bookinfo.global", "subset": "ap-south-1"},
                                      "weight": 100}]}]}, id="mixed-tcp-follows-the-catch-all"),
    pytest.param(TCP_AND_HTTP,
                 (rule((US, 100, ""), name="canary", matches=(RequestMatch(uri=StringMatch("prefix", "/beta")),)),),
                 {"http": [{"name": "canary", "match": [{"uri": {"prefix": "/beta"}}],
                            "route": [{"destination": {"host": "svc.bookinfo.global", "subset": "us-east-1"},
                                       "weight": 100}]}]}, id="mixed-without-catch-all-leaves-tcp-alone"),
])
def test_non_http_ports(ports: tuple[Port, ...], rules: tuple[RouteRule, ...], expected: dict[str, Any]) -> None:
    service = ServiceIntent("bookinfo", "svc", ports, (backend(US), backend(AP)))
    spec = rendered(US, (service,), (route(*rules, service=service),))[("VirtualService", "bookinfo", "svc-global")]
    hosts = ["svc.bookinfo.global", "svc.bookinfo.svc.cluster.local"]
    assert spec["spec"] == {"hosts": hosts, **expected}


@pytest.mark.parametrize("feature", [
    pytest.param({"matches": (RequestMatch(uri=StringMatch("prefix", "/")),)}, id="matches"),
    pytest.param({"timeout": "1s"}, id="timeout"),
    pytest.param({"retries": Retries(2)}, id="retries"),
    pytest.param({"fault": Fault(abort_status=503, abort_percent=1.0)}, id="fault"),
    pytest.param({"mirror": Mirror("us-east-1")}, id="mirror"),
])
def test_http_features_on_a_tcp_only_service_are_refused(feature: dict[str, Any]) -> None:
    with pytest.raises(RenderError, match=r"route bookinfo/mongodb-policy for service bookinfo/mongodb: rule "
                                          r"'default' uses \w+, which only HTTP traffic can honour, but the service "
                                          r"has no HTTP port \(MONGO\)"):
        rendered(US, (MONGO,), (route(rule((AP, 100, ""), **feature), service=MONGO),))


# --------------------------------------------------------------------------- Gateway


@pytest.mark.parametrize("me, services, hosts", [
    pytest.param(US, (REVIEWS,), ["*.global"], id="global-hosts-only"),
    pytest.param(US, (REVIEWS, DETAILS, ServiceIntent("shop", "cart", HTTP, (backend(US),), host="cart.shop.example")),
                 ["*.global", "cart.shop.example", "details.bookinfo.mesh.example"], id="custom-hosts-sorted"),
    pytest.param(AP, (REVIEWS, DETAILS), ["*.global"], id="not-the-custom-host-of-a-service-it-does-not-back"),
    pytest.param(AP, (DETAILS,), None, id="backs-nothing-no-gateway"),
])
def test_east_west_gateway_hosts(me: ClusterRef, services: tuple[ServiceIntent, ...], hosts: list[str] | None) -> None:
    gateway = rendered(me, services).get(("Gateway", "istio-system", "meshfleet-eastwest"))
    if hosts is None:
        assert gateway is None
        return
    assert gateway is not None
    assert gateway["spec"] == {
        "selector": {"istio": "eastwestgateway"},
        "servers": [{"port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                     "tls": {"mode": "AUTO_PASSTHROUGH"}, "hosts": hosts}]}


# --------------------------------------------------------------------------- AuthorizationPolicy, PeerAuthentication

PRODUCTPAGE = "*/ns/bookinfo/sa/bookinfo-productpage"


@pytest.mark.parametrize("given, spec", [
    pytest.param(AccessRule("bookinfo/reviews-from-productpage", "bookinfo", "ALLOW", (("app", "reviews"),),
                            (AccessSource(principals=(PRODUCTPAGE,)),),
                            (AccessOperation((9080,), ("GET", "HEAD")),)),
                 {"selector": {"matchLabels": {"app": "reviews"}}, "action": "ALLOW",
                  "rules": [{"from": [{"source": {"principals": [PRODUCTPAGE]}}],
                             "to": [{"operation": {"ports": ["9080"], "methods": ["GET", "HEAD"]}}]}]},
                 id="allow-principal-to-a-workload"),
    pytest.param(AccessRule("bookinfo/open", "bookinfo", "ALLOW"), {"action": "ALLOW", "rules": [{}]},
                 id="allow-all-namespace-wide"),
    pytest.param(AccessRule("bookinfo/closed", "bookinfo", "DENY", (("app", "ratings"),)),
                 {"selector": {"matchLabels": {"app": "ratings"}}, "action": "DENY", "rules": [{}]}, id="deny-all"),
    pytest.param(AccessRule("bookinfo/no-sandbox", "bookinfo", "DENY", (),
                            (AccessSource(namespaces=("sandbox", "dev")),),
                            (AccessOperation(methods=("POST", "PUT")), AccessOperation((9090,), (), ("/admin*",)))),
                 {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["sandbox", "dev"]}}],
                                               "to": [{"operation": {"methods": ["POST", "PUT"]}},
                                                      {"operation": {"ports": ["9090"], "paths": ["/admin*"]}}]}]},
                 id="deny-namespaces-some-operations"),
    pytest.param(AccessRule("bookinfo/two", "bookinfo", "ALLOW", (("app", "ratings"),),
                            (AccessSource(namespaces=("bookinfo",), principals=("*/sa/reviews",)),
                             AccessSource(namespaces=("monitoring",))),
                            (AccessOperation(methods=("GET",)),)),
                 {"selector": {"matchLabels": {"app": "ratings"}}, "action": "ALLOW", "rules": [
                     {"from": [{"source": {"namespaces": ["bookinfo"], "principals": ["*/sa/reviews"]}}],
                      "to": [{"operation": {"methods": ["GET"]}}]},
                     {"from": [{"source": {"namespaces": ["monitoring"]}}],
                      "to": [{"operation": {"methods": ["GET"]}}]}]}, id="one-rule-per-source"),
    pytest.param(AccessRule("bookinfo/mesh-only", "bookinfo", "ALLOW", (), (AccessSource(),)),
                 {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["*"]}}]}]},
                 id="any-mesh-identity"),
    pytest.param(AccessRule("bookinfo/any-op", "bookinfo", "ALLOW", (), (AccessSource(namespaces=("a",)),),
                            (AccessOperation(methods=("GET",)), AccessOperation())),
                 {"action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["a"]}}]}]},
                 id="an-empty-operation-allows-any-request"),
])
def test_authorization_policies(given: AccessRule, spec: dict[str, Any]) -> None:
    name = "meshfleet-" + given.policy.split("/")[1]
    ap = rendered(US, access=(given,))[("AuthorizationPolicy", "bookinfo", name)]
    assert ap["apiVersion"] == "security.istio.io/v1"
    assert ap["metadata"]["annotations"] == {"meshfleet.io/policy": given.policy,
                                             "meshfleet.io/origin": "AccessPolicy/" + given.policy}
    assert ap["spec"] == spec


@pytest.mark.parametrize("given, spec", [
    pytest.param(MtlsRule("bookinfo/reviews-from-productpage", "bookinfo", "STRICT", (("app", "reviews"),)),
                 {"selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": "STRICT"}}, id="strict-workload"),
    pytest.param(MtlsRule("bookinfo/migrating", "bookinfo", "PERMISSIVE"), {"mtls": {"mode": "PERMISSIVE"}},
                 id="permissive-namespace-wide"),
])
def test_peer_authentications(given: MtlsRule, spec: dict[str, Any]) -> None:
    pa = rendered(US, mtls=(given,))[("PeerAuthentication", "bookinfo", "meshfleet-" + given.policy.split("/")[1])]
    assert pa["spec"] == spec


@pytest.mark.parametrize("policy, name", [
    pytest.param("bookinfo/reviews-from-productpage", "meshfleet-reviews-from-productpage", id="namespace-name"),
    pytest.param("AccessPolicy/bookinfo/deny.writes", "meshfleet-deny.writes", id="kind-namespace-name"),
    pytest.param("bookinfo/Deny_Writes", "meshfleet-deny-writes-", id="not-a-dns-name"),
    pytest.param("bookinfo/" + "a" * 250, "meshfleet-" + "a" * 232 + "-", id="too-long"),
])
def test_policy_object_names(policy: str, name: str) -> None:
    got = policy_object_name(policy)
    assert got.startswith(name)
    assert dns1123_subdomain_error(got) is None
    assert policy_object_name(policy) == got  # stable across renders, or every push would rename objects


def test_distinct_policies_keep_distinct_shortened_names() -> None:
    assert policy_object_name("ns/" + "a" * 250 + "x") != policy_object_name("ns/" + "a" * 250 + "y")


# --------------------------------------------------------------------------- origin annotations


def test_every_object_from_a_hub_resource_names_it_in_its_origin_annotation() -> None:
    reviews = replace(REVIEWS, origin="MulticlusterService/bookinfo/reviews")
    objs = rendered(US, (reviews, MONGO), (route(rule((EU, 100, ""))),),
                    (AccessRule("bookinfo/from-productpage", "bookinfo", "ALLOW"),
                     AccessRule("AccessPolicy/bookinfo/deny-writes", "bookinfo", "DENY")),
                    (MtlsRule("bookinfo/strict", "bookinfo", "STRICT"),))
    annotations = {key: o["metadata"].get("annotations") for key, o in objs.items()}
    assert annotations == {
        ("ServiceEntry", "bookinfo", "reviews-global"): {ORIGIN_ANNOTATION: "MulticlusterService/bookinfo/reviews"},
        ("DestinationRule", "bookinfo", "reviews-global"): {ORIGIN_ANNOTATION: "MulticlusterService/bookinfo/reviews"},
        ("VirtualService", "bookinfo", "reviews-global"): {"meshfleet.io/policy": "bookinfo/reviews-policy",
                                                           ORIGIN_ANNOTATION: "TrafficPolicy/bookinfo/reviews-policy"},
        # origin unknown: no annotation at all
        ("ServiceEntry", "bookinfo", "mongodb-global"): None,
        ("DestinationRule", "bookinfo", "mongodb-global"): None,
        ("AuthorizationPolicy", "bookinfo", "meshfleet-from-productpage"): {
            "meshfleet.io/policy": "bookinfo/from-productpage",
            ORIGIN_ANNOTATION: "AccessPolicy/bookinfo/from-productpage"},
        # a reference that names its kind already is the key as it is
        ("AuthorizationPolicy", "bookinfo", "meshfleet-deny-writes"): {
            "meshfleet.io/policy": "AccessPolicy/bookinfo/deny-writes",
            ORIGIN_ANNOTATION: "AccessPolicy/bookinfo/deny-writes"},
        ("PeerAuthentication", "bookinfo", "meshfleet-strict"): {"meshfleet.io/policy": "bookinfo/strict",
                                                                 ORIGIN_ANNOTATION: "AccessPolicy/bookinfo/strict"},
        ("Gateway", "istio-system", "meshfleet-eastwest"): None,  # shared by every service: from no one resource
    }
    assert ORIGIN_ANNOTATION == "meshfleet.io/origin"


# --------------------------------------------------------------------------- intents the agent refuses


def with_route(*rules: RouteRule) -> Callable[[], Any]:
    return lambda: rendered(EU, (REVIEWS,), (route(*rules),))


def with_services(*services: ServiceIntent) -> Callable[[], Any]:
    return lambda: rendered(US, services)


BAD = [
    pytest.param(with_route(rule((US, 50, ""), (ClusterRef("xx", "r", "z", "n"), 50, ""))),
                 "rule 'default': cluster xx does not back the service", id="target-not-a-backend"),
    pytest.param(with_route(rule((AP, 100, "v1"))), "rule 'default': cluster ap-south-1 has no subset 'v1'",
                 id="target-subset-unknown"),
    pytest.param(with_route(rule((US, 100, ""), mirror=Mirror("eu-west-1", "v9"))),
                 "rule 'default': mirror: cluster eu-west-1 has no subset 'v9'", id="mirror-subset-unknown"),
    pytest.param(with_route(rule((US, 0, ""), (EU, 0, ""))), "the weights add up to 0", id="zero-weights"),
    pytest.param(with_route(rule((US, 100, ""), (EU, -5, ""))), "negative weight -5 for cluster eu-west-1",
                 id="negative-weight"),
    pytest.param(with_route(), "route bookinfo/reviews-policy for service bookinfo/reviews: no rules", id="no-rules"),
    pytest.param(with_route(rule()), "rule 'default': no route targets", id="no-targets"),
    pytest.param(with_route(rule((US, 100, ""),
                                 matches=(RequestMatch(query_params=(("q", StringMatch("prefix", "a")),)),))),
                 "query parameter 'q': match kind 'prefix' is not supported here (use exact or regex)",
                 id="query-param-prefix"),
    pytest.param(with_route(rule((US, 100, ""), matches=(RequestMatch(uri=StringMatch("prefix", "")),))),
                 "uri: an empty prefix match", id="empty-prefix"),
    pytest.param(with_route(rule((US, 100, ""), timeout="10 seconds")),
                 "timeout: '10 seconds' is not a duration", id="bad-timeout"),
    pytest.param(with_route(rule((US, 100, ""), fault=Fault(abort_status=700, abort_percent=1.0))),
                 "abort status 700 is not an HTTP status 200-599", id="abort-status"),
    pytest.param(with_route(rule((US, 100, ""), fault=Fault(delay="1s", delay_percent=150.0))),
                 "fault delay percent: 150.0 is not a percentage", id="percent-over-100"),
    pytest.param(with_route(rule((US, 100, ""), fault=Fault())), "fault injects neither a delay nor an abort",
                 id="empty-fault"),
    pytest.param(with_route(rule((US, 100, ""), retries=Retries(0, retry_on="5xx"))),
                 "retry settings with 0 attempts", id="retry-settings-without-attempts"),
    pytest.param(lambda: rendered(US, (REVIEWS,), (route(rule((US, 100, "")), service=MONGO),)),
                 "route bookinfo/mongodb-policy is for service bookinfo/mongodb, which the intent lacks",
                 id="route-for-a-missing-service"),
    pytest.param(lambda: rendered(US, (REVIEWS,), (route(rule((US, 100, ""))), route(rule((EU, 100, ""))))),
                 "both route service bookinfo/reviews", id="two-routes-for-one-service"),
    pytest.param(with_services(REVIEWS, ServiceIntent("other", "reviews2", HTTP, (backend(US),),
                                                      host="reviews.bookinfo.global")),
                 "services bookinfo/reviews and other/reviews2 both claim host reviews.bookinfo.global",
                 id="two-services-one-host"),
    pytest.param(with_services(ServiceIntent("bookinfo", "x", HTTP, (Backend(EU, "", 0),))),
                 "cluster eu-west-1 has no usable east-west gateway address", id="remote-backend-without-gateway"),
    pytest.param(with_services(ServiceIntent("bookinfo", "x", HTTP, (backend(US), backend(US)))),
                 "cluster us-east-1 is listed twice", id="backend-twice"),
    pytest.param(with_services(ServiceIntent("bookinfo", "x", HTTP, (backend(US),), host="Not A Host")),
                 "service bookinfo/x: host 'Not A Host' is not a DNS-1123 subdomain", id="bad-host"),
    pytest.param(with_services(ServiceIntent("bookinfo", "x", HTTP, (
        Backend(US, "gw", 15443, (Subset("v1", {"meshfleet.io/subset": "v2"}),)),))),
                 "label 'meshfleet.io/subset' is reserved", id="reserved-subset-label"),
    pytest.param(with_services(ServiceIntent("bookinfo", "x", HTTP, (
        Backend(US, "gw", 15443, (Subset("v1", {"meshfleet.io/failover-tier-1": "true"}),)),))),
                 "label 'meshfleet.io/failover-tier-1' is reserved", id="reserved-failover-tier-label"),
    pytest.param(with_services(ServiceIntent("bookinfo", "x", HTTP, (
        backend(ClusterRef("us", "r", "z", "n"), "east-1"), backend(ClusterRef("us-east-1", "r", "z", "n"))))),
                 "subset 'east-1' of cluster us and cluster us-east-1 both make DestinationRule subset 'us-east-1'",
                 id="subset-names-clash"),
    pytest.param(with_services(ServiceIntent("bookinfo", "x", HTTP, (
        backend(ClusterRef("a-b", "r", "z", "n"), "c"), backend(ClusterRef("a", "r", "z", "n"), "b-c")))),
                 "subset 'c' of cluster a-b and subset 'b-c' of cluster a both make DestinationRule subset 'a-b-c'",
                 id="version-subset-names-clash"),
    pytest.param(with_services(ServiceIntent("bookinfo", "x", HTTP, (backend(ClusterRef("c" * 40, "r", "z", "n"),
                                                                             "v" * 30),))),
                 "subset name '" + "c" * 40 + "-" + "v" * 30 + "' is longer than 63", id="subset-name-too-long"),
    pytest.param(with_services(ServiceIntent("bookinfo", "x", HTTP, (backend(US),),
                                             outlier=OutlierDetection(interval="often"))),
                 "outlier detection interval: 'often' is not a duration", id="bad-outlier-interval"),
    pytest.param(lambda: rendered(US, access=(AccessRule("ns/x", "ns", "AUDIT"),)),
                 "action 'AUDIT' is not one of ALLOW, DENY", id="access-action"),
    pytest.param(lambda: rendered(US, access=(AccessRule("ns/x", "ns", "ALLOW", (), (), (AccessOperation((0,)),)),)),
                 "ports must be 1-65535", id="access-port"),
    pytest.param(lambda: rendered(US, access=(AccessRule("a/x", "ns", "ALLOW"), AccessRule("b/x", "ns", "DENY"))),
                 "AuthorizationPolicy ns/meshfleet-x would be rendered twice (from a/x and b/x)",
                 id="access-names-clash"),
    pytest.param(lambda: rendered(US, mtls=(MtlsRule("ns/x", "ns", "DISABLE"),)),
                 "mode 'DISABLE' is not one of STRICT, PERMISSIVE", id="mtls-mode"),
]


@pytest.mark.parametrize("make, message", BAD)
def test_an_intent_that_cannot_be_expressed_is_refused_with_the_reason(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(RenderError) as info:
        make()
    assert message in str(info.value)


def test_the_agent_nacks_what_it_cannot_render(tmp_path: Path) -> None:
    agent = Agent(AgentSettings(hub="127.0.0.1:1", cluster="us-east-1", state_dir=tmp_path / "state",
                                inventory=tmp_path / "inventory.yaml", output=tmp_path / "out"))
    version, content = encode(ClusterIntent(US, (MONGO,), (route(rule((AP, 100, ""), timeout="1s"), service=MONGO),)))
    answer = agent.apply(hub_pb2.IntentPush(version=version, content=content, content_type=MEDIA_TYPE))
    assert answer.WhichOneof("kind") == "nack"
    assert "rule 'default' uses timeout, which only HTTP traffic can honour" in answer.nack.error
    assert not answer.nack.error.startswith("internal error")  # a refusal, not a renderer crash
    assert issubclass(RenderError, IntentError)


# --------------------------------------------------------------------------- the example fleet, through the hub

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MONGO_POLICY = """\
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata: {name: mongo, namespace: bookinfo}
spec:
  destination: {service: mongodb}
  route:
    - {cluster: ap-south-1, weight: 100}
"""
CLUSTERS = ("us-east-1", "eu-west-1", "ap-south-1")


def fleet(tmp_path: Path, files: list[Path], extra: str = "") -> dict[str, list[dict[str, Any]]]:
    """What each example cluster renders from these policy files, translated by the hub."""
    from meshfleet.offline import render_cluster  # the hub side: imported here so the pure tests never need it

    policies = tmp_path / "policies"
    policies.mkdir()
    for f in files:
        shutil.copy(f, policies / f.name)
    if extra:
        (policies / "extra.yaml").write_text(extra)
    return {c: render_cluster(policies, EXAMPLES / "inventories", EXAMPLES / "clusters.yaml", c)[0] for c in CLUSTERS}


EXAMPLE_RESOURCES = [EXAMPLES / "crs" / f"{kind}.yaml"
                     for kind in ("multiclusterservices", "trafficpolicies", "failoverpolicies", "accesspolicies")]


def example_objects(tmp_path: Path, cluster: str) -> list[dict[str, Any]]:
    """What `cluster` renders from the example resources (MulticlusterService, Traffic/Failover/AccessPolicy)."""
    return fleet(tmp_path, EXAMPLE_RESOURCES)[cluster]


def test_the_example_resources_render_valid_istio_everywhere(tmp_path: Path) -> None:
    schemas = istio_schemas()
    kinds = set()
    for cluster, objects in fleet(tmp_path, EXAMPLE_RESOURCES).items():
        for obj in objects:
            kinds.add(obj["kind"])
            errors = schemas.validate(obj)
            assert not errors, f"{cluster} {obj['kind']}/{obj['metadata']['name']}: {[str(e) for e in errors]}"
    assert {"ServiceEntry", "DestinationRule", "VirtualService", "Gateway"} <= kinds


# resolved in status rather than applied: a second route for reviews (the older, by name among files, wins),
# a second failover policy, a rule to a subset no cluster has, and access narrowed to one cluster
CONFLICTS = """
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews-zz-late, namespace: bookinfo}
spec:
  destination: {multiclusterService: reviews}
  clients: {clusters: [eu-west-1]}
  route:
    - {cluster: eu-west-1, weight: 100}
---
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata: {name: details-v9, namespace: bookinfo}
spec:
  destination: {multiclusterService: details}
  http:
    - name: v9-only
      match: [{headers: {x-v9: {exact: "1"}}}]
      route: [{cluster: us-east-1, subset: v9, weight: 100}]
    - name: default
      route: [{cluster: eu-west-1, weight: 50}, {cluster: ap-south-1, weight: 50}]
---
apiVersion: meshfleet.io/v1alpha1
kind: FailoverPolicy
metadata: {name: reviews-zz-second, namespace: bookinfo}
spec:
  destination: {multiclusterService: reviews}
---
apiVersion: meshfleet.io/v1alpha1
kind: AccessPolicy
metadata: {name: details-from-us-only, namespace: bookinfo}
spec:
  destination: {multiclusterService: details}
  from: [{clusters: [us-east-1], namespaces: [bookinfo]}]
"""
GOLDEN_CASES = {
    # the demo's policy files: spec.route splits on plain Services, one TCP-only
    "three-regions": (sorted((EXAMPLES / "policies").glob("*.yaml")), MONGO_POLICY),
    # the bookinfo example of every kind: MulticlusterServices selected by label, HTTP rules with subsets,
    # faults, mirroring, failover, access rules, a conflict and an unenforceable policy resolved in status
    "bookinfo-all-kinds": (EXAMPLE_RESOURCES, ""),
    "bookinfo-conflicts": (EXAMPLE_RESOURCES, CONFLICTS),
}


@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_render_matches_golden_files(case: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Per-cluster rendered YAML (and the problems reported) of each case; regenerate with --update-golden."""
    from meshfleet.offline import render_cluster

    files, extra = GOLDEN_CASES[case]
    golden_dir = Path(__file__).parent / "golden" / case
    policies = tmp_path / "policies"
    policies.mkdir()
    for f in files:
        shutil.copy(f, policies / f.name)
    if extra:
        (policies / "extra.yaml").write_text(extra)
    outputs: dict[str, str] = {}
    problems: set[str] = set()
    for cluster in CLUSTERS:
        objs, found = render_cluster(policies, EXAMPLES / "inventories", EXAMPLES / "clusters.yaml", cluster)
        outputs[f"{cluster}.yaml"] = yaml.safe_dump_all(objs, sort_keys=False)
        problems.update(found)
    outputs["problems.txt"] = "".join(f"{p}\n" for p in sorted(problems))
    for name, text in outputs.items():
        path = golden_dir / name
        if request.config.getoption("--update-golden"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"missing golden file {path}; run pytest --update-golden"
        assert text == path.read_text(), f"{name} differs from {path}; review and run pytest --update-golden"
