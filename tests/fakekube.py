"""An in-process fake Kubernetes API server over HTTP, for tests that run the real `kubernetes` client.

`FakeKube` listens on 127.0.0.1 (port 0) in a background thread and serves, for the kinds of a
data-driven table (`DEFAULT_KINDS`), the API the hub and the agent use:

* discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`), enough for
  `kubernetes.dynamic.DynamicClient`;
* get, list (labelSelector, fieldSelector on metadata.name/namespace, limit/continue), watch
  (chunked JSON lines, synthetic ADDED without a resourceVersion, replay after a resourceVersion,
  BOOKMARK on request, timeoutSeconds), create, update, merge/JSON patch, server-side apply,
  delete and deletecollection, and the status subresource.

Faithful to kube-apiserver (what tests may rely on):

* One resourceVersion counter for the whole server (like etcd's revision); list metadata carries
  it; uid, creationTimestamp, generation and resourceVersion are set by the server, whatever the
  client sends.  PUT on a custom resource needs metadata.resourceVersion (422 otherwise); a stale
  one (PUT, patch or apply) is a 409 Conflict.  A write that changes nothing (object and field
  ownership identical) is not persisted: resourceVersion stays, no watch event ("no-op apply").
  `dryRun=All` validates and answers the would-be object (conflicts and 422s included) but
  persists nothing.
* Status subresource: writes to the main resource ignore `.status` (also on create) and bump
  `metadata.generation` when anything outside metadata/status changes; writes to `/status`
  change only `.status` and never the generation.
* Server-side apply (`application/apply-patch+yaml`, `fieldManager` required, `force`): creates
  the object when absent (201); per-manager field ownership in `metadata.managedFields`
  (FieldsV1, operation Apply/Update, subresource); conflicts answer 409 with the real message
  ("Apply failed with 1 conflict: conflict with \"kubectl\" using networking.istio.io/v1:
  .spec.hosts") and `FieldManagerConflict` causes; `force=true` takes the conflicting fields over;
  fields a manager applied before and omits now are removed unless another manager owns them;
  applying a value equal to the live one makes the manager a co-owner without conflict.  Updates
  (POST/PUT/merge patch) make their manager (fieldManager, else the User-Agent product, e.g.
  "OpenAPI-Generator") own the fields they changed, taking them from the other managers.
* Watch semantics: label-selector transitions turn MODIFIED into ADDED/DELETED as seen by the
  watcher; objects carry the apiVersion the watcher asked for (all versions of a resource share one
  store, like a multi-version CRD).
* Expiry: `compact()` makes every resourceVersion issued so far too old.  Watches from such a
  version, and watches open at the time, get `ERROR` with a Status 410 "Expired" ("too old resource
  version: X (Y)") and end; lists with `resourceVersionMatch=Exact` or a `continue` token from
  before get HTTP 410.  A plain list with an old resourceVersion succeeds, as on a real server
  (it is served "not older than" from the watch cache).
* Errors are `Status` objects with the real reason/message shapes (NotFound, AlreadyExists,
  Conflict, Invalid, BadRequest, Expired...).

Simplified (do not rely on these being real):

* Field ownership granularity: every leaf of the object's map structure (a scalar, a list, or an
  empty map) is one owned field; maps are merged key by key (metadata.labels/annotations too).
  Lists declared in `Kind.map_lists` (`x-kubernetes-list-type: map`: ServiceEntry spec.ports,
  the meshfleet CRDs' status.conditions/status.clusters, MulticlusterService spec.ports, TrustPolicy
  status.roots) merge and are owned item by item (`k:{"cluster":"a"}` in managedFields,
  `[cluster="a"]` in conflict messages; existing items keep their place, new ones are appended).
  **Every other list is atomic** (owned and replaced as a whole): exact for the Istio kinds served
  and for `atomic` lists, not for `set` lists (meshfleet has some; real SSA merges their values) nor
  built-in map lists (Service ports, containers).  Merge patch replaces every list (as for real
  custom resources); strategic merge patch is handled as a JSON merge patch.  Ownership entries
  omit the `.` self-markers.
* Without `crds`, objects are stored as sent: no pruning, no schema validation.
* No admission chain beyond `crds` validation and injected faults; no defaulting; no finalizers
  or graceful deletion (DELETE removes at once; propagationPolicy is ignored); namespaces need not
  exist; no RBAC/authentication; `continue` pages read the current state (not a
  snapshot); list items always carry apiVersion/kind; every non-core kind has metadata.generation.
* CRD validation (when `crds` is given): created/updated/applied objects of kinds the CRDs serve
  are checked with `meshfleet.crdschemas.CRDSchemas` and refused with 422 Invalid listing the
  field errors.  The real server silently prunes unknown fields (or refuses them with 400 under
  fieldValidation=Strict); here they are refused with 422 like any other error.  `put()` bypasses
  validation, to seed objects a test wants to exist whatever the schema says.

Test controls: `requests` (everything that reached the server), `fail_next()` / `deny_admission()`
(fault injection), `compact()`, `bookmark()`, `put()` / `get()` / `objects()` / `delete()` (direct
store access), `wait_for_watches()`.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import copy
import datetime
import json
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

import kubernetes.client
import yaml

from meshfleet.crdschemas import CRDSchemas, FieldError

__all__ = ["DEFAULT_KINDS", "FakeKube", "Kind", "Recorded"]

JSON = dict[str, Any]
_Path = tuple[str, ...]


# --------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Kind:
    """One served resource (one group/version/plural); several versions of a group+plural share a store."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    status: bool = False
    """Whether the resource has a status subresource (`.status` writable only through `/status`)."""
    short_names: tuple[str, ...] = ()
    map_lists: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()
    """(field path, key fields) of every `x-kubernetes-list-type: map` list; every other list is atomic."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """`plural.group` (or `plural` for the core group), as error messages name resources."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def group_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


# Map lists as declared by the CRDs (tests/test_fakekube.py checks they agree with crds/*.yaml and Istio's).
_SE_PORTS = ((("spec", "ports"), ("name",)),)
_STATUS_LISTS = ((("status", "conditions"), ("type",)), (("status", "clusters"), ("cluster",)))
_ISTIO_NETWORKING = (
    ("ServiceEntry", "serviceentries", ("se",), _SE_PORTS),
    ("DestinationRule", "destinationrules", ("dr",), ()),
    ("VirtualService", "virtualservices", ("vs",), ()),
    ("Gateway", "gateways", ("gw",), ()),
)
_ISTIO_SECURITY = (
    ("AuthorizationPolicy", "authorizationpolicies", ("ap",), ()),
    ("PeerAuthentication", "peerauthentications", ("pa",), ()),
)

DEFAULT_KINDS: Final[tuple[Kind, ...]] = (
    Kind("", "v1", "Namespace", "namespaces", namespaced=False, status=True, short_names=("ns",)),
    Kind("", "v1", "Secret", "secrets"),
    Kind("", "v1", "ConfigMap", "configmaps", short_names=("cm",)),
    Kind("", "v1", "Service", "services", status=True, short_names=("svc",)),
    Kind("", "v1", "Pod", "pods", status=True, short_names=("po",)),
    Kind("", "v1", "Endpoints", "endpoints", short_names=("ep",)),
    Kind("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    Kind("apps", "v1", "Deployment", "deployments", status=True, short_names=("deploy",)),
    # Istio 1.30 serves v1 (preferred, listed first), v1beta1 and v1alpha3 of networking, v1 and v1beta1 of security.
    *(Kind("networking.istio.io", v, k, p, status=True, short_names=s, map_lists=m)
      for v in ("v1", "v1beta1", "v1alpha3") for k, p, s, m in _ISTIO_NETWORKING),
    *(Kind("security.istio.io", v, k, p, status=True, short_names=s, map_lists=m)
      for v in ("v1", "v1beta1") for k, p, s, m in _ISTIO_SECURITY),
    Kind("meshfleet.io", "v1alpha1", "MeshCluster", "meshclusters", namespaced=False, status=True,
         map_lists=_STATUS_LISTS),
    Kind("meshfleet.io", "v1alpha1", "MulticlusterService", "multiclusterservices", status=True,
         map_lists=((("spec", "ports"), ("number",)), *_STATUS_LISTS)),
    Kind("meshfleet.io", "v1alpha1", "TrafficPolicy", "trafficpolicies", status=True, map_lists=_STATUS_LISTS),
    Kind("meshfleet.io", "v1alpha1", "FailoverPolicy", "failoverpolicies", status=True,
         map_lists=((("status", "evicted"), ("cluster",)), *_STATUS_LISTS)),
    Kind("meshfleet.io", "v1alpha1", "AccessPolicy", "accesspolicies", status=True, map_lists=_STATUS_LISTS),
    Kind("meshfleet.io", "v1alpha1", "TrustPolicy", "trustpolicies", namespaced=False, status=True,
         map_lists=((("status", "roots"), ("fingerprint",)), *_STATUS_LISTS)),
)


# --------------------------------------------------------------------------- recording and faults


@dataclass(frozen=True)
class Recorded:
    """One request that reached the server (recorded before faults are injected or it is served)."""

    method: str
    """HTTP method: GET, POST, PUT, PATCH, DELETE."""
    verb: str
    """Kubernetes verb: get, list, watch, create, update, patch, apply, delete, deletecollection."""
    path: str
    query: dict[str, str]
    body: Any
    """The parsed JSON/YAML body, None when there was none (the raw text if it did not parse)."""
    resource: str = ""
    """Plural of the resource ("" for discovery)."""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    content_type: str = ""


_WRITE_VERBS: Final = frozenset({"create", "update", "patch", "apply", "delete", "deletecollection"})


@dataclass
class _Fault:
    methods: frozenset[str] | None  # None: any method
    path: re.Pattern[str]
    status: int
    remaining: int
    body: JSON
    headers: dict[str, str]


_REASONS: Final = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
    500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}
_MESSAGES: Final = {
    409: "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest "
         "version and try again",
    429: "Too many requests, please try again later.",
    500: "Internal error occurred: injected by fakekube",
    503: "the server is currently unable to handle the request",
}


def status_body(code: int, message: str, reason: str | None = None, details: JSON | None = None) -> JSON:
    """A `meta/v1 Status` failure, as kube-apiserver returns with every error."""
    body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": message, "reason": reason if reason is not None else _REASONS.get(code, ""),
                  "code": code}
    if details:
        body["details"] = details
    return body


class _StatusError(Exception):
    def __init__(self, code: int, message: str, reason: str | None = None, details: JSON | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = status_body(code, message, reason, details)
        self.headers = dict(headers or {})


def _bad_request(message: str) -> _StatusError:
    return _StatusError(400, message)


def _not_found(kind: Kind, name: str) -> _StatusError:
    return _StatusError(404, f'{kind.group_resource} "{name}" not found',
                        details={"name": name, "group": kind.group, "kind": kind.plural})


def _rv_conflict(kind: Kind, name: str) -> _StatusError:
    return _StatusError(409, f'Operation cannot be fulfilled on {kind.group_resource} "{name}": the object has been '
                             "modified; please apply your changes to the latest version and try again",
                        details={"name": name, "group": kind.group, "kind": kind.plural})


def _expired(message: str) -> _StatusError:
    return _StatusError(410, message, "Expired")


# --------------------------------------------------------------------------- selectors


_SEL_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9][A-Za-z0-9._/-]*)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)|\s(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)
_Predicate = Callable[[Mapping[str, Any]], bool]


def _split_terms(selector: str) -> list[str]:
    """Split on commas outside parentheses (`a in (x,y),b`)."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(selector):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    return [t for t in terms if t.strip()]


def _label_term(term: str) -> _Predicate:
    m = _SEL_TERM.match(term)
    if not m or (m["neg"] and (m["op"] or m["setop"])):
        raise _bad_request(f"unable to parse requirement: {term.strip()!r}: invalid label selector")
    key, op, value = m["key"], m["op"], m["value"]
    if m["setop"]:
        values = {v.strip() for v in m["values"].split(",") if v.strip()}
        if m["setop"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if op in ("=", "=="):
        return lambda labels: labels.get(key) == value
    if op == "!=":
        return lambda labels: labels.get(key) != value
    if m["neg"]:
        return lambda labels: key not in labels
    return lambda labels: key in labels


def parse_label_selector(selector: str) -> _Predicate:
    """A predicate over a labels mapping, for `a=b,c==d,e!=f,g,!h,i in (x,y),j notin (z)`."""
    terms = [_label_term(t) for t in _split_terms(selector)]
    return lambda labels: all(t(labels) for t in terms)


def _field_check(attr: str, value: str, equal: bool) -> Callable[[JSON], bool]:
    return lambda obj: (obj["metadata"].get(attr, "") == value) == equal


def _field_selector(selector: str) -> Callable[[JSON], bool]:
    checks: list[Callable[[JSON], bool]] = []
    for term in _split_terms(selector):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*([^,]*?)\s*$", term)
        if not m:
            raise _bad_request(f"invalid field selector: {term!r}")
        path, op, value = m.groups()
        if path not in ("metadata.name", "metadata.namespace"):
            raise _bad_request(f'field label not supported: {path}')
        checks.append(_field_check(path.split(".")[1], value, op != "!="))
    return lambda obj: all(c(obj) for c in checks)


# --------------------------------------------------------------------------- field paths (ownership)

_MISSING: Final = object()
_OWNABLE_META: Final = ("labels", "annotations", "finalizers", "ownerReferences")
_Scope = Callable[[str], bool]
_MapLists = Mapping[_Path, tuple[str, ...]]

# Ownership works on a "field tree": the object with every map list turned into a map from the item's key
# (`k:{"cluster":"a"}`, as in managedFields) to the item, so that items merge and are owned one by one.


def _item_key(item: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    return "k:" + json.dumps({k: item.get(k) for k in keys}, sort_keys=True, separators=(",", ":"))


def _to_tree(value: Any, fields: _Path, map_lists: _MapLists) -> Any:
    if isinstance(value, dict):
        return {k: _to_tree(v, (*fields, k), map_lists) for k, v in value.items()}
    keys = map_lists.get(fields)
    if keys and isinstance(value, list) and value and all(isinstance(i, dict) for i in value):
        return {_item_key(i, keys): _to_tree(i, fields, map_lists) for i in value}
    return copy.deepcopy(value)


def _from_tree(value: Any, fields: _Path, map_lists: _MapLists) -> Any:
    if not isinstance(value, dict):
        return copy.deepcopy(value)
    if fields in map_lists and all(k.startswith("k:") for k in value):
        return [_from_tree(v, fields, map_lists) for v in value.values()]
    return {k: _from_tree(v, (*fields, k), map_lists) for k, v in value.items()}


def _ownable(obj: Mapping[str, Any], in_scope: _Scope, map_lists: _MapLists) -> JSON:
    """The field tree of the part of `obj` managers can own, restricted to the top-level keys in scope."""
    out: JSON = {}
    for key, value in obj.items():
        if key in ("apiVersion", "kind") or not in_scope(key):
            continue
        if key == "metadata":
            meta = {m: copy.deepcopy(value[m]) for m in _OWNABLE_META if isinstance(value, Mapping) and m in value}
            if meta:
                out["metadata"] = meta
        else:
            out[key] = _to_tree(value, (key,), map_lists)
    return out


def _leaves(value: Any, prefix: _Path = ()) -> list[_Path]:
    """Every owned field, in document order: scalars, atomic lists and empty maps; non-empty maps recurse."""
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*prefix, str(k)))]
    return [prefix] if prefix else []


def _get(value: Any, path: _Path) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _set(root: JSON, path: _Path, value: Any) -> None:
    node = root
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if value == {} and isinstance(node.get(path[-1]), dict):
        return  # applying an empty map keeps what others put in it
    node[path[-1]] = copy.deepcopy(value)


def _delete(root: JSON, path: _Path) -> None:
    """Remove the field and the maps left empty above it."""
    parents: list[tuple[JSON, str]] = []
    node: Any = root
    for part in path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            return
        parents.append((node, part))
        node = node[part]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    for parent, part in reversed(parents):
        if parent[part]:
            break
        del parent[part]


def _overlap(a: _Path, b: _Path) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _covers(applied: _Path, owned: _Path, config: JSON) -> bool:
    """Whether applying the leaf `applied` keeps asserting the previously owned field `owned`."""
    if owned[:len(applied)] == applied and len(owned) > len(applied):
        return bool(_get(config, applied) != {})  # an empty map asserts nothing about its contents
    return _overlap(applied, owned)


def _differs(live: Any, applied: Any) -> bool:
    if applied == {} and isinstance(live, dict):
        return False
    return bool(live != applied)


def _fields_v1(paths: Iterable[_Path]) -> JSON:
    tree: JSON = {}
    for path in sorted(paths):
        node = tree
        for part in path:
            node = node.setdefault(part if part.startswith("k:") else f"f:{part}", {})
    return tree


def _format_path(path: _Path) -> str:
    """`.spec.hosts`, `.status.clusters[cluster="a"].state`, as structured-merge-diff prints paths."""
    out = []
    for part in path:
        if part.startswith("k:"):
            keys = json.loads(part[2:])
            out.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]")
        else:
            out.append(f".{part}")
    return "".join(out)


@dataclass(frozen=True, order=True)
class _Manager:
    name: str
    operation: str  # "Apply" | "Update"
    subresource: str = ""

    def describe(self, api_version: str, when: str | None) -> str:
        text = json.dumps(self.name)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        text += f" using {api_version}"
        if self.operation == "Update" and when:
            text += f" at {when}"
        return text


@dataclass
class _Stored:
    obj: JSON
    """As last written, managedFields included, apiVersion of the version it was written with."""
    owners: dict[_Manager, frozenset[_Path]]
    entries: dict[_Manager, tuple[str, str]]  # manager -> (apiVersion, time)


# --------------------------------------------------------------------------- patches


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _StatusError(422, f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, test."""
    doc = copy.deepcopy(doc)
    if not isinstance(ops, list):
        raise _bad_request("json patch must be a list of operations")
    for op in ops:
        parts = _pointer(str(op.get("path", "")))
        if not parts:
            raise _StatusError(422, "json patch on the document root is not supported")
        parent: Any = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.get(p) if isinstance(parent, dict) else None
            if parent is None:
                raise _StatusError(422, f"json patch: path {op.get('path')!r} not found")
        last, kind = parts[-1], op.get("op")
        try:
            if kind == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
                if current != op.get("value"):
                    raise _StatusError(422, f"json patch: test failed at {op.get('path')!r}")
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind in ("add", "replace"):
                if isinstance(parent, list):
                    if kind == "add":
                        parent.insert(len(parent) if last == "-" else int(last), op.get("value"))
                    else:
                        parent[int(last)] = op.get("value")
                else:
                    if kind == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = op.get("value")
            else:
                raise _StatusError(422, f"json patch: unsupported operation {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise _StatusError(422, f"json patch: cannot {kind} {op.get('path')!r}: {e}") from None
    return doc


# --------------------------------------------------------------------------- routes and watches


@dataclass(frozen=True)
class _Route:
    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclass(frozen=True)
class _Event:
    rv: int
    resource: tuple[str, str]  # (group, plural)
    type: str  # ADDED | MODIFIED | DELETED
    obj: JSON
    previous: JSON | None


@dataclass
class _Watch:
    kind: Kind
    namespace: str | None
    labels: _Predicate
    fields: Callable[[JSON], bool]
    cursor: int
    bookmarks: bool
    deadline: float | None
    bookmark_seq: int
    pending: list[JSON] = field(default_factory=list)
    done: bool = False


@dataclass(frozen=True)
class _Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _sort_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


# --------------------------------------------------------------------------- the server


class FakeKube:
    """A fake kube-apiserver on http://127.0.0.1:PORT; see the module docstring for what is faithful.

    Use as a context manager, or `start()` / `stop()`.  Thread-safe: one condition variable guards
    the store, the event history, the recorded requests and the faults; watches wait on it.

    `kinds`: the resources served (and discovered); `crds`: validate writes of the kinds these CRDs
    serve (422 on errors); `now`: the clock for creationTimestamp and managedFields times (UTC).
    The store outlives `stop()`: starting again simulates an API server restart (on a new port).
    """

    def __init__(
        self,
        kinds: Iterable[Kind] = DEFAULT_KINDS,
        crds: CRDSchemas | None = None,
        now: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self._kinds: dict[tuple[str, str, str], Kind] = {}
        self._by_kind: dict[tuple[str, str], Kind] = {}
        for k in kinds:
            self._kinds[(k.group, k.version, k.plural)] = k
            self._by_kind[(k.api_version, k.kind)] = k
        self._crds = crds
        self._now = now or (lambda: datetime.datetime.now(datetime.UTC))
        self._cond = threading.Condition()
        self._store: dict[tuple[str, str, str, str], _Stored] = {}
        self._history: list[_Event] = []
        self._rv = 1
        self._compacted = 0  # resourceVersions <= this are too old
        self._bookmark_seq = 0
        self._uids = 0
        self._requests: list[Recorded] = []
        self._faults: list[_Fault] = []
        self._watches: list[_Watch] = []
        self._connections: set[socket.socket] = set()
        self._stopping = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeKube:
        """Listen on 127.0.0.1 with a free port and serve in a background thread; sets `url`."""
        if self._server is not None:
            raise RuntimeError("FakeKube already started")
        self._stopping = False
        self._server = _Server(self)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fakekube:{port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: end open watch streams, close every connection and the listening socket, join threads."""
        with self._cond:
            server, thread = self._server, self._thread
            if server is None:
                return
            self._stopping = True
            self._cond.notify_all()
            # Let the woken watch handlers end their streams with the last chunk, so clients see a clean end;
            # a handler stuck writing to a client that does not read is cut below.
            self._cond.wait_for(lambda: not self._watches, timeout=2.0)
        server.shutdown()
        with self._cond:
            connections = list(self._connections)
        for conn in connections:
            _shutdown(conn)
        server.server_close()  # joins the handler threads
        if thread is not None:
            thread.join()
        with self._cond:
            self._server = self._thread = None
            self._watches.clear()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def api_client(self) -> kubernetes.client.ApiClient:
        """A real `kubernetes` ApiClient configured for this server; the caller closes it."""
        return kubernetes.client.ApiClient(kubernetes.client.Configuration(host=self.url))

    # ------------------------------------------------------------------ test controls

    @property
    def requests(self) -> list[Recorded]:
        """Every request that reached the server, in arrival order (a copy)."""
        with self._cond:
            return list(self._requests)

    def writes(self) -> list[Recorded]:
        """The recorded requests whose verb writes (create, update, patch, apply, delete, deletecollection)."""
        return [r for r in self.requests if r.verb in _WRITE_VERBS]

    def clear_requests(self) -> None:
        with self._cond:
            self._requests.clear()

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        times: int = 1,
        body: JSON | None = None,
        *,
        message: str | None = None,
        reason: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next `times` requests whose HTTP method (or "*") and path (`re.search`) match with `status`.

        The body is `body` verbatim, else a Status with `message`/`reason` (defaults per code).  A 429
        carries `Retry-After` (`retry_after`, default 1 s) as API Priority and Fairness does; other codes
        only when `retry_after` is given.  Beware: urllib3 under the client retries GET/PUT/DELETE
        answered 413/429/503 with a Retry-After by itself (3 times by default); PATCH and POST are not
        retried.
        """
        methods = None if method == "*" else frozenset({method.upper()})
        self._add_fault(methods, path_regex, status, times, body, message, reason, retry_after)

    def deny_admission(self, path_regex: str, message: str, *, webhook: str = "validation.istio.io",
                       times: int = 1, status: int = 400) -> None:
        """Refuse the next `times` writes (POST/PUT/PATCH) to matching paths as a validating webhook would.

        The Status message is `admission webhook "<webhook>" denied the request: <message>` (code 400 unless
        the webhook sets one), the text an agent must carry into its NACK.
        """
        text = f'admission webhook "{webhook}" denied the request: {message}'
        self._add_fault(frozenset({"POST", "PUT", "PATCH"}), path_regex, status, times, None, text, None, None)

    def _add_fault(self, methods: frozenset[str] | None, path_regex: str, status: int, times: int,
                   body: JSON | None, message: str | None, reason: str | None, retry_after: int | None) -> None:
        headers = {}
        if status == 429 or retry_after is not None:
            headers["Retry-After"] = str(1 if retry_after is None else retry_after)
        payload = body if body is not None else status_body(
            status, message if message is not None else _MESSAGES.get(status, f"injected failure {status}"), reason)
        with self._cond:
            self._faults.append(_Fault(methods, re.compile(path_regex), status, times, payload, headers))

    def compact(self) -> int:
        """Make every resourceVersion issued so far too old (410) and expire the open watches.

        Returns the compaction point; lists taken afterwards carry a newer resourceVersion.
        """
        with self._cond:
            self._compacted = self._rv
            self._rv += 1
            self._history.clear()
            self._cond.notify_all()
            return self._compacted

    def bookmark(self) -> None:
        """Send a BOOKMARK (current resourceVersion) to every open watch that asked for bookmarks."""
        with self._cond:
            self._bookmark_seq += 1
            self._cond.notify_all()

    @property
    def resource_version(self) -> str:
        with self._cond:
            return str(self._rv)

    @property
    def open_watches(self) -> int:
        with self._cond:
            return sum(not w.done for w in self._watches)

    def wait_for_watches(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until `count` watch streams are registered (events from then on reach them); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: sum(not w.done for w in self._watches) >= count, timeout)

    # ------------------------------------------------------------------ direct store access

    def kind(self, api_version: str, kind: str) -> Kind:
        try:
            return self._by_kind[(api_version, kind)]
        except KeyError:
            raise KeyError(f"FakeKube does not serve {api_version} {kind}") from None

    def put(self, obj: Mapping[str, Any], manager: str = "fakekube-test") -> JSON:
        """Create or replace `obj` as is (status included, no validation), as an Update by `manager`.

        For seeding the store: "an object someone else created".  Returns the stored object.
        """
        k = self.kind(str(obj.get("apiVersion")), str(obj.get("kind")))
        meta = obj.get("metadata") or {}
        name, namespace = str(meta.get("name") or ""), meta.get("namespace") if k.namespaced else None
        if not name or (k.namespaced and not namespace):
            raise ValueError("put() needs metadata.name (and metadata.namespace for a namespaced kind)")
        with self._cond:
            key = self._key(k, namespace, name)
            stored = self._store.get(key)
            _, out = self._update(k, key, stored, copy.deepcopy(dict(obj)), _Manager(manager, "Update"),
                                  lambda _: True, validate=False)
            return out

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> JSON | None:
        """The stored object (a copy, in `api_version`), or None."""
        k = self.kind(api_version, kind)
        with self._cond:
            stored = self._store.get(self._key(k, namespace, name))
            return self._render(stored.obj, k) if stored else None

    def objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[JSON]:
        """Copies of the stored objects of a kind (all namespaces unless given), sorted by namespace/name."""
        k = self.kind(api_version, kind)
        with self._cond:
            return [self._render(s.obj, k) for s in self._select(k, namespace)]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete directly (with a DELETED event); False if it did not exist."""
        k = self.kind(api_version, kind)
        with self._cond:
            key = self._key(k, namespace, name)
            if key not in self._store:
                return False
            self._remove(k, key)
            return True

    # ------------------------------------------------------------------ store internals (lock held)

    def _key(self, kind: Kind, namespace: str | None, name: str) -> tuple[str, str, str, str]:
        return kind.group, kind.plural, (namespace or "") if kind.namespaced else "", name

    def _select(self, kind: Kind, namespace: str | None) -> list[_Stored]:
        found = [s for (g, p, ns, _), s in self._store.items()
                 if (g, p) == (kind.group, kind.plural) and (namespace is None or ns == namespace)]
        return sorted(found, key=lambda s: _sort_key(s.obj))

    @staticmethod
    def _render(obj: JSON, kind: Kind) -> JSON:
        out = copy.deepcopy(obj)
        out["apiVersion"] = kind.api_version
        return out

    def _timestamp(self) -> str:
        return self._now().astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _record_event(self, kind: Kind, etype: str, obj: JSON, previous: JSON | None) -> None:
        self._history.append(_Event(self._rv, (kind.group, kind.plural), etype, copy.deepcopy(obj), previous))
        self._cond.notify_all()

    def _remove(self, kind: Kind, key: tuple[str, str, str, str]) -> JSON:
        stored = self._store.pop(key)
        self._rv += 1
        gone = copy.deepcopy(stored.obj)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._record_event(kind, "DELETED", gone, stored.obj)
        return gone

    def _scope(self, kind: Kind, subresource: str) -> _Scope:
        if subresource == "status":
            return lambda key: key == "status"
        if kind.status:
            return lambda key: key != "status"
        return lambda key: True

    @staticmethod
    def _identity(kind: Kind, namespace: str | None, name: str) -> JSON:
        meta: JSON = {"name": name}
        if kind.namespaced:
            meta["namespace"] = namespace
        return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": meta}

    @staticmethod
    def _with_view(live: JSON, view: JSON, in_scope: _Scope, map_lists: _MapLists) -> JSON:
        """`live` with its in-scope ownable parts replaced by the field tree `view`."""
        meta = {k: copy.deepcopy(v) for k, v in live["metadata"].items()
                if k != "managedFields" and (k not in _OWNABLE_META or not in_scope("metadata"))}
        if in_scope("metadata"):
            meta.update(copy.deepcopy(view.get("metadata", {})))
        out: JSON = {"apiVersion": live["apiVersion"], "kind": live["kind"], "metadata": meta}
        for k, v in live.items():
            if k not in ("apiVersion", "kind", "metadata") and not in_scope(k):
                out[k] = copy.deepcopy(v)
        for k, v in view.items():
            if k != "metadata":
                out[k] = _from_tree(v, (k,), map_lists)
        if "status" in out:  # status last, as the API server serializes it
            out["status"] = out.pop("status")
        return out

    def _update(self, kind: Kind, key: tuple[str, str, str, str], stored: _Stored | None, body: JSON,
                manager: _Manager, in_scope: _Scope, validate: bool = True, dry_run: bool = False) -> tuple[int, JSON]:
        """Store `body` (its in-scope part) as an Update operation of `manager`."""
        live = stored.obj if stored else self._identity(kind, key[2] or None, key[3])
        if stored is None and "generateName" in body.get("metadata", {}):
            live["metadata"]["generateName"] = body["metadata"]["generateName"]
        map_lists = dict(kind.map_lists)
        view, live_view = _ownable(body, in_scope, map_lists), _ownable(live, in_scope, map_lists)
        new_obj = self._with_view(live, view, in_scope, map_lists)
        changed = {p for p in _leaves(view) if _get(live_view, p) != _get(view, p)}
        owners = dict(stored.owners) if stored else {}
        for m, paths in owners.items():
            if m != manager:
                owners[m] = frozenset(q for q in paths if not any(_overlap(q, c) for c in changed))
        owners[manager] = owners.get(manager, frozenset()) | changed
        return self._commit(kind, key, stored, new_obj, owners, manager, validate, dry_run)

    def _apply(self, kind: Kind, key: tuple[str, str, str, str], stored: _Stored | None, config: JSON,
               manager: _Manager, force: bool, dry_run: bool = False) -> tuple[int, JSON]:
        """Server-side apply of `config` by `manager` (see the module docstring for the merge rules)."""
        in_scope = self._scope(kind, manager.subresource)
        live = stored.obj if stored else self._identity(kind, key[2] or None, key[3])
        map_lists = dict(kind.map_lists)
        config_view, live_view = _ownable(config, in_scope, map_lists), _ownable(live, in_scope, map_lists)
        applied = _leaves(config_view)
        owners = dict(stored.owners) if stored else {}
        conflicts: dict[_Manager, set[_Path]] = {}
        for p in sorted(applied):
            if not _differs(_get(live_view, p), _get(config_view, p)):
                continue
            for m, paths in owners.items():
                if m != manager:
                    conflicts.setdefault(m, set()).update(q for q in paths if _overlap(p, q))
        conflicts = {m: qs for m, qs in conflicts.items() if qs}
        if conflicts and not force:
            assert stored is not None
            raise self._conflict_error(kind, key[3], stored, conflicts)
        for m, qs in conflicts.items():
            owners[m] = owners[m] - qs
        new_view = copy.deepcopy(live_view)
        for p in owners.get(manager, frozenset()):
            dropped = not any(_covers(a, p, config_view) for a in applied)
            if dropped and not any(_overlap(p, q) for m, qs in owners.items() if m != manager for q in qs):
                _delete(new_view, p)
        for p in applied:
            _set(new_view, p, _get(config_view, p))
        owners[manager] = frozenset(applied)
        new_obj = self._with_view(live, new_view, in_scope, map_lists)
        return self._commit(kind, key, stored, new_obj, owners, manager, True, dry_run)

    def _conflict_error(self, kind: Kind, name: str, stored: _Stored,
                        conflicts: Mapping[_Manager, set[_Path]]) -> _StatusError:
        def who(m: _Manager) -> str:
            api_version, when = stored.entries.get(m, (kind.api_version, None))
            return m.describe(api_version, when)

        pairs = [(m, p) for m in sorted(conflicts) for p in sorted(conflicts[m])]
        if len(pairs) == 1:
            m, p = pairs[0]
            message = f"Apply failed with 1 conflict: conflict with {who(m)}: {_format_path(p)}"
        else:
            lines = []
            for m in sorted(conflicts):
                lines.append(f"conflicts with {who(m)}:")
                lines.extend(f"- {_format_path(p)}" for p in sorted(conflicts[m]))
            message = f"Apply failed with {len(pairs)} conflicts: " + "\n".join(lines)
        causes = [{"type": "FieldManagerConflict", "message": f"conflict with {who(m)}", "field": _format_path(p)}
                  for m, p in pairs]
        return _StatusError(409, message, "Conflict",
                            {"name": name, "group": kind.group, "kind": kind.plural, "causes": causes})

    def _commit(self, kind: Kind, key: tuple[str, str, str, str], stored: _Stored | None, new_obj: JSON,
                owners: dict[_Manager, frozenset[_Path]], actor: _Manager, validate: bool,
                dry_run: bool = False) -> tuple[int, JSON]:
        """Persist `new_obj` (unless nothing changed, or dry run) with server-set metadata; 201 when created."""
        everything = _ownable(new_obj, lambda _: True, dict(kind.map_lists))
        owners = {m: frozenset(p for p in ps if _get(everything, p) is not _MISSING) for m, ps in owners.items()}
        owners = {m: ps for m, ps in owners.items() if ps}
        new_obj["apiVersion"] = kind.api_version
        new_obj["metadata"].pop("managedFields", None)
        if stored is not None and owners == stored.owners and _comparable(stored.obj) == _comparable(new_obj):
            return 200, self._render(stored.obj, kind)
        if validate:
            self._validate(kind, new_obj)
        meta = new_obj["metadata"]
        rv = self._rv + 1
        if stored is None:
            meta["uid"] = str(uuid.UUID(int=self._uids + 1))
            meta["creationTimestamp"] = self._timestamp()
            if kind.group:
                meta["generation"] = 1
        elif kind.group:
            old_spec, new_spec = _spec(stored.obj), _spec(new_obj)
            meta["generation"] = stored.obj["metadata"].get("generation", 1) + (old_spec != new_spec)
        if not dry_run:
            meta["resourceVersion"] = str(rv)
        elif stored is not None:
            meta["resourceVersion"] = stored.obj["metadata"]["resourceVersion"]
        entries = dict(stored.entries) if stored else {}
        entries[actor] = (kind.api_version, self._timestamp())
        entries = {m: e for m, e in entries.items() if m in owners}
        managed = []
        for m, ps in owners.items():
            entry: JSON = {"manager": m.name, "operation": m.operation, "apiVersion": entries[m][0],
                           "time": entries[m][1], "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(ps)}
            if m.subresource:
                entry["subresource"] = m.subresource
            managed.append(entry)
        if managed:
            meta["managedFields"] = managed
        if dry_run:
            return (200 if stored else 201), self._render(new_obj, kind)
        self._rv = rv
        self._uids += stored is None
        self._store[key] = _Stored(new_obj, owners, entries)
        self._record_event(kind, "MODIFIED" if stored else "ADDED", new_obj, stored.obj if stored else None)
        return (200 if stored else 201), self._render(new_obj, kind)

    def _validate(self, kind: Kind, obj: JSON) -> None:
        if self._crds is None or (kind.api_version, kind.kind) not in self._crds.kinds():
            return
        errors = self._crds.validate(obj)
        if errors:
            name = obj["metadata"].get("name", "")
            listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
            causes = [{"reason": _cause_reason(e), "message": e.message, "field": e.path} for e in errors]
            raise _StatusError(422, f'{kind.group_kind} "{name}" is invalid: {listed}', "Invalid",
                               {"name": name, "group": kind.group, "kind": kind.kind, "causes": causes})

    # ------------------------------------------------------------------ request handling

    def _route(self, path: str) -> _Route | None:
        """The resource a path addresses, None for discovery paths; raises 404 for unknown ones."""
        segs = [unquote(s) for s in path.split("/") if s]
        if segs[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", segs[2:]
        elif len(segs) >= 3 and segs[0] == "apis":
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            return None
        if not rest:
            return None
        if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace: str | None = rest[1]
            rest = rest[2:]
        else:
            namespace = None
        if len(rest) > 3:
            raise _StatusError(404, "the server could not find the requested resource")
        kind = self._kinds.get((group, version, rest[0]))
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if (kind is None or (namespace is not None and not kind.namespaced)
                or (kind.namespaced and name is not None and namespace is None)
                or (sub is not None and (sub != "status" or not kind.status))):
            raise _StatusError(404, "the server could not find the requested resource")
        return _Route(kind, namespace, name, sub)

    @staticmethod
    def _verb(method: str, route: _Route | None, query: Mapping[str, str], content_type: str) -> str:
        if route is None:
            return "get"
        if method == "GET":
            return "get" if route.name else "watch" if _flag(query.get("watch")) else "list"
        if method == "POST":
            return "create"
        if method == "PUT":
            return "update"
        if method == "PATCH":
            return "apply" if content_type == "application/apply-patch+yaml" else "patch"
        if method == "DELETE":
            return "delete" if route.name else "deletecollection"
        return method.lower()

    def _handle(self, method: str, path: str, query: dict[str, str], raw: bytes, content_type: str,
                user_agent: str) -> _Response | _Watch:
        body: Any = None
        parse_error = None
        if raw:
            text = raw.decode("utf-8", errors="replace")
            try:
                body = json.loads(text)
            except ValueError:
                try:
                    body = yaml.safe_load(text)
                except yaml.YAMLError as e:
                    body, parse_error = text, str(e)
        route: _Route | None = None
        route_error: _StatusError | None = None
        try:
            route = self._route(path)
        except _StatusError as e:
            route_error = e
        verb = self._verb(method, route, query, content_type)
        with self._cond:
            self._requests.append(Recorded(
                method, verb, path, dict(query), copy.deepcopy(body),
                resource=route.kind.plural if route else "", namespace=route.namespace if route else None,
                name=route.name if route else None, subresource=route.subresource if route else None,
                content_type=content_type))
            for fault in self._faults:
                if (fault.methods is None or method in fault.methods) and fault.path.search(path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return _Response(fault.status, copy.deepcopy(fault.body), dict(fault.headers))
        try:
            if route_error is not None:
                raise route_error
            if parse_error is not None:
                raise _bad_request(f"the body of the request was in an unknown format: {parse_error}")
            if route is None:
                return _Response(200, self._discovery(path))
            if verb == "watch":
                return self._open_watch(route, query)
            return self._serve(route, verb, query, body, user_agent)
        except _StatusError as e:
            return _Response(e.code, e.body, e.headers)

    def _serve(self, route: _Route, verb: str, query: Mapping[str, str], body: Any, user_agent: str) -> _Response:
        kind = route.kind
        if verb in ("create", "update", "patch", "apply") and (
                not isinstance(body, dict) and not (verb == "patch" and isinstance(body, list))):
            raise _bad_request("the body of the request must be an object")
        if "force" in query and verb != "apply":
            raise _StatusError(422, 'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be '
                                    "specified for non-apply patch")
        manager_name = query.get("fieldManager") or user_agent.split("/")[0] or "unknown"
        dry_run = bool(query.get("dryRun"))  # "All": validate and answer, persist nothing
        with self._cond:
            if verb == "list":
                return _Response(200, self._list(route, query))
            if verb == "deletecollection":
                return _Response(200, self._delete_collection(route, query, dry_run))
            if verb == "create":
                return self._create(route, body, manager_name, dry_run)
            assert route.name is not None
            key = self._key(kind, route.namespace, route.name)
            stored = self._store.get(key)
            if verb == "get":
                if stored is None:
                    raise _not_found(kind, route.name)
                return _Response(200, self._render(stored.obj, kind))
            if verb == "delete":
                return _Response(200, self._delete_one(route, key, stored, body, dry_run))
            sub = route.subresource or ""
            if verb == "apply":
                manager = query.get("fieldManager")
                if not manager:
                    raise _StatusError(422, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                                            "is required for apply patch")
                if not body.get("apiVersion") or not body.get("kind"):
                    raise _bad_request("error decoding YAML: Object 'Kind' or 'apiVersion' is missing")
                self._check_body(route, body, stored)
                status, out = self._apply(kind, key, stored, body, _Manager(manager, "Apply", sub),
                                          _flag(query.get("force")), dry_run)
                return _Response(status, out)
            if stored is None:
                raise _not_found(kind, route.name)
            if verb == "patch":
                if isinstance(body, list):
                    patched = _json_patch(self._render(stored.obj, kind), body)
                else:
                    patched = _merge_patch(self._render(stored.obj, kind), body)
                if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
                    raise _StatusError(422, "the patch must leave an object with metadata")
                body = patched
            self._check_body(route, body, stored)
            if verb == "update" and kind.group and not body["metadata"].get("resourceVersion"):
                # Custom resources disallow unconditional updates (core kinds such as Secret allow them).
                raise _StatusError(422, f'{kind.group_kind} "{route.name}" is invalid: metadata.resourceVersion: '
                                        "Invalid value: 0x0: must be specified for an update", "Invalid")
            status, out = self._update(kind, key, stored, body, _Manager(manager_name, "Update", sub),
                                       self._scope(kind, sub), dry_run=dry_run)
            return _Response(status, out)

    def _check_body(self, route: _Route, body: JSON, stored: _Stored | None) -> None:
        kind = route.kind
        if body.get("apiVersion", kind.api_version) != kind.api_version:
            raise _bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match the expected "
                               f"API version ({kind.api_version})")
        if body.get("kind", kind.kind) != kind.kind:
            raise _bad_request(f"the kind in the data ({body.get('kind')}) does not match the expected kind "
                               f"({kind.kind})")
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        name = meta.setdefault("name", route.name)
        if name != route.name:
            raise _bad_request(f"the name of the object ({name}) does not match the name on the URL ({route.name})")
        if kind.namespaced and meta.setdefault("namespace", route.namespace) != route.namespace:
            raise _bad_request("the namespace of the provided object does not match the namespace sent on the request")
        rv = meta.get("resourceVersion")
        if rv and stored is not None and rv != stored.obj["metadata"]["resourceVersion"]:
            assert route.name is not None
            raise _rv_conflict(kind, route.name)

    def _create(self, route: _Route, body: JSON, manager: str, dry_run: bool) -> _Response:
        kind = route.kind
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        name = meta.get("name")
        if not name and meta.get("generateName"):
            self._uids += 1
            name = meta["name"] = f"{meta['generateName']}{self._uids:05x}"
        if not name:
            raise _StatusError(422, f'{kind.group_kind} "" is invalid: metadata.name: Required value: name or '
                                    "generateName is required", "Invalid")
        if kind.namespaced:
            namespace = meta.setdefault("namespace", route.namespace)
            if route.namespace is None or namespace != route.namespace:
                raise _bad_request("the namespace of the provided object does not match the namespace sent on the "
                                   "request")
        else:
            meta.pop("namespace", None)
        self._check_body(_Route(kind, route.namespace, str(name), None), body, None)
        key = self._key(kind, route.namespace, str(name))
        if key in self._store:
            raise _StatusError(409, f'{kind.group_resource} "{name}" already exists', "AlreadyExists",
                               {"name": name, "group": kind.group, "kind": kind.plural})
        status, out = self._update(kind, key, None, body, _Manager(manager, "Update"), self._scope(kind, ""),
                                   dry_run=dry_run)
        return _Response(status, out)

    def _delete_one(self, route: _Route, key: tuple[str, str, str, str], stored: _Stored | None, body: Any,
                    dry_run: bool) -> JSON:
        kind = route.kind
        assert route.name is not None
        if stored is None:
            raise _not_found(kind, route.name)
        pre = body.get("preconditions") if isinstance(body, dict) else None
        if isinstance(pre, dict) and (
                (pre.get("resourceVersion") and pre["resourceVersion"] != stored.obj["metadata"]["resourceVersion"])
                or (pre.get("uid") and pre["uid"] != stored.obj["metadata"]["uid"])):
            raise _rv_conflict(kind, route.name)
        if not dry_run:
            self._remove(kind, key)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": route.name, "group": kind.group, "kind": kind.plural,
                            "uid": stored.obj["metadata"]["uid"]}}

    def _matching(self, route: _Route, query: Mapping[str, str]) -> list[_Stored]:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = _field_selector(query.get("fieldSelector", ""))
        return [s for s in self._select(route.kind, route.namespace)
                if labels(s.obj["metadata"].get("labels") or {}) and fields(s.obj)]

    def _list(self, route: _Route, query: Mapping[str, str]) -> JSON:
        kind = route.kind
        items = self._matching(route, query)
        list_rv = self._rv
        token = query.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                list_rv, after = int(state["rv"]), (str(state["ns"]), str(state["name"]))
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise _bad_request("continue key is not valid") from None
            if list_rv <= self._compacted:
                raise _expired("The provided continue parameter is too old to display a consistent list result. "
                               "You can start a new list without the continue parameter.")
            items = [s for s in items if _sort_key(s.obj) > after]
        elif (query.get("resourceVersion") and query.get("resourceVersionMatch") == "Exact"
              and self._parse_rv(query["resourceVersion"]) <= self._compacted):
            raise _expired("The resourceVersion for the provided list is too old.")
        meta: JSON = {"resourceVersion": str(list_rv)}
        limit = int(query.get("limit") or 0)
        if 0 < limit < len(items):
            ns, name = _sort_key(items[limit - 1].obj)
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": list_rv, "ns": ns, "name": name}).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List", "metadata": meta,
                "items": [self._render(s.obj, kind) for s in items]}

    def _delete_collection(self, route: _Route, query: Mapping[str, str], dry_run: bool) -> JSON:
        kind = route.kind
        matching = self._matching(route, query)
        gone = [s.obj if dry_run else self._remove(kind, self._key(kind, s.obj["metadata"].get("namespace"),
                                                                   s.obj["metadata"]["name"]))
                for s in matching]
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self._rv)}, "items": [self._render(o, kind) for o in gone]}

    @staticmethod
    def _parse_rv(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise _bad_request(f"resourceVersion: Invalid value: {value!r}: must be an integer") from None

    # ------------------------------------------------------------------ watches

    def _open_watch(self, route: _Route, query: Mapping[str, str]) -> _Watch:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = _field_selector(query.get("fieldSelector", ""))
        timeout = query.get("timeoutSeconds")
        deadline = time.monotonic() + float(timeout) if timeout else None
        rv_text = query.get("resourceVersion", "")
        with self._cond:
            w = _Watch(route.kind, route.namespace, labels, fields, self._rv, _flag(query.get("allowWatchBookmarks")),
                       deadline, self._bookmark_seq)
            initial_events = _flag(query.get("sendInitialEvents"))
            if rv_text not in ("", "0"):
                w.cursor = self._parse_rv(rv_text)
                if w.cursor <= self._compacted:
                    w.pending, w.done = [self._too_old(w.cursor)], True
            if not w.done and (rv_text in ("", "0") or initial_events):
                w.cursor = self._rv
                w.pending = [{"type": "ADDED", "object": self._render(s.obj, route.kind)}
                             for s in self._matching(route, query)]
                if initial_events and w.bookmarks:  # the "initial-events-end" bookmark of streaming lists
                    w.pending.append({"type": "BOOKMARK", "object": {
                        "kind": route.kind.kind, "apiVersion": route.kind.api_version,
                        "metadata": {"resourceVersion": str(self._rv),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}})
            self._watches.append(w)
            self._cond.notify_all()
        return w

    def _too_old(self, rv: int) -> JSON:
        body = status_body(410, f"too old resource version: {rv} ({self._compacted + 1})", "Expired")
        return {"type": "ERROR", "object": body}

    def _next_events(self, w: _Watch) -> list[JSON] | None:
        """Block until `w` has events to send (returned) or must end (None)."""
        with self._cond:
            while True:
                if w.pending:
                    out, w.pending = w.pending, []
                    return out
                if w.done or self._stopping:
                    return None
                if w.cursor <= self._compacted:
                    w.done = True
                    return [self._too_old(w.cursor)]
                out = self._events_after(w)
                if w.bookmarks and w.bookmark_seq != self._bookmark_seq:
                    w.bookmark_seq = self._bookmark_seq
                    out.append({"type": "BOOKMARK", "object": {
                        "kind": w.kind.kind, "apiVersion": w.kind.api_version,
                        "metadata": {"resourceVersion": str(w.cursor)}}})
                if out:
                    return out
                remaining = None if w.deadline is None else w.deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    w.done = True
                    return None
                self._cond.wait(remaining)

    def _events_after(self, w: _Watch) -> list[JSON]:
        out: list[JSON] = []
        start = bisect.bisect_right(self._history, w.cursor, key=lambda e: e.rv)
        for ev in self._history[start:]:
            w.cursor = ev.rv
            if ev.resource != (w.kind.group, w.kind.plural):
                continue
            if w.namespace is not None and ev.obj["metadata"].get("namespace") != w.namespace:
                continue
            # A watcher sees an object enter or leave its selection as ADDED / DELETED, like the watch cache.
            now = ev.type != "DELETED" and self._watch_sees(w, ev.obj)
            before = ev.previous is not None and self._watch_sees(w, ev.previous)
            etype = "MODIFIED" if now and before else "ADDED" if now else "DELETED" if before else None
            if etype:
                out.append({"type": etype, "object": self._render(ev.obj, w.kind)})
        w.cursor = max(w.cursor, self._rv)
        return out

    @staticmethod
    def _watch_sees(w: _Watch, obj: JSON) -> bool:
        return w.labels(obj["metadata"].get("labels") or {}) and w.fields(obj)

    def _close_watch(self, w: _Watch) -> None:
        with self._cond:
            w.done = True
            if w in self._watches:
                self._watches.remove(w)
            self._cond.notify_all()

    # ------------------------------------------------------------------ discovery

    def _discovery(self, path: str) -> JSON:
        segs = [s for s in path.split("/") if s]
        if segs == ["version"]:
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fakekube", "gitCommit": "fakekube",
                    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
                    "compiler": "gc", "platform": "linux/amd64"}
        if segs == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": self.url.removeprefix("http://")}]}
        groups = self._groups()
        if segs == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [self._group_doc(g, vs) for g, vs in groups.items() if g]}
        if len(segs) == 2 and segs[0] == "apis" and segs[1] in groups and segs[1]:
            return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(segs[1], groups[segs[1]])}
        if segs == ["api", "v1"]:
            return self._resource_list("", "v1")
        if len(segs) == 3 and segs[0] == "apis" and segs[2] in groups.get(segs[1], []):
            return self._resource_list(segs[1], segs[2])
        raise _StatusError(404, "the server could not find the requested resource")

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for group, version, _ in self._kinds:
            versions = groups.setdefault(group, [])
            if version not in versions:
                versions.append(version)
        return groups

    @staticmethod
    def _group_doc(group: str, versions: list[str]) -> JSON:
        listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": listed, "preferredVersion": dict(listed[0])}

    def _resource_list(self, group: str, version: str) -> JSON:
        resources: list[JSON] = []
        for k in self._kinds.values():
            if (k.group, k.version) != (group, version):
                continue
            resources.append({"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced,
                              "kind": k.kind, "shortNames": list(k.short_names),
                              "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update",
                                        "watch"]})
            if k.status:
                resources.append({"name": f"{k.plural}/status", "singularName": "", "namespaced": k.namespaced,
                                  "kind": k.kind, "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}".lstrip("/"),
                "resources": resources}

    # ------------------------------------------------------------------ connections

    def _track(self, conn: socket.socket) -> None:
        with self._cond:
            if self._stopping:
                _shutdown(conn)
            else:
                self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections.discard(conn)


def _comparable(obj: JSON) -> JSON:
    out = {k: v for k, v in obj.items() if k != "apiVersion"}
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
    return out


def _spec(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}


def _cause_reason(error: FieldError) -> str:
    for prefix, reason in (("Required value", "FieldValueRequired"), ("Unsupported value", "FieldValueNotSupported"),
                           ("Duplicate value", "FieldValueDuplicate"), ("Too long", "FieldValueTooLong"),
                           ("Too many", "FieldValueTooMany"), ("Forbidden", "FieldValueForbidden")):
        if error.message.startswith(prefix):
            return reason
    return "FieldValueInvalid"


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer
        conn.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeKube) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away, or stop() shut the connection down
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked watch streams
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read fake.requests instead

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            result = fake._handle(method, url.path, query, raw, content_type, self.headers.get("User-Agent") or "")
        except Exception as e:  # a bug in the fake: make it visible to the client, not only in a thread
            result = _Response(500, status_body(500, f"fakekube internal error: {e!r}"))
        if isinstance(result, _Watch):
            self._stream(result)
        else:
            self._send(result)

    def _send(self, response: _Response) -> None:
        data = json.dumps(response.body).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in response.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, watch: _Watch) -> None:
        fake = self.server.fake
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while (events := fake._next_events(watch)) is not None:
                data = "".join(json.dumps(e) + "\n" for e in events).encode()
                self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
        finally:
            fake._close_watch(watch)
            if fake._stopping:
                self.close_connection = True
