"""The hub's Kubernetes policy source: TrafficPolicy custom resources, listed then watched.

`ResourceWatch` keeps an up-to-date copy of one kind's objects in a background
thread (the `kubernetes` client is synchronous): list, then watch from the
list's resourceVersion; re-list on 410 Gone and every `resync` seconds (so a
missed event heals); reconnect with backoff on errors. Every change calls
`on_change`, which the hub turns into a (debounced) translation.

`KubePolicySource` presents the watched objects the way the directory source
does (`policies`, `errors`, `scan()`), so the hub needs no second code path.
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

from mgmt.model import TrafficPolicy
from mgmt.policies import PolicyError, parse_resource

log = logging.getLogger(__name__)

GROUP, VERSION = "meshfleet.io", "v1alpha1"


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
    """A live copy of one custom resource kind across all namespaces."""

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

    def start(self) -> ResourceWatch:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()
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
        self.synced.set()
        if changed:
            self.on_change()
        return str(listed["metadata"]["resourceVersion"])

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
                self.on_change()
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
        delay = min(s.backoff_max, s.backoff_initial * 2**attempt) * (0.5 + random.random() / 2)
        log.warning("watching %s failed (%s); retrying in %.1f s", self.plural, why, delay)
        self._stopped.wait(delay)


class KubePolicySource:
    """TrafficPolicy CRs as the hub's policy source: `policies`, `errors`, `scan()` like the directory one."""

    def __init__(self, watch: ResourceWatch) -> None:
        self.watch = watch
        self.policies: tuple[TrafficPolicy, ...] = ()
        self.errors: tuple[PolicyError, ...] = ()
        self._seen: Mapping[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()  # the hub scans from its poll thread and from watch nudges

    def last_good(self) -> dict[str, str]:
        return {}  # the API server keeps the resources; nothing to persist

    def scan(self) -> bool:
        """Re-parse if the watched objects changed; True if the policies or errors did."""
        with self._lock:
            return self._scan()

    def _scan(self) -> bool:
        objects = self.watch.objects()
        if objects == self._seen:
            return False
        self._seen = objects
        policies, errors = [], []
        for key in sorted(objects):
            try:
                policies.append(parse_resource(objects[key]))
            except ValueError as exc:
                errors.append(PolicyError(f"TrafficPolicy {key[0]}/{key[1]}", 0, str(exc)))
        changed = (tuple(policies), tuple(errors)) != (self.policies, self.errors)
        self.policies, self.errors = tuple(policies), tuple(errors)
        return changed
