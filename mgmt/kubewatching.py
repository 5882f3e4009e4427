"""The hub's Kubernetes policy source: the custom resources of every policy kind, listed then watched.

`ResourceWatch` keeps an up-to-date copy of one kind's objects in a background
thread (the `kubernetes` client is synchronous): list, then watch from the
list's resourceVersion; re-list on 410 Gone and every `resync` seconds (so a
missed event heals); reconnect with backoff on errors. Every change calls
`on_change`, which the hub turns into a (debounced) translation.

`KubePolicySource` runs one watch per kind (MulticlusterService, TrafficPolicy,
FailoverPolicy, AccessPolicy, and the cluster-scoped TrustPolicy) and presents the
watched objects the way the directory source does (`resources`, `errors`, `scan()`),
so the hub needs no second code path; `objects()` gives the live objects, for status
writing (a cluster-scoped object's namespace is "").
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import watch as kwatch
from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from mgmt.model import AnyResource, Resources, cr_ref
from mgmt.policies import PolicyError, parse_resource

log = logging.getLogger(__name__)

GROUP, VERSION = "meshfleet.io", "v1alpha1"
# the resource (plural) of each policy kind, as the CRDs in crds/ name them
PLURALS = {"MulticlusterService": "multiclusterservices", "TrafficPolicy": "trafficpolicies",
           "FailoverPolicy": "failoverpolicies", "AccessPolicy": "accesspolicies", "TrustPolicy": "trustpolicies"}


@dataclass(frozen=True)
class WatchSettings:
    """How a kind is watched; every duration in seconds."""

    resync: float = 300.0
    """Full re-list period, healing anything a watch missed."""
    watch_timeout: int = 60
    """Server-side timeout of one watch request (it is then resumed from the last resourceVersion)."""
    backoff_initial: float = 0.5
    """First delay after an error; doubles up to backoff_max, with jitter."""
    backoff_max: float = 30.0
    """Cap of the error backoff."""


class ResourceWatch:
    """A live copy of one custom resource kind across all namespaces, or of a cluster-scoped kind.

    Both are listed and watched at /apis/<group>/<version>/<plural>; objects are keyed by
    (namespace, name), the namespace "" for a cluster-scoped kind.
    """

    def __init__(self, api: ApiClient, plural: str, on_change: Callable[[], None],
                 settings: WatchSettings = WatchSettings(), group: str = GROUP, version: str = VERSION) -> None:
        self.custom = CustomObjectsApi(api)
        self.plural, self.group, self.version = plural, group, version
        self.on_change = on_change
        self.settings = settings
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watch: kwatch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{plural}", daemon=True)
        self.synced = threading.Event()
        self.lists = 0  # full lists done (initial, 410 recoveries, resyncs)
        self.last_error = ""  # why the last list or watch failed, until a list succeeds

    def start(self) -> ResourceWatch:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.request_stop()
        self.join(timeout)

    def request_stop(self) -> None:
        """Tell the thread to end (the open watch request is cut short), without waiting for it."""
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def objects(self) -> dict[tuple[str, str], dict[str, Any]]:
        """A copy of the current objects by (namespace, name)."""
        with self._lock:
            return dict(self._objects)

    # the thread -------------------------------------------------------------------------------
    def _list(self) -> str:
        listed: dict[str, Any] = self.custom.list_cluster_custom_object(  # type: ignore[assignment]
            self.group, self.version, self.plural)
        objects = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in listed.get("items", [])}
        with self._lock:
            changed = objects != self._objects
            self._objects = objects
        self.lists += 1
        self.last_error = ""
        first = not self.synced.is_set()
        self.synced.set()
        if changed or first:  # the first list counts even when empty: objects deleted while we were away
            self._notify()
        return str(listed["metadata"]["resourceVersion"])

    def _notify(self) -> None:
        try:
            self.on_change()
        except Exception:  # a consumer's bug must not end the watch
            log.exception("handling a change of %s failed", self.plural)

    def _watch_from(self, resource_version: str, until: float) -> None:
        while not self._stopped.is_set() and time.monotonic() < until:
            self._watch = kwatch.Watch()
            timeout = max(1, min(self.settings.watch_timeout, int(until - time.monotonic())))
            for event in self._watch.stream(self.custom.list_cluster_custom_object, self.group, self.version,
                                            self.plural, resource_version=resource_version,
                                            timeout_seconds=timeout, allow_watch_bookmarks=True):
                obj = event["object"]
                resource_version = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                with self._lock:
                    if event["type"] == "DELETED":
                        self._objects.pop(key, None)
                    else:
                        self._objects[key] = obj
                self._notify()
                if self._stopped.is_set():
                    return

    def _run(self) -> None:
        attempt = 0
        while not self._stopped.is_set():
            try:
                resource_version = self._list()
                self._watch_from(resource_version, time.monotonic() + self.settings.resync)
                attempt = 0
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch of %s expired (410 Gone); listing again", self.plural)
                    continue
                self._pause(attempt, f"{exc.status} {exc.reason}")
                attempt += 1
            except (urllib3.exceptions.HTTPError, OSError, ValueError, KeyError) as exc:
                self._pause(attempt, repr(exc))
                attempt += 1

    def _pause(self, attempt: int, why: str) -> None:
        s = self.settings
        self.last_error = why
        delay = min(s.backoff_max, s.backoff_initial * 2**attempt) * (0.5 + random.random() / 2)
        log.warning("watching %s failed (%s); retrying in %.1f s", self.plural, why, delay)
        self._stopped.wait(delay)


class KubePolicySource:
    """The policy custom resources as the hub's policy source: `resources`, `errors`, `scan()` like the directory one.

    Nothing is published until every kind has been listed once: a TrafficPolicy seen
    before the MulticlusterService it names would be refused, and resources of a kind
    not listed yet would look deleted to the clusters.
    """

    def __init__(self, watches: Mapping[str, ResourceWatch]) -> None:
        """`watches`: a ResourceWatch per kind (see `for_api`, which makes one for every policy kind)."""
        if not watches:
            raise ValueError("a KubePolicySource needs at least one watch")
        for kind, w in watches.items():
            if PLURALS.get(kind) != w.plural:
                raise ValueError(f"a {kind} watch must watch {PLURALS.get(kind, 'a policy kind')}, not {w.plural}")
        self.watches: dict[str, ResourceWatch] = dict(watches)
        self.resources = Resources()
        self.errors: tuple[PolicyError, ...] = ()
        self._seen: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._parsed: dict[tuple[str, str, str], AnyResource | PolicyError] = {}
        self._lock = threading.Lock()  # the hub scans from its poll thread and from watch nudges

    @classmethod
    def for_api(cls, api: ApiClient, on_change: Callable[[], None] = lambda: None,
                settings: WatchSettings = WatchSettings()) -> KubePolicySource:
        """A source watching every policy kind through `api` (not started); `on_change` runs on each change."""
        return cls({kind: ResourceWatch(api, plural, on_change, settings) for kind, plural in PLURALS.items()})

    @property
    def on_change(self) -> Callable[[], None]:
        """What every watch calls on a change (the hub's nudge); settable once the hub exists."""
        return next(iter(self.watches.values())).on_change

    @on_change.setter
    def on_change(self, callback: Callable[[], None]) -> None:
        for w in self.watches.values():
            w.on_change = callback

    def start(self) -> KubePolicySource:
        for w in self.watches.values():
            w.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End every watch; they are all told first, so they wind down together, not one after the other."""
        for w in self.watches.values():
            w.request_stop()
        deadline = time.monotonic() + timeout
        for w in self.watches.values():
            w.join(max(0.0, deadline - time.monotonic()))

    def synced(self) -> bool:
        """True once every kind has been listed."""
        return all(w.synced.is_set() for w in self.watches.values())

    def objects(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """The live objects of every kind by (kind, namespace, name), as last listed or watched."""
        return {(kind, ns, name): obj for kind, w in self.watches.items() for (ns, name), obj in w.objects().items()}

    def last_good(self) -> dict[str, str]:
        return {}  # the API server keeps the resources; nothing to persist

    def scan(self) -> bool:
        """Re-parse what changed among the watched objects; True if the resources or errors did."""
        with self._lock:
            return self._scan()

    def _scan(self) -> bool:
        if not self.synced():
            # say why nothing is published yet (e.g. a CRD not installed), rather than wait silently
            waiting = tuple(PolicyError(f"{kind} resources", 0, f"cannot list {w.plural}.{w.group} ({w.last_error});"
                                        " no resource is used until every kind is listed")
                            for kind, w in sorted(self.watches.items()) if not w.synced.is_set() and w.last_error)
            changed, self.errors = waiting != self.errors, waiting
            return changed
        objects = self.objects()
        if objects == self._seen:
            return False
        parsed: dict[tuple[str, str, str], AnyResource | PolicyError] = {}
        for key, obj in objects.items():
            if key in self._parsed and self._seen.get(key) == obj:
                parsed[key] = self._parsed[key]  # unchanged: no need to parse it again
                continue
            try:
                parsed[key] = parse_resource(obj)
            except ValueError as exc:
                parsed[key] = PolicyError(cr_ref(*key), 0, str(exc))
        self._seen, self._parsed = objects, parsed
        resources = Resources.of(r for r in parsed.values() if not isinstance(r, PolicyError))
        errors: list[PolicyError] = []
        for key in sorted(parsed):
            if isinstance(item := parsed[key], PolicyError):
                errors.append(item)
        changed = (resources, tuple(errors)) != (self.resources, self.errors)
        self.resources, self.errors = resources, tuple(errors)
        return changed
