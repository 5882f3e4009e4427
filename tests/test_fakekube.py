"""tests.fakekube.FakeKube, exercised only through the real `kubernetes` client over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from tests.fakekube import DEFAULT_KINDS, FakeKube, Recorded
from tests.istio_support import CRD_FILE, istio_schemas

APPLY = "application/apply-patch+yaml"
ISTIO = ("networking.istio.io", "v1")
MESH = ("meshfleet.io", "v1alpha1")


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as f:
        yield f


@pytest.fixture
def api(fake: FakeKube) -> Iterator[client.ApiClient]:
    with fake.api_client() as c:
        yield c


@pytest.fixture
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def service_entry(name: str = "reviews", hosts: list[str] | None = None, labels: dict[str, str] | None = None,
                  **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": "bookinfo", "labels": labels or {"app": name}},
        "spec": {"hosts": hosts or [f"{name}.bookinfo.global"], "resolution": "STATIC", **spec},
    }


def apply(custom: client.CustomObjectsApi, obj: dict[str, Any], manager: str = "meshfleet-agent",
          force: bool | None = None) -> dict[str, Any]:
    meta = obj["metadata"]
    group, version = obj["apiVersion"].split("/")
    plural = {"ServiceEntry": "serviceentries", "TrafficPolicy": "trafficpolicies"}[obj["kind"]]
    # The raw body: on create the server answers 201, which patch_namespaced_custom_object() returns as None.
    response = custom.patch_namespaced_custom_object(
        group, version, meta["namespace"], plural, meta["name"], obj,
        field_manager=manager, force=force, _content_type=APPLY, _preload_content=False)
    assert isinstance(response, urllib3.BaseHTTPResponse)
    try:
        return js(json.loads(response.data))
    finally:
        response.release_conn()


def traffic_policy(name: str = "reviews-split", weight: int = 80) -> dict[str, Any]:
    return {
        "apiVersion": "meshfleet.io/v1alpha1",
        "kind": "TrafficPolicy",
        "metadata": {"name": name, "namespace": "bookinfo"},
        "spec": {"destination": {"service": "reviews"}, "route": [{"cluster": "us-east-1", "weight": weight}]},
    }


def js(value: object) -> dict[str, Any]:
    """A custom-objects API answer (typed `object` by the client) as the JSON object it is."""
    assert isinstance(value, dict)
    return value


def error_body(e: ApiException) -> dict[str, Any]:
    return js(json.loads(e.body or ""))


def verbs(requests: list[Recorded]) -> list[str]:
    return [r.verb for r in requests]


# --------------------------------------------------------------------------- server-side apply


def test_apply_creates_the_object_and_get_returns_it_with_server_set_metadata(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    created = apply(custom, service_entry())
    got = js(custom.get_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", "reviews"))

    assert got == created
    meta = got["metadata"]
    assert got["spec"]["hosts"] == ["reviews.bookinfo.global"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) > 0
    [entry] = meta["managedFields"]
    assert (entry["manager"], entry["operation"], entry["fieldsType"]) == ("meshfleet-agent", "Apply", "FieldsV1")
    assert entry["fieldsV1"] == {"f:metadata": {"f:labels": {"f:app": {}}},
                                 "f:spec": {"f:hosts": {}, "f:resolution": {}}}
    assert [(r.method, r.verb, r.name, r.query.get("fieldManager")) for r in fake.requests] == [
        ("PATCH", "apply", "reviews", "meshfleet-agent"), ("GET", "get", "reviews", None)]
    assert fake.get("networking.istio.io/v1", "ServiceEntry", "reviews", "bookinfo") == got


def test_apply_that_creates_answers_201_which_the_typed_custom_objects_api_returns_as_none(
        custom: client.CustomObjectsApi) -> None:
    """Real-server behaviour callers must handle: only 200 is mapped to a body for custom-object patches."""
    first = custom.patch_namespaced_custom_object_with_http_info(
        *ISTIO, "bookinfo", "serviceentries", "reviews", service_entry(), field_manager="m", _content_type=APPLY)
    again = js(custom.patch_namespaced_custom_object(
        *ISTIO, "bookinfo", "serviceentries", "reviews", service_entry(), field_manager="m", _content_type=APPLY))
    assert first[:2] == (None, 201)
    assert again["metadata"]["name"] == "reviews"


def test_identical_reapply_is_recorded_but_writes_nothing(fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    first = apply(custom, service_entry())
    again = apply(custom, service_entry())

    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert again == first
    assert verbs(fake.writes()) == ["apply", "apply"]
    assert fake.resource_version == first["metadata"]["resourceVersion"]


def test_apply_without_field_manager_is_refused(custom: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as e:
        custom.patch_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", "reviews", service_entry(),
                                              _content_type=APPLY)
    assert e.value.status == 422
    assert "fieldManager: Required value" in error_body(e.value)["message"]


def test_conflicting_manager_gets_409_naming_the_owner_and_force_takes_over(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    apply(custom, service_entry(hosts=["a.example.com"]), manager="kubectl")

    with pytest.raises(ApiException) as e:
        apply(custom, service_entry(hosts=["b.example.com"]), manager="meshfleet-agent")
    assert e.value.status == 409
    status = error_body(e.value)
    assert status["reason"] == "Conflict"
    assert status["message"] == ('Apply failed with 1 conflict: conflict with "kubectl" using '
                                 "networking.istio.io/v1: .spec.hosts")
    assert status["details"]["causes"] == [
        {"type": "FieldManagerConflict", "message": 'conflict with "kubectl" using networking.istio.io/v1',
         "field": ".spec.hosts"}]

    won = apply(custom, service_entry(hosts=["b.example.com"]), manager="meshfleet-agent", force=True)
    assert won["spec"]["hosts"] == ["b.example.com"]
    owners = {e["manager"]: e["fieldsV1"] for e in won["metadata"]["managedFields"]}
    assert "f:hosts" in owners["meshfleet-agent"]["f:spec"]
    assert "f:hosts" not in owners["kubectl"]["f:spec"]  # kubectl still co-owns the fields with equal values
    assert "f:resolution" in owners["kubectl"]["f:spec"]


def test_conflicts_with_several_fields_are_listed_per_manager(custom: client.CustomObjectsApi) -> None:
    apply(custom, service_entry(hosts=["a.example.com"], location="MESH_EXTERNAL"), manager="kubectl")
    with pytest.raises(ApiException) as e:
        apply(custom, service_entry(hosts=["b.example.com"], location="MESH_INTERNAL"))
    assert error_body(e.value)["message"] == (
        'Apply failed with 2 conflicts: conflicts with "kubectl" using networking.istio.io/v1:\n'
        "- .spec.hosts\n- .spec.location")


def test_object_created_by_an_update_conflicts_with_apply_and_names_the_update_manager(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    fake.put(service_entry(hosts=["theirs.example.com"]), manager="kubectl-create")
    with pytest.raises(ApiException) as e:
        apply(custom, service_entry(hosts=["ours.example.com"]))
    message = error_body(e.value)["message"]
    assert message.startswith('Apply failed with 1 conflict: conflict with "kubectl-create" using '
                              "networking.istio.io/v1 at ")
    assert message.endswith(": .spec.hosts")
    assert fake.get("networking.istio.io/v1", "ServiceEntry", "reviews", "bookinfo")["spec"]["hosts"] == [  # type: ignore[index]
        "theirs.example.com"]


def test_apply_removes_the_fields_its_manager_stopped_applying_but_keeps_the_other_managers(
        custom: client.CustomObjectsApi) -> None:
    apply(custom, service_entry(location="MESH_INTERNAL", labels={"app": "reviews", "team": "a"}))
    other = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
             "metadata": {"name": "reviews", "namespace": "bookinfo", "labels": {"owner": "ops"}},
             "spec": {"exportTo": ["."]}}
    apply(custom, other, manager="ops")

    shrunk = apply(custom, service_entry(labels={"app": "reviews"}))
    assert "location" not in shrunk["spec"]
    assert shrunk["spec"]["exportTo"] == ["."]
    assert shrunk["metadata"]["labels"] == {"app": "reviews", "owner": "ops"}
    assert shrunk["metadata"]["generation"] == 3


def test_dry_run_apply_answers_the_would_be_object_and_persists_nothing(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    live = apply(custom, service_entry(hosts=["a.example.com"]))
    would = js(custom.patch_namespaced_custom_object(
        *ISTIO, "bookinfo", "serviceentries", "reviews", service_entry(hosts=["b.example.com"]),
        field_manager="meshfleet-agent", dry_run="All", _content_type=APPLY))
    assert would["spec"]["hosts"] == ["b.example.com"] and would["metadata"]["generation"] == 2
    assert fake.get("networking.istio.io/v1", "ServiceEntry", "reviews", "bookinfo") == live
    assert fake.resource_version == live["metadata"]["resourceVersion"]


def status_apply(custom: client.CustomObjectsApi, manager: str, clusters: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "meshfleet.io/v1alpha1", "kind": "TrafficPolicy",
                            "metadata": {"name": "reviews-split", "namespace": "bookinfo"}}
    if clusters:
        body["status"] = {"clusters": clusters}
    return js(custom.patch_namespaced_custom_object_status(
        *MESH, "bookinfo", "trafficpolicies", "reviews-split", body, field_manager=manager, _content_type=APPLY))


def test_map_lists_merge_and_are_owned_item_by_item(custom: client.CustomObjectsApi) -> None:
    apply(custom, traffic_policy())
    status_apply(custom, "hub-a", [{"cluster": "us-east-1", "state": "Applied"}])
    both = status_apply(custom, "hub-b", [{"cluster": "eu-west-1", "state": "Rejected"}])
    assert both["status"]["clusters"] == [{"cluster": "us-east-1", "state": "Applied"},
                                          {"cluster": "eu-west-1", "state": "Rejected"}]
    fields = {e["manager"]: e["fieldsV1"] for e in both["metadata"]["managedFields"]}
    assert fields["hub-b"] == {"f:status": {"f:clusters": {'k:{"cluster":"eu-west-1"}': {
        "f:cluster": {}, "f:state": {}}}}}
    assert {e["subresource"] for e in both["metadata"]["managedFields"] if e["manager"].startswith("hub")} == {
        "status"}

    with pytest.raises(ApiException) as e:
        status_apply(custom, "hub-b", [{"cluster": "us-east-1", "state": "Rejected"}])
    assert error_body(e.value)["message"] == (
        'Apply failed with 1 conflict: conflict with "hub-a" with subresource "status" using meshfleet.io/v1alpha1: '
        '.status.clusters[cluster="us-east-1"].state')

    only_b = status_apply(custom, "hub-a", [])  # hub-a stops applying its item; hub-b's stays
    assert only_b["status"]["clusters"] == [{"cluster": "eu-west-1", "state": "Rejected"}]


def map_lists_declared(schema: Any, path: tuple[str, ...] = ()) -> set[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(path, keys) of every `x-kubernetes-list-type: map` in an openAPIV3Schema (list items share the list's path)."""
    if not isinstance(schema, dict):
        return set()
    found = set()
    if schema.get("x-kubernetes-list-type") == "map":
        found.add((path, tuple(schema["x-kubernetes-list-map-keys"])))
    for name, sub in (schema.get("properties") or {}).items():
        found |= map_lists_declared(sub, (*path, name))
    return found | map_lists_declared(schema.get("items"), path)


def test_default_kinds_declare_the_map_lists_of_the_crds_they_serve() -> None:
    repo = Path(__file__).resolve().parents[1]
    files = sorted(repo.glob("crds/*.yaml"))
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    if CRD_FILE.is_file():
        docs += [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d and d.get("kind") ==
                 "CustomResourceDefinition"]
    served = {(k.api_version, k.kind): k for k in DEFAULT_KINDS}
    checked = 0
    for doc in docs:
        spec = doc["spec"]
        for version in spec["versions"]:
            kind = served.get((f"{spec['group']}/{version['name']}", spec["names"]["kind"]))
            if kind is None or not version.get("served"):
                continue
            checked += 1
            assert (kind.plural, kind.namespaced) == (spec["names"]["plural"], spec["scope"] == "Namespaced")
            assert set(kind.map_lists) == map_lists_declared(version["schema"]["openAPIV3Schema"]), kind
    assert checked >= 6


def test_merge_patch_and_update_transfer_ownership_without_conflicts(custom: client.CustomObjectsApi) -> None:
    apply(custom, service_entry(hosts=["a.example.com"]))
    patched = js(custom.patch_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", "reviews",
                                                       {"spec": {"hosts": ["edited.example.com"]}},
                                                       field_manager="kubectl-edit"))
    assert patched["spec"]["hosts"] == ["edited.example.com"]
    owners = {(e["manager"], e["operation"]): e["fieldsV1"] for e in patched["metadata"]["managedFields"]}
    assert owners[("kubectl-edit", "Update")] == {"f:spec": {"f:hosts": {}}}
    assert "f:hosts" not in owners[("meshfleet-agent", "Apply")]["f:spec"]


def test_json_patch_is_applied_as_an_update(custom: client.CustomObjectsApi) -> None:
    apply(custom, service_entry(hosts=["a.example.com"]))
    patched = js(custom.patch_namespaced_custom_object(
        *ISTIO, "bookinfo", "serviceentries", "reviews",
        [{"op": "test", "path": "/spec/hosts/0", "value": "a.example.com"},
         {"op": "add", "path": "/spec/hosts/-", "value": "b.example.com"}],
        _content_type="application/json-patch+json"))
    assert patched["spec"]["hosts"] == ["a.example.com", "b.example.com"]
    assert patched["metadata"]["generation"] == 2


def test_replace_of_a_custom_resource_needs_the_current_resource_version(custom: client.CustomObjectsApi) -> None:
    stale = apply(custom, service_entry())
    current = apply(custom, service_entry(hosts=["new.example.com"]))
    with pytest.raises(ApiException) as e:
        custom.replace_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", "reviews", stale)
    assert e.value.status == 409
    assert "the object has been modified" in error_body(e.value)["message"]

    del current["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as e:
        custom.replace_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", "reviews", current)
    assert e.value.status == 422
    assert "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update" in (
        error_body(e.value)["message"])


def test_create_existing_is_409_already_exists_and_delete_then_get_is_404(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", service_entry())
    with pytest.raises(ApiException) as e:
        custom.create_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", service_entry())
    assert (e.value.status, error_body(e.value)["reason"]) == (409, "AlreadyExists")

    custom.delete_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", "reviews",
                                           propagation_policy="Foreground")
    with pytest.raises(ApiException) as e:
        js(custom.get_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", "reviews"))
    assert e.value.status == 404
    assert error_body(e.value)["message"] == 'serviceentries.networking.istio.io "reviews" not found'
    assert verbs(fake.writes()) == ["create", "create", "delete"]


# --------------------------------------------------------------------------- list, selectors, core kinds


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=reviews", ["reviews"]),
        ("app==reviews,tier=back", ["reviews"]),
        ("tier", ["ratings", "reviews"]),
        ("!tier", ["web"]),
        ("app!=reviews", ["ratings", "web"]),
        ("app in (reviews, web)", ["reviews", "web"]),
        ("app notin (reviews),tier", ["ratings"]),
    ],
    ids=["equality", "double-equals-and", "exists", "not-exists", "inequality", "in", "notin-and-exists"],
)
def test_list_filters_by_label_selector(custom: client.CustomObjectsApi, selector: str, expected: list[str]) -> None:
    for name, labels in [("reviews", {"app": "reviews", "tier": "back"}), ("ratings", {"app": "ratings", "tier": "db"}),
                         ("web", {"app": "web"})]:
        apply(custom, service_entry(name, labels=labels))
    listed = js(custom.list_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", label_selector=selector))
    assert [o["metadata"]["name"] for o in listed["items"]] == expected


def test_list_pages_with_limit_and_continue(custom: client.CustomObjectsApi) -> None:
    for name in ("a", "b", "c"):
        apply(custom, service_entry(name))
    first = js(custom.list_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", limit=2))
    rest = js(custom.list_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", limit=2,
                                                _continue=first["metadata"]["continue"]))
    assert [o["metadata"]["name"] for o in first["items"] + rest["items"]] == ["a", "b", "c"]
    assert first["metadata"]["remainingItemCount"] == 1 and "continue" not in rest["metadata"]


def test_typed_core_clients_read_what_the_fake_serves(fake: FakeKube, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret("istio-system", client.V1Secret(
        metadata=client.V1ObjectMeta(name="cacerts", labels={"app.kubernetes.io/managed-by": "meshfleet"}),
        data={"root-cert.pem": "cm9vdA=="}))
    fake.put({"apiVersion": "v1", "kind": "Service",
              "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
              "spec": {"type": "LoadBalancer", "ports": [{"name": "tls", "port": 15443}]},
              "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}})
    fake.put({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": "reviews-1", "namespace": "bookinfo",
                           "labels": {"kubernetes.io/service-name": "reviews"}},
              "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.7"]}]})

    # Typed models back to JSON: what the client understood of the fake's answers.
    secrets = js(api.sanitize_for_serialization(
        core.list_namespaced_secret("istio-system", label_selector="app.kubernetes.io/managed-by=meshfleet")))
    services = js(api.sanitize_for_serialization(core.list_service_for_all_namespaces()))
    slices = js(api.sanitize_for_serialization(client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        "bookinfo", label_selector="kubernetes.io/service-name=reviews")))

    assert [(s["metadata"]["name"], s["data"]) for s in secrets["items"]] == [
        ("cacerts", {"root-cert.pem": "cm9vdA=="})]
    assert secrets["metadata"]["resourceVersion"] == fake.resource_version
    assert services["items"][0]["status"] == {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
    assert slices["items"][0]["endpoints"] == [{"addresses": ["10.0.0.7"]}]


# --------------------------------------------------------------------------- watch


def collect(stream: Iterator[dict[str, Any]], count: int) -> list[tuple[str, str, str]]:
    out = []
    for event in stream:
        obj = event["raw_object"]
        out.append((event["type"], obj["metadata"]["name"], obj["spec"]["hosts"][0]))
        if len(out) == count:
            break
    return out


def test_watch_from_the_list_resource_version_sees_added_modified_deleted_in_order(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    apply(custom, service_entry("before"))
    listed = js(custom.list_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries"))
    apply(custom, service_entry("reviews", hosts=["v1.example.com"]))
    apply(custom, service_entry("reviews", hosts=["v2.example.com"]))
    custom.delete_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", "reviews")

    w = watch.Watch()
    stream = w.stream(custom.list_namespaced_custom_object, *ISTIO, "bookinfo", "serviceentries",
                      resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=5)
    events = collect(stream, 3)
    stream.close()

    assert events == [("ADDED", "reviews", "v1.example.com"), ("MODIFIED", "reviews", "v2.example.com"),
                      ("DELETED", "reviews", "v2.example.com")]
    assert w.resource_version == fake.resource_version


def test_watch_without_resource_version_starts_with_synthetic_added_then_streams_live_events(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    apply(custom, service_entry("existing"))
    seen: list[tuple[str, str, str]] = []

    def consume() -> None:
        stream = watch.Watch().stream(custom.list_cluster_custom_object, *ISTIO, "serviceentries", timeout_seconds=5)
        seen.extend(collect(stream, 2))
        stream.close()

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert fake.wait_for_watches(1)
    apply(custom, service_entry("live"))
    consumer.join(5)

    assert seen == [("ADDED", "existing", "existing.bookinfo.global"), ("ADDED", "live", "live.bookinfo.global")]


def test_watch_with_label_selector_sees_objects_leave_and_enter_its_selection(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    start = fake.resource_version
    apply(custom, service_entry(labels={"app": "reviews", "owned": "yes"}))
    apply(custom, service_entry(labels={"app": "reviews"}))
    apply(custom, service_entry(labels={"app": "reviews", "owned": "yes"}))

    stream = watch.Watch().stream(custom.list_namespaced_custom_object, *ISTIO, "bookinfo", "serviceentries",
                                  resource_version=start, label_selector="owned=yes", timeout_seconds=5)
    events = [t for t, _, _ in collect(stream, 3)]
    stream.close()
    assert events == ["ADDED", "DELETED", "ADDED"]


def test_watch_timeout_ends_the_stream_and_bookmarks_carry_the_resource_version(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    events: list[dict[str, Any]] = []

    def consume() -> None:
        events.extend(watch.Watch().stream(custom.list_namespaced_custom_object, *ISTIO, "bookinfo",
                                           "serviceentries", allow_watch_bookmarks=True, timeout_seconds=1))

    consumer = threading.Thread(target=consume)
    began = time.monotonic()
    consumer.start()
    assert fake.wait_for_watches(1)
    fake.bookmark()
    consumer.join(5)

    assert not consumer.is_alive() and time.monotonic() - began < 4
    assert [(e["type"], e["raw_object"]["metadata"]["resourceVersion"]) for e in events] == [
        ("BOOKMARK", fake.resource_version)]


# --------------------------------------------------------------------------- expiry (410)


def test_after_compaction_a_watch_from_an_old_resource_version_fails_with_410(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    old = js(custom.list_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries"))["metadata"]["resourceVersion"]
    apply(custom, service_entry())
    fake.compact()

    with pytest.raises(ApiException) as e:
        next(iter(watch.Watch().stream(custom.list_namespaced_custom_object, *ISTIO, "bookinfo", "serviceentries",
                                       resource_version=old, timeout_seconds=5)))
    assert e.value.status == 410
    assert "Expired: too old resource version" in str(e.value.reason)

    with pytest.raises(ApiException) as e:
        js(custom.list_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", resource_version=old,
                                             resource_version_match="Exact"))
    assert e.value.status == 410

    # As on a real server, a "not older than" list is served from the cache, and a re-list heals.
    fresh = js(custom.list_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries", resource_version=old))
    assert int(fresh["metadata"]["resourceVersion"]) > int(old)
    stream = watch.Watch().stream(custom.list_namespaced_custom_object, *ISTIO, "bookinfo", "serviceentries",
                                  resource_version=fresh["metadata"]["resourceVersion"], timeout_seconds=5)
    seen: list[tuple[str, str, str]] = []
    consumer = threading.Thread(target=lambda: seen.extend(collect(stream, 1)))
    consumer.start()
    assert fake.wait_for_watches(1)
    apply(custom, service_entry("after"))
    consumer.join(5)
    stream.close()
    assert seen == [("ADDED", "after", "after.bookinfo.global")]


def test_compaction_expires_an_open_watch_even_after_the_clients_own_retry(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    listed = js(custom.list_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries"))
    outcome: list[BaseException] = []

    def consume() -> None:
        try:  # no timeout_seconds: the client retries once after a 410, then raises
            for _ in watch.Watch().stream(custom.list_namespaced_custom_object, *ISTIO, "bookinfo", "serviceentries",
                                          resource_version=listed["metadata"]["resourceVersion"]):
                pass
        except ApiException as e:
            outcome.append(e)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert fake.wait_for_watches(1)
    fake.compact()
    consumer.join(5)

    assert not consumer.is_alive()
    assert [e.status for e in outcome if isinstance(e, ApiException)] == [410]
    assert verbs(fake.requests) == ["list", "watch", "watch"]


# --------------------------------------------------------------------------- status subresource


def test_status_writes_change_only_status_and_spec_changes_bump_generation(
        fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    created = apply(custom, traffic_policy())
    status = {"conditions": [{"type": "Ready", "status": "True", "reason": "Applied", "message": "",
                              "observedGeneration": 1, "lastTransitionTime": "2025-01-01T00:00:00Z"}]}

    patched = js(custom.patch_namespaced_custom_object_status(
        *MESH, "bookinfo", "trafficpolicies", "reviews-split",
        {"spec": {"route": []}, "metadata": {"labels": {"sneaky": "yes"}}, "status": status}))
    assert patched["status"] == status
    assert patched["spec"] == created["spec"] and "labels" not in patched["metadata"]
    assert patched["metadata"]["generation"] == 1
    assert int(patched["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    replaced = js(custom.replace_namespaced_custom_object_status(
        *MESH, "bookinfo", "trafficpolicies", "reviews-split", {**patched, "status": {"conditions": []}}))
    assert replaced["status"] == {"conditions": []} and replaced["metadata"]["generation"] == 1

    # The main resource ignores .status and bumps the generation only for spec changes.
    same_spec = apply(custom, {**traffic_policy(), "status": {"conditions": "ignored"}})
    assert same_spec["status"] == {"conditions": []} and same_spec["metadata"]["generation"] == 1
    changed = apply(custom, traffic_policy(weight=60))
    assert changed["metadata"]["generation"] == 2 and changed["status"] == {"conditions": []}
    assert [r.subresource for r in fake.writes()] == [None, "status", "status", None, None]


# --------------------------------------------------------------------------- fault injection


@pytest.mark.parametrize("status", [429, 503, 500, 409], ids=["throttled", "unavailable", "internal", "conflict"])
def test_fail_next_answers_the_matching_request_with_a_status_then_serves_normally(
        fake: FakeKube, custom: client.CustomObjectsApi, status: int) -> None:
    fake.fail_next("PATCH", r"/serviceentries/reviews$", status)
    with pytest.raises(ApiException) as e:
        apply(custom, service_entry())
    assert e.value.status == status
    body = error_body(e.value)
    assert (body["kind"], body["code"]) == ("Status", status)
    assert (e.value.headers or {}).get("Retry-After") == ("1" if status == 429 else None)

    assert apply(custom, service_entry())["metadata"]["name"] == "reviews"
    assert verbs(fake.requests) == ["apply", "apply"]


def test_fail_next_on_reads_surfaces_as_api_exception(fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    fake.fail_next("GET", r"/serviceentries$", 503, times=2, message="etcd leader changed")
    for _ in range(2):
        with pytest.raises(ApiException) as e:
            js(custom.list_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries"))
        assert (e.value.status, error_body(e.value)["message"]) == (503, "etcd leader changed")
    assert js(custom.list_namespaced_custom_object(*ISTIO, "bookinfo", "serviceentries"))["items"] == []


def test_admission_denial_carries_the_webhook_message(fake: FakeKube, custom: client.CustomObjectsApi) -> None:
    fake.deny_admission(r"/virtualservices/|/serviceentries/", "configuration is invalid: hosts: bad")
    with pytest.raises(ApiException) as e:
        apply(custom, service_entry())
    assert e.value.status == 400
    assert error_body(e.value)["message"] == (
        'admission webhook "validation.istio.io" denied the request: configuration is invalid: hosts: bad')
    assert fake.objects("networking.istio.io/v1", "ServiceEntry") == []


# --------------------------------------------------------------------------- discovery and schemas


def test_dynamic_client_discovers_istio_and_meshfleet_kinds_and_applies(
        fake: FakeKube, api: client.ApiClient, tmp_path: Path) -> None:
    dyn = DynamicClient(api, cache_file=str(tmp_path / "discovery.json"))
    vs_api = dyn.resources.get(api_version="networking.istio.io/v1", kind="VirtualService")
    mesh_cluster = dyn.resources.get(api_version="meshfleet.io/v1alpha1", kind="MeshCluster")
    assert (vs_api.namespaced, mesh_cluster.namespaced) == (True, False)

    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "reviews", "namespace": "bookinfo"},
          "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}, "weight": 100}]}]}}
    applied = vs_api.server_side_apply(body=vs, field_manager="meshfleet-agent", force_conflicts=True)
    assert applied.metadata.resourceVersion == fake.resource_version
    assert fake.get("networking.istio.io/v1beta1", "VirtualService", "reviews", "bookinfo")["spec"] == vs["spec"]  # type: ignore[index]
    assert fake.writes()[-1].query == {"fieldManager": "meshfleet-agent", "force": "true"}


def test_crd_validation_refuses_invalid_objects_with_422_and_the_field_errors(tmp_path: Path) -> None:
    bad = service_entry(resolution="SOMETIMES", colour="blue")
    with FakeKube(crds=istio_schemas()) as fake, fake.api_client() as api:
        custom = client.CustomObjectsApi(api)
        with pytest.raises(ApiException) as e:
            apply(custom, bad)
        assert apply(custom, service_entry())["metadata"]["generation"] == 1
    assert e.value.status == 422
    body = error_body(e.value)
    assert body["reason"] == "Invalid"
    assert body["message"].startswith('ServiceEntry.networking.istio.io "reviews" is invalid: [')
    fields = {c["field"] for c in body["details"]["causes"]}
    assert {"spec.colour", "spec.resolution"} <= fields


# --------------------------------------------------------------------------- lifecycle


def test_stop_ends_an_open_watch_stream_promptly() -> None:
    fake = FakeKube().start()
    ended = threading.Event()
    with fake.api_client() as api:
        custom = client.CustomObjectsApi(api)

        def consume() -> None:
            stream = watch.Watch().stream(custom.list_namespaced_custom_object, *ISTIO, "bookinfo", "serviceentries",
                                          timeout_seconds=60)
            for _ in stream:
                pass
            ended.set()

        consumer = threading.Thread(target=consume)
        consumer.start()
        assert fake.wait_for_watches(1)
        began = time.monotonic()
        fake.stop()
        consumer.join(5)
        assert ended.is_set() and time.monotonic() - began < 2
    fake.stop()  # idempotent
