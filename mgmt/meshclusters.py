"""MeshCluster custom resources as the source of the hub's clusters (kube mode), and their status.

In kube mode (`meshfleet hub --kubeconfig/--in-cluster`) a MeshCluster resource is the source of
truth for a cluster's existence, topology (spec.region/zone/network) and labels (metadata.labels,
what clusterSelectors match):

* a new MeshCluster creates the registry entry, with no token: `meshfleet cluster token NAME
  --state-dir DIR` issues the join token for it, as for a cluster added with `cluster add`;
* editing the resource updates the entry in place (certificate, tokens and status are kept; the
  hub re-translates);
* deleting it removes the entry: its tokens die and its certificate stops being accepted (the
  hub's registry refresh ends the stream of a removed cluster).

Clusters added with `meshfleet cluster add` (origin `cli` in the registry) that no MeshCluster
names are left alone and listed in `Plan.unmanaged` (logged once), so turning kube mode on never
revokes an agent. A MeshCluster named like such a cluster adopts it: the entry takes the
resource's topology and labels and becomes managed (origin `meshcluster`), keeping its
certificate, so a fleet moves from the CLI to resources without re-joining; from then on deleting
the resource removes the cluster. An invalid resource (the CRD schema refuses most mistakes; this
catches what it cannot, or an older CRD) is reported in its status and never removes or changes
the cluster it names: the last valid topology and labels stay.

Pure cores: `parse_meshcluster`, `plan` (registry records + resources -> actions and errors) and
`meshcluster_status` (facts + `now` -> a status body). Adapters: `MeshClusterSync` (applies a plan
to a Registry), `MeshClusterSource` (a ResourceWatch of meshclusters driving the sync),
`MeshClusterStatusWriter` (merge-patches the status subresource when it changed) and
`MeshClusterManager` (all of them around a running hub).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from meshfleet.kubeclients import api_message
from meshfleet.names import address_error, dns1123_label_error, labels_error, topology_name_error
from mgmt.kubewatching import GROUP, VERSION, ResourceWatch, WatchSettings
from mgmt.model import Discovery
from mgmt.registry import ORIGIN_CLI, ORIGIN_MESHCLUSTER, ClusterRecord, ClusterStatus, Registry, RegistryError
from mgmt.rotation import CaFacts
from mgmt.statuses import condition, rfc3339

log = logging.getLogger(__name__)

PLURAL = "meshclusters"
KIND = "MeshCluster"
DEFAULT_GATEWAY_PORT = 15443
DEFAULT_WATCH = WatchSettings()


# ---------------------------------------------------------------------------------------------
# parsing and planning (pure)


@dataclass(frozen=True)
class MeshClusterSpec:
    """A valid MeshCluster resource, as far as the registry and the status are concerned."""

    name: str
    """metadata.name: the cluster name."""
    region: str
    """spec.region."""
    zone: str
    """spec.zone."""
    network: str
    """spec.network."""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    """metadata.labels (what clusterSelectors match)."""
    gateway: tuple[str, int] | None = None
    """spec.gateway (address, port): overrides the discovered east-west gateway; None if not set."""


def parse_meshcluster(obj: Mapping[str, Any]) -> MeshClusterSpec:
    """The spec of a MeshCluster object; ValueError naming the first invalid field."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if err := dns1123_label_error(name):
        raise ValueError(f"metadata.name: {err}")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError("spec: required (region, zone and network)")
    topology: list[str] = []
    for key in ("region", "zone", "network"):
        value = spec.get(key)
        if value is None:
            raise ValueError(f"spec.{key}: required")
        if err := topology_name_error(value):
            raise ValueError(f"spec.{key}: {err}")
        topology.append(str(value))
    labels = meta.get("labels") or {}
    if err := labels_error(labels):
        raise ValueError(f"metadata.labels: {err}")
    gateway = None
    if (gw := spec.get("gateway")) is not None:
        if not isinstance(gw, Mapping):
            raise ValueError("spec.gateway: must be an object with address and port")
        address, port = gw.get("address"), gw.get("port", DEFAULT_GATEWAY_PORT)
        if err := address_error(address):
            raise ValueError(f"spec.gateway.address: {err}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"spec.gateway.port: {port!r} is not a port number (1-65535)")
        gateway = (str(address), port)
    region, zone, network = topology
    return MeshClusterSpec(str(name), region, zone, network, labels=dict(labels), gateway=gateway)


@dataclass(frozen=True)
class Action:
    """One change `plan` asks of the registry."""

    verb: Literal["add", "update", "remove"]
    """add: a new entry (origin meshcluster, no token); update: topology/labels in place; remove: delete it."""
    name: str
    """The cluster."""
    spec: MeshClusterSpec | None = None
    """What to store (add and update)."""
    adopt: bool = False
    """update only: the entry was added with `cluster add` and now becomes managed by its MeshCluster."""


@dataclass(frozen=True)
class Plan:
    """What it takes to make the registry match the MeshCluster resources."""

    actions: tuple[Action, ...] = ()
    """Removals, then additions, then updates, each by name."""
    errors: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Resource name -> why the resource is not used (the cluster it names, if any, is left as it is)."""
    unmanaged: tuple[str, ...] = ()
    """Clusters added with `cluster add` that no MeshCluster names: left alone."""


def plan(records: Mapping[str, ClusterRecord], resources: Iterable[Mapping[str, Any]]) -> Plan:
    """Compare the registry with the MeshCluster objects (as listed/watched) and say what to change.

    Contract: managed entries (origin meshcluster) follow their resource and disappear with it;
    `cli` entries are adopted by a resource of their name, else never touched; an invalid
    resource changes nothing, not even the removal of the entry it names.
    """
    specs: dict[str, MeshClusterSpec] = {}
    errors: dict[str, str] = {}
    named: set[str] = set()
    for obj in resources:
        name = str((obj.get("metadata") or {}).get("name") or "")
        named.add(name)
        try:
            specs[name] = parse_meshcluster(obj)
        except ValueError as exc:
            errors[name] = str(exc)
    removes = [Action("remove", n) for n, r in sorted(records.items())
               if r.origin == ORIGIN_MESHCLUSTER and n not in named]
    adds, updates = [], []
    for name, spec in sorted(specs.items()):
        record = records.get(name)
        if record is None:
            adds.append(Action("add", name, spec))
        elif record.origin != ORIGIN_MESHCLUSTER:
            updates.append(Action("update", name, spec, adopt=True))
        elif (record.region, record.zone, record.network, dict(record.labels)) != (
                spec.region, spec.zone, spec.network, dict(spec.labels)):
            updates.append(Action("update", name, spec))
    unmanaged = tuple(n for n, r in sorted(records.items()) if r.origin == ORIGIN_CLI and n not in named)
    return Plan((*removes, *adds, *updates), errors, unmanaged)


# ---------------------------------------------------------------------------------------------
# applying to the registry


class MeshClusterSync:
    """Applies `plan` to a Registry; calls from several threads (watch, periodic heal) are serialised.

    Give it a Registry of its own (one SQLite connection per thread of use), not the hub's.
    """

    def __init__(self, registry: Registry, now: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.now = now
        self._lock = threading.Lock()
        self._errors: dict[str, str] = {}
        self._unmanaged: tuple[str, ...] = ()

    def errors(self) -> dict[str, str]:
        """Resource name -> why the last apply did not use it (invalid, or the registry refused)."""
        with self._lock:
            return dict(self._errors)

    def apply(self, resources: Iterable[Mapping[str, Any]]) -> Plan:
        """Make the registry match `resources` (every MeshCluster object); returns what was done.

        The returned plan holds the actions that succeeded; an action the registry refuses (a
        concurrent `cluster add/remove`) is logged, and for an add/update it becomes that
        resource's error until a later apply succeeds.
        """
        with self._lock:
            wanted = plan(self.registry.clusters(), resources)
            done: list[Action] = []
            errors = dict(wanted.errors)
            for action in wanted.actions:
                try:
                    self._do(action)
                except RegistryError as exc:
                    log.warning("MeshCluster %s: cannot %s the cluster: %s", action.name, action.verb, exc)
                    if action.verb != "remove":
                        errors[action.name] = str(exc)
                    continue
                done.append(action)
            for name, message in sorted(errors.items()):
                if self._errors.get(name) != message:  # say it once, not at every resync
                    log.warning("MeshCluster %s not used: %s", name, message)
            if wanted.unmanaged != self._unmanaged and wanted.unmanaged:
                log.info("clusters added with `meshfleet cluster add` and no MeshCluster (left alone): %s",
                         ", ".join(wanted.unmanaged))
            self._errors, self._unmanaged = errors, wanted.unmanaged
            return Plan(tuple(done), errors, wanted.unmanaged)

    def _do(self, action: Action) -> None:
        spec = action.spec
        if action.verb == "remove":
            self.registry.remove_cluster(action.name, origin=ORIGIN_MESHCLUSTER)
            log.info("MeshCluster %s deleted: cluster removed, its certificate is no longer accepted", action.name)
        elif action.verb == "add" and spec is not None:
            self.registry.add_cluster(spec.name, spec.region, spec.zone, spec.network, self.now(),
                                      labels=spec.labels, origin=ORIGIN_MESHCLUSTER)
            log.info("MeshCluster %s: cluster added; issue its join token with `meshfleet cluster token %s`",
                     spec.name, spec.name)
        elif action.verb == "update" and spec is not None:
            self.registry.update_cluster(spec.name, spec.region, spec.zone, spec.network, spec.labels,
                                         origin=ORIGIN_MESHCLUSTER)
            log.info("MeshCluster %s: %s", spec.name, "cluster added with `cluster add` adopted" if action.adopt
                     else "topology/labels updated")


class MeshClusterSource:
    """The hub cluster's MeshCluster resources driving a MeshClusterSync.

    Every watched change applies the sync (in the watch thread) and, if the registry changed,
    calls `nudge` (which must be thread-safe: it tells the hub to refresh its clusters now
    rather than at its next poll). Nothing is applied before the first complete list, so a
    hub that cannot list yet never removes a cluster; `run()` re-applies periodically, which
    covers an initial empty list (no change event) and a failed apply.
    """

    def __init__(self, watch: ResourceWatch, sync: MeshClusterSync, nudge: Callable[[], None] = lambda: None) -> None:
        if watch.plural != PLURAL:
            raise ValueError(f"a MeshClusterSource watches {PLURAL}, not {watch.plural}")
        self.watch, self.sync, self.nudge = watch, sync, nudge
        watch.on_change = self._changed

    @classmethod
    def for_api(cls, api: ApiClient, registry: Registry, nudge: Callable[[], None] = lambda: None,
                settings: WatchSettings = DEFAULT_WATCH) -> MeshClusterSource:
        """A source watching meshclusters through `api` (not started), applying to `registry` (the caller's)."""
        return cls(ResourceWatch(api, PLURAL, lambda: None, settings), MeshClusterSync(registry), nudge)

    def start(self) -> MeshClusterSource:
        self.watch.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.watch.stop(timeout)

    def synced(self) -> bool:
        """True once the resources have been listed."""
        return self.watch.synced.is_set()

    def objects(self) -> dict[str, dict[str, Any]]:
        """The live MeshCluster objects by name."""
        return {name: obj for (_, name), obj in self.watch.objects().items()}

    def errors(self) -> dict[str, str]:
        """Resource name -> why it is not used (see MeshClusterSync.errors)."""
        return self.sync.errors()

    def apply(self) -> Plan | None:
        """Apply the current objects now (None before the first list); nudges the hub if anything changed."""
        if not self.synced():
            return None
        done = self.sync.apply(self.watch.objects().values())
        if done.actions:
            self.nudge()
        return done

    def _changed(self) -> None:
        try:
            self.apply()
        except Exception:  # the watch thread must survive; the periodic apply retries
            log.exception("applying MeshCluster resources to the registry failed")

    async def run(self, interval: float = 30.0) -> None:
        """Re-apply every `interval` seconds (every 0.5 s until the first list); runs until cancelled."""
        while True:
            await asyncio.to_thread(self._changed)
            await asyncio.sleep(interval if self.synced() else min(interval, 0.5))


# ---------------------------------------------------------------------------------------------
# status (pure)

# the status fields this module writes; any other (clusters) is left as is
STATUS_FIELDS = ("observedGeneration", "connection", "agentVersion", "lastHeartbeat", "desiredVersion",
                 "ackedVersion", "ackedVersionShort", "lastNack", "gatewayAddress", "agentCertificateExpiry",
                 "intermediateCertificateExpiry", "conditions")


def _epoch(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def host_port(address: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets."""
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
    except ValueError:
        pass
    return f"{address}:{port}"


@dataclass(frozen=True)
class ClusterView:
    """What the hub knows of the cluster a MeshCluster names."""

    record: ClusterRecord | None
    """Its registry entry; None if it has none (an invalid resource never added)."""
    status: ClusterStatus | None = None
    """Its agent's state as the hub last knew it; None counts as Pending."""
    discovered_gateway: tuple[str, int] | None = None
    """East-west gateway (address, port) from the agent's last discovery report."""
    intermediate_not_after: float | None = None
    """Expiry of the cluster's intermediate CA as its agent last reported it (None: it holds none)."""


_CONNECTION_MESSAGES = {
    "Connected": "the agent's stream is open",
    "Pending": "the agent has not connected yet",
    "Disconnected": "the agent's stream ended; it becomes Unreachable unless it returns within the liveness grace",
    "Unreachable": "no message from the agent within the liveness grace period",
}


def meshcluster_status(previous: Mapping[str, Any] | None, generation: int, name: str, view: ClusterView,
                       now: float, *, error: str = "", gateway_override: tuple[str, int] | None = None
                       ) -> dict[str, Any]:
    """The status body of MeshCluster `name` (only the keys of STATUS_FIELDS; absent ones have no value).

    Conditions: `Accepted` (the resource is valid: `error` empty), `Registered` (the agent holds
    an unexpired certificate), `Connected` (its stream is open), `InSync` (it ACKed the intent
    the hub computed) and `Ready` (all four; else the first failing one's reason and message).
    `previous` (the live status) keeps each condition's lastTransitionTime while its status holds.
    """
    stamp = rfc3339(now)
    old = list((previous or {}).get("conditions") or [])
    record, st = view.record, view.status or ClusterStatus(name)
    out: dict[str, Any] = {"observedGeneration": generation, "connection": st.connection}

    if st.agent_version:
        out["agentVersion"] = st.agent_version[:64]
    if st.last_heartbeat is not None:
        out["lastHeartbeat"] = rfc3339(st.last_heartbeat)
    if st.desired_version:
        out["desiredVersion"] = st.desired_version
    if st.acked_version:
        out["ackedVersion"], out["ackedVersionShort"] = st.acked_version, st.acked_version[:12]
    if st.nack_version and st.nack_error:
        out["lastNack"] = {"version": st.nack_version, "message": st.nack_error[:32768],
                           **({"time": rfc3339(st.nack_at)} if st.nack_at is not None else {})}
    gateway = gateway_override or view.discovered_gateway
    if gateway is not None and gateway[0]:
        out["gatewayAddress"] = host_port(*gateway)
    if record is not None and record.cert_not_after is not None:
        out["agentCertificateExpiry"] = rfc3339(record.cert_not_after)
    if view.intermediate_not_after:
        out["intermediateCertificateExpiry"] = rfc3339(view.intermediate_not_after)

    checks: list[tuple[str, bool, str, str]] = []  # (type, ok, reason, message), in Ready's order
    if error:
        kept = "; the cluster keeps its last valid topology and labels" if record is not None else ""
        checks.append(("Accepted", False, "Invalid", error + kept))
    else:
        checks.append(("Accepted", True, "Accepted", ""))
    if record is None:
        checks.append(("Registered", False, "NotRegistered", "the cluster is not in the hub's registry"))
    elif record.cert_not_after is None or record.registered_at is None:
        checks.append(("Registered", False, "AwaitingJoin",
                       f"no agent has joined yet: issue a join token with `meshfleet cluster token {name}` "
                       "and start the agent with it"))
    elif record.cert_not_after <= now:
        checks.append(("Registered", False, "CertificateExpired",
                       f"the agent's certificate expired at {rfc3339(record.cert_not_after)}; issue a new join "
                       f"token with `meshfleet cluster token {name}`"))
    else:
        checks.append(("Registered", True, "CertificateIssued",
                       f"the agent registered at {rfc3339(record.registered_at)}; its certificate is valid until "
                       f"{rfc3339(record.cert_not_after)}"))
    checks.append(("Connected", st.connection == "Connected", st.connection,
                   _CONNECTION_MESSAGES.get(st.connection, "")))
    desired, acked = st.desired_version, st.acked_version
    if not desired:
        checks.append(("InSync", False, "NoIntent", "the hub has not computed this cluster's intent yet"))
    elif desired == acked:
        checks.append(("InSync", True, "InSync", f"the agent applied {desired[:12]}"))
    elif st.nack_version == desired and st.nack_error:
        checks.append(("InSync", False, "Rejected", f"the agent refused {desired[:12]}: {st.nack_error}"))
    else:
        has = f" (it has {acked[:12]})" if acked else ""
        checks.append(("InSync", False, "Pending", f"waiting for the agent to apply {desired[:12]}{has}"))
    failing = next((c for c in checks if not c[1]), None)
    checks.append(("Ready", True, "Ready", "") if failing is None else ("Ready", False, failing[2], failing[3]))
    out["conditions"] = [condition(old, t, ok, reason, message, generation, stamp)
                         for t, ok, reason, message in checks]
    return out


def _comparable(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The fields this module writes, without lastTransitionTime and lastHeartbeat."""
    out = {k: v for k, v in (status or {}).items() if k in STATUS_FIELDS and k != "lastHeartbeat"}
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                         for c in out.get("conditions") or []]
    return out


def needs_write(live: Mapping[str, Any] | None, desired: Mapping[str, Any], now: float,
                heartbeat_refresh: float) -> bool:
    """True if `live` must be patched to `desired`.

    lastTransitionTime does not count (it only moves with a condition's status), nor does a
    newer lastHeartbeat alone until the live one is `heartbeat_refresh` seconds old: heartbeats
    arrive every few seconds and would otherwise cost a write per cluster each time (the
    reason Node heartbeats moved to Leases); anything else that changes is written at once.
    """
    if _comparable(live) != _comparable(desired):
        return True
    seen, beat = (live or {}).get("lastHeartbeat"), desired.get("lastHeartbeat")
    if seen == beat:
        return False
    if beat is None or seen is None:
        return True
    written = _epoch(seen)
    return written is None or now - written >= heartbeat_refresh


def status_patch(live: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch of .status turning `live` into `desired`: fields this module owns and no longer sets are
    nulled (a merge patch only removes what it names), fields it does not own are left alone."""
    gone = {k: None for k in (live or {}) if k in STATUS_FIELDS and k not in desired}
    return {**gone, **desired}


# ---------------------------------------------------------------------------------------------
# status writer


class ClusterRecords(Protocol):
    """The part of the registry the status writer reads."""

    def clusters(self) -> Mapping[str, ClusterRecord]: ...


class HubFacts(Protocol):
    """What MeshClusterStatusWriter reads of the hub (mgmt.serving.Hub has all of it)."""

    @property
    def statuses(self) -> Mapping[str, ClusterStatus]: ...

    @property
    def discovery(self) -> Mapping[str, Discovery]: ...

    @property
    def registry(self) -> ClusterRecords: ...

    @property
    def ca_reports(self) -> Mapping[str, CaFacts]: ...


class MeshClusterObjects(Protocol):
    """The watched resources and why some are not used (MeshClusterSource has both)."""

    def objects(self) -> Mapping[str, Mapping[str, Any]]: ...

    def errors(self) -> Mapping[str, str]: ...


class MeshClusterStatusWriter:
    """Writes each MeshCluster's status through the status subresource (merge patch), only when it changed.

    Runs in the hub's event loop (it reads the hub's state there); the API calls go to a worker
    thread. The desired status is recomputed from the hub every `interval` seconds, so
    connection, ACK and NACK changes reach the resources without a write per event; see
    `needs_write` for lastHeartbeat. A resource whose cluster is not in the registry yet (the
    sync has not run) and that has no error is skipped until it is.
    """

    def __init__(self, hub: HubFacts, source: MeshClusterObjects, api: ApiClient, interval: float = 1.0,
                 heartbeat_refresh: float = 60.0, now: Callable[[], float] = time.time) -> None:
        self.hub, self.source = hub, source
        self.custom = CustomObjectsApi(api)
        self.interval = interval
        self.heartbeat_refresh = heartbeat_refresh
        self.now = now
        # name -> (status written, resourceVersion it was written over): skip rewriting until the watch catches up
        self._written: dict[str, tuple[dict[str, Any], str]] = {}
        self.writes = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:  # a failed round must not end the writer; the next one retries
                log.exception("writing MeshCluster status failed")

    def desired(self, now: float) -> dict[str, tuple[Mapping[str, Any], dict[str, Any]]]:
        """name -> (live object, desired status) of every resource to report on."""
        records, errors = self.hub.registry.clusters(), self.source.errors()
        out = {}
        for name, obj in self.source.objects().items():
            record, error = records.get(name), errors.get(name, "")
            if record is None and not error:
                continue
            found = self.hub.discovery.get(name)
            ca = self.hub.ca_reports.get(name)
            view = ClusterView(record, self.hub.statuses.get(name),
                               (found.gateway_address, found.gateway_port) if found else None,
                               ca.not_after if ca is not None and ca.intermediate else None)
            try:
                override = parse_meshcluster(obj).gateway
            except ValueError:
                override = None
            generation = int((obj.get("metadata") or {}).get("generation") or 0)
            out[name] = (obj, meshcluster_status(obj.get("status"), generation, name, view, now, error=error,
                                                 gateway_override=override))
        return out

    async def flush(self) -> int:
        """Write what changed; returns how many statuses were written."""
        now, written_now = self.now(), 0
        wanted = self.desired(now)
        for name in [n for n in self._written if n not in wanted]:
            del self._written[name]
        for name, (obj, status) in wanted.items():
            live, live_rv = obj.get("status"), (obj.get("metadata") or {}).get("resourceVersion", "")
            if not needs_write(live, status, now, self.heartbeat_refresh):
                continue
            written = self._written.get(name)
            if written is not None and written[1] == live_rv and not needs_write(written[0], status, now,
                                                                                 self.heartbeat_refresh):
                continue  # our write is not in the watch cache yet
            try:
                await asyncio.to_thread(
                    self.custom.patch_cluster_custom_object_status, GROUP, VERSION, PLURAL, name,
                    {"status": status_patch(live, status)}, _content_type="application/merge-patch+json")
            except ApiException as exc:
                if exc.status != 404:  # deleted meanwhile: nothing to report on
                    log.warning("status of MeshCluster %s not written: %s", name, api_message(exc))
                continue
            self._written[name] = (status, live_rv)
            self.writes += 1
            written_now += 1
        return written_now


# ---------------------------------------------------------------------------------------------
# wiring into the hub


class ClusterHub(HubFacts, Protocol):
    """What MeshClusterManager needs of the hub beyond HubFacts (mgmt.serving.Hub has it)."""

    def refresh_clusters(self) -> bool: ...

    def mark_dirty(self) -> None: ...


class MeshClusterManager:
    """The MeshCluster side of `meshfleet hub --kubeconfig`: resources -> registry, and their status.

    `start()` (inside the hub's running loop) starts the watch, its periodic re-apply and the
    status writer; a change that alters the registry makes the hub refresh its clusters at
    once (its poll loop would within `poll_interval` anyway). `stop()` ends all of it; call it
    before the hub's own stop.
    """

    def __init__(self, hub: ClusterHub, api: ApiClient, state_dir: Path,
                 settings: WatchSettings = DEFAULT_WATCH, status_interval: float = 1.0,
                 resync_interval: float = 30.0) -> None:
        self.hub = hub
        self.source = MeshClusterSource.for_api(api, Registry(state_dir), self._nudge, settings)
        self.writer = MeshClusterStatusWriter(hub, self.source, api, interval=status_interval)
        self.resync_interval = resync_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> MeshClusterManager:
        self._loop = asyncio.get_running_loop()
        self.source.start()
        self._tasks = [asyncio.create_task(self.source.run(self.resync_interval)),
                       asyncio.create_task(self.writer.run())]
        return self

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.source.stop)
        self.source.sync.registry.close()

    def _nudge(self) -> None:
        """From any thread: refresh the hub's clusters in its loop."""
        if self._loop is not None and not self._stopping:
            self._loop.call_soon_threadsafe(self._refresh)

    def _refresh(self) -> None:
        if not self._stopping and self.hub.refresh_clusters():
            self.hub.mark_dirty()
