"""The hub process: gRPC ports, sessions, liveness, and the translate loop around the pure core.

One asyncio loop owns all mutable state (no locks): the registry mirror, the
per-cluster intents, the sessions and their timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meshfleet.intents import MEDIA_TYPE, PROTOCOL_VERSION, ClusterIntent, ClusterRef, Encoder, Gateway, gateways
from meshfleet.jointokens import register_address
from meshfleet.names import dns1123_label_error
from meshfleet.v1 import hub_pb2, hub_pb2_grpc
from mgmt import changes
from mgmt.evicting import Evictions, ProbeReportRefused
from mgmt.identities import (
    CSRRejected,
    cluster_of,
    ensure_server_certificate,
    fingerprint,
    load_or_create_ca,
    sign_cluster_csr,
)
from mgmt.model import (
    Discovery,
    DiscoveryError,
    Resource,
    Resources,
    Snapshot,
    TrustPolicy,
    discovery_from_json,
    ref_key,
)
from mgmt.registry import ClusterStatus, Registry
from mgmt.roots import FileRootStore, RootStore
from mgmt.rotation import RotationError
from mgmt.settings import HubSettings
from mgmt.statuses import ClusterFacts, resource_digest
from mgmt.tokens import TokenRejected
from mgmt.topology import concerned
from mgmt.translate import Problem, resource_problems, translate
from mgmt.trust import REQUEST_KEY, REQUEST_TTL, RESULT_KEY, STATUS_KEY, TrustManager
from mgmt.watching import DirectoryPolicySource, PolicySource

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    # detect peers that vanished without closing TCP
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
]


class StreamRefused(Exception):
    """End a stream with this gRPC status; the message reaches the agent."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Intent:
    version: str
    content: bytes


@dataclass
class Session:
    """One open Sync stream of one cluster."""

    cluster: str
    fingerprint: str  # of the client certificate this stream authenticated with
    applied: str  # what the agent says it has applied (hello, then ACKs)
    in_flight: str = ""  # pushed on this stream, not yet ACKed/NACKed
    nacks: int = 0
    retry_at: float = 0.0
    last_received: float = field(default_factory=time.monotonic)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    refused: StreamRefused | None = None
    ended: bool = False
    outbox: list[hub_pb2.HubMessage] = field(default_factory=list)  # answers (signed certificates) to write


def _now() -> float:
    return time.time()


class Hub(hub_pb2_grpc.HubServicer):
    def __init__(self, settings: HubSettings, source: PolicySource | None = None, roots: RootStore | None = None,
                 kube_api: Any = None) -> None:
        """`source` replaces the policy directory (e.g. the hub cluster's custom resources); `roots` keeps
        generated root CAs (default: files under state_dir/roots); `kube_api` reads supplied roots' Secrets."""
        self.settings = settings
        self.registry = Registry(settings.state_dir)
        self.trust = TrustManager(self.registry, roots or FileRootStore(settings.state_dir / "roots"), kube_api)
        self._trust_policies: tuple[TrustPolicy, ...] | None = None
        self._trust_configured = float("-inf")
        self._trust_timer: asyncio.TimerHandle | None = None
        self._trust_status: dict[str, Any] | None = None
        self._trust_dirty = False
        self._translated_intents: dict[str, ClusterIntent] = {}
        self.evictions = Evictions(self.registry)
        self._failover_timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._targets: dict[str, dict[str, set[Gateway]]] = {}  # cluster -> gateways its agent probes
        self._probers: dict[str, set[str]] | None = None  # cluster -> the clusters told to probe its gateway
        self.ca = load_or_create_ca(settings.state_dir, dt.datetime.now(dt.UTC))
        if source is None and settings.policies_dir is not None:
            source = DirectoryPolicySource(settings.policies_dir, self.registry.get_meta("policy_last_good"))
        self.source = source
        self._loop: asyncio.AbstractEventLoop | None = None
        self.clusters: dict[str, ClusterRef] = {}
        self.labels: dict[str, dict[str, str]] = {}  # cluster -> labels (what cluster selectors match)
        self.discovery: dict[str, Discovery] = {}
        self.intents: dict[str, Intent] = {}
        self.statuses: dict[str, ClusterStatus] = {}
        self.problems: tuple[Problem, ...] = ()  # every problem: of resources as a whole, and per cluster
        self.resource_problems: dict[str, list[str]] = {}  # resource key -> problems of the resource as a whole
        # per cluster: the problems of its last translation, and the policies each recent version carries
        self.cluster_problems: dict[str, dict[str, list[str]]] = {}
        self._translated: dict[str, tuple[Problem, ...]] = {}  # cluster -> problems of its last translation
        self._reads: dict[str, frozenset[Any]] = {}  # cluster -> what its last translation depended on
        self._last_snapshot: Snapshot | None = None
        self._encoder = Encoder()
        self._encoder_kept = 0
        self._digests: dict[str, tuple[Resource, str]] = {}
        self.translations = 0  # clusters translated since start (the benchmark reads it)
        self.status_epoch = 0  # moves whenever anything a resource status is computed from may have changed
        self.included: dict[str, dict[str, dict[str, str]]] = {}
        self.sessions: dict[str, Session] = {}
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._dirty_status = False
        self._recompute_handle: asyncio.TimerHandle | None = None
        self._last_recompute = float("-inf")
        self._created: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.bootstrap_port = 0
        self._stopped = False

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._started_at = _now()
        key_pem, cert_pem = ensure_server_certificate(s.state_dir, self.ca, s.advertise_hosts,
                                                      dt.datetime.now(dt.UTC))
        self._load_state()
        self._server = grpc.aio.server(options=GRPC_OPTIONS)
        hub_pb2_grpc.add_HubServicer_to_server(self, self._server)
        mtls = grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=self.ca.cert_pem,
                                           require_client_auth=True)
        tls = grpc.ssl_server_credentials([(key_pem, cert_pem)])
        self.port = self._server.add_secure_port(s.listen, mtls)
        self.bootstrap_port = self._server.add_secure_port(register_address(s.listen, s.bootstrap_listen), tls)
        if not self.port or not self.bootstrap_port:
            raise OSError(f"cannot listen on {s.listen} / {register_address(s.listen, s.bootstrap_listen)}")
        await self._server.start()
        self._recompute()
        self._tasks = [asyncio.create_task(self._poll_loop()), asyncio.create_task(self._flush_loop())]
        log.info("hub listening: sync (mTLS) on port %d, register (TLS) on port %d", self.port,
                 self.bootstrap_port)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving and flush status; calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for handle in self._deadlines.values():
            handle.cancel()
        if self._trust_timer is not None:
            self._trust_timer.cancel()
        if self._failover_timer is not None:
            self._failover_timer.cancel()
        if self._recompute_handle:
            self._recompute_handle.cancel()
        if self._server is not None:
            await self._server.stop(grace)
        self._flush_status()
        self.registry.close()

    def _load_state(self) -> None:
        self.statuses = self.registry.statuses()
        self.refresh_clusters()
        for name, doc in self.registry.discovery().items():
            with contextlib.suppress(DiscoveryError):
                self.discovery[name] = discovery_from_json(doc)
        if self.source:
            self.source.scan()
            self._save_problems()
        # agents connected before a restart get a full grace period to come back
        for st in self.statuses.values():
            if st.connection in ("Connected", "Disconnected"):
                st.connection = "Disconnected"
                self._arm_deadline(st.cluster, _now())
            elif st.connection == "Unreachable":
                self.evictions.moved(st.cluster, st.last_heartbeat or _now())
        self._status_changed()

    def refresh_clusters(self) -> bool:
        """Mirror the registry; True if the topology changed. Streams of revoked certificates end here."""
        records = self.registry.clusters()
        for name, session in list(self.sessions.items()):
            record = records.get(name)
            if record is None or record.cert_fingerprint != session.fingerprint:
                why = ("was removed from the hub" if record is None or record.cert_fingerprint is None
                       else "registered again with a new certificate")
                self._refuse(session, grpc.StatusCode.PERMISSION_DENIED, f"cluster {name} {why}")
                self._close(session)
        created = {n: r.created_at for n, r in records.items()}
        for name in [n for n, at in self._created.items() if created.get(n) != at]:
            # removed, or removed and added again: nothing of the old cluster may linger
            for per_cluster in (self.intents, self.discovery, self.statuses, self.included, self.cluster_problems,
                                self._reads, self._translated, self._translated_intents, self._targets):
                per_cluster.pop(name, None)
            self._probers = None
        self._created = created
        clusters = {n: ClusterRef(r.name, r.region, r.zone, r.network) for n, r in records.items()}
        labels = {n: dict(r.labels) for n, r in records.items()}
        for name in clusters:
            self.statuses.setdefault(name, ClusterStatus(name))
        if (clusters, labels) == (self.clusters, self.labels):
            return False
        self.clusters, self.labels = clusters, labels
        return True

    # translation ------------------------------------------------------------------------------
    def mark_dirty(self) -> None:
        """Ask for a translation: at once after a quiet period, else coalesced until `debounce` has passed.

        The first change of a burst is not delayed; the rest of the burst costs one more translation.
        """
        if self._recompute_handle is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._last_recompute + self.settings.debounce - time.monotonic())
            self._recompute_handle = loop.call_later(delay, self._recompute)

    def snapshot(self) -> Snapshot:
        return Snapshot(clusters=dict(self.clusters), discovery=dict(self.discovery),
                        resources=self.source.resources if self.source else Resources(), labels=dict(self.labels),
                        region_costs=self.settings.region_costs, evicted=self.evictions.evicted())

    def _recompute(self) -> None:
        """Translate the clusters the change concerns; push to those whose version changed."""
        self._recompute_handle = None
        self._last_recompute = time.monotonic()
        snapshot, old = self.snapshot(), self._last_snapshot
        if old is not None:
            changes.seed(old, snapshot)
        delta = None if old is None else changes.changed(old, snapshot)
        if old is not None:
            changes.carry(old, snapshot, delta)
        targets = changes.affected({} if old is None else self._reads, delta, snapshot)
        digests = {r.meta.key: self.digest(r) for r in snapshot.resources.all()}
        trust_changed = self._configure_trust(snapshot.resources.trust)
        # a custom resource the source cannot parse is not deleted: its objects get the agents' removal grace
        present = set(digests) | {key for e in (self.source.errors if self.source else ()) if (key := ref_key(e.file))}
        for name in sorted(targets):
            result = translate(snapshot, name)
            self.translations += 1
            self._reads[name] = result.reads
            self._translated[name] = result.problems
            deleted = self._deletions(name, result.applied, present)
            self._translated_intents[name] = (dataclasses.replace(result.intent, deleted=deleted) if deleted
                                              else result.intent)
            self._targets.pop(name, None)
            self._probers = None
            self._publish(name, {k: digests[k] for k in result.applied}, result.problems)
        if trust_changed:
            self._retrust(skip=targets)
        if self._encoder.size() > 2 * self._encoder_kept + 1024:
            # the encoder caches bytes by object; keep those of objects the memo still holds
            self._encoder.retain(v for entries in snapshot.memo.get("scoped", {}).values() for v in entries.values())
            self._encoder_kept = self._encoder.size()
        self._digests = {k: v for k, v in self._digests.items() if k in digests}
        self._last_snapshot = snapshot
        self.status_epoch += 1
        whole = resource_problems(snapshot)
        self.resource_problems = {}
        for p in whole:
            self.resource_problems.setdefault(p.policy, []).append(p.message)
        new = tuple(sorted({*whole, *(p for found in self._translated.values() for p in found)}))
        if new != self.problems:
            for p in sorted(set(new) - set(self.problems)):
                log.warning("%s: %s", p.policy, p.message)
            self.problems = new
            self._save_problems()
        self._failover_step()  # the policies, or the clusters backing their destinations, may have changed

    def _deletions(self, name: str, applied: frozenset[str], present: set[str]) -> tuple[str, ...]:
        """Resources the user deleted whose effect the cluster's intent carried: its agent removes their
        objects at once instead of after its removal grace (a resource missing for any other reason, e.g.
        a cluster no longer reporting a Service, is not a deletion). Said again until the cluster ACKs."""
        current = self.intents.get(name)
        carried = self.included.get(name, {}).get(current.version, {}) if current is not None else {}
        gone = {k for k in carried if k not in applied and k not in present}
        previous = self._translated_intents.get(name)
        if previous is not None and previous.deleted and current is not None \
                and self.statuses[name].acked_version != current.version:
            gone |= {k for k in previous.deleted if k not in present}
        return tuple(sorted(gone))

    # failover ---------------------------------------------------------------------------------
    def _probe_targets(self, cluster: str) -> dict[str, set[Gateway]]:
        """The gateways `cluster`'s last translated intent tells its agent to probe, by cluster (cached until
        the cluster is translated again)."""
        found = self._targets.get(cluster)
        if found is None:
            intent = self._translated_intents.get(cluster)
            found = self._targets[cluster] = gateways(intent) if intent is not None else {}
        return found

    def _failover_step(self) -> None:
        """Let the failover planner look at the clusters' liveness and probes; re-translate if it evicted or
        restored a cluster, and wake again when a hold-down ends."""
        snapshot = self._last_snapshot
        if snapshot is None or self._stopped or self._loop is None:
            return
        now = _now()
        settle = self._started_at + max(self.settings.failover_settle, self.settings.liveness_grace)
        if now < settle:
            # after a (re)start, agents need a grace period to reconnect and report their probes: no decision
            # before (evictions in hub.db stay in effect meanwhile)
            if self._failover_timer is None:
                self._failover_timer = self._loop.call_later(settle - now, self._failover_step)
            return
        up = {c: st.connection != "Unreachable" for c, st in self.statuses.items() if c in self.clusters}
        heard = {c: st.last_heartbeat for c, st in self.statuses.items() if c in self.clusters}
        if self._probers is None:  # who is told to probe whom: changes only with a translation
            self._probers = {}
            for prober in self.clusters:
                for target in self._probe_targets(prober):
                    self._probers.setdefault(target, set()).add(prober)
        health = self.evictions.health(up, heard, self.sessions, now, self._started_at, self._probers)
        result = self.evictions.step(snapshot, health, now)
        if result.events:
            self._status_changed()
        if self._failover_timer is not None:
            self._failover_timer.cancel()
            self._failover_timer = None
        if result.wake_at is not None:
            self._failover_timer = self._loop.call_later(max(0.0, result.wake_at - _now()), self._failover_step)
        if self.evictions.evicted() != dict(snapshot.evicted):
            self.mark_dirty()

    def _publish(self, name: str, carried: dict[str, str] | None = None,
                 problems: tuple[Problem, ...] | None = None) -> None:
        """Encode a cluster's intent (its translation plus the mesh's trust) and wake its stream if it changed."""
        intent = dataclasses.replace(self._translated_intents[name], trust=self.trust.intent())
        version, content = self._encoder.encode(intent)
        if carried is None:  # only the trust section moved: the policies carried are those of the last version
            versions = self.included.get(name, {})
            carried = next(reversed(versions.values())) if versions else {}
        self._remember(name, version, carried, self._translated.get(name, ()) if problems is None else problems)
        current = self.intents.get(name)
        if current is None or current.version != version:
            self.intents[name] = Intent(version, content)
            self.statuses[name].desired_version = version
            self._status_changed()
            if name in self.sessions:
                self.sessions[name].wake.set()

    def _retrust(self, skip: Iterable[str] = ()) -> None:
        """The trust section changed: publish every cluster's intent again, without translating."""
        skipped = set(skip)
        for name in sorted(self._translated_intents):
            if name not in skipped:
                self._publish(name)
        self._status_changed()

    # trust ------------------------------------------------------------------------------------
    def _configure_trust(self, policies: tuple[TrustPolicy, ...]) -> bool:
        """Take the TrustPolicy in effect when it changed, and every `trust_refresh` s (a supplied root may move)."""
        now = time.monotonic()
        if policies == self._trust_policies and now - self._trust_configured < self.settings.trust_refresh:
            return False
        self._trust_policies, self._trust_configured = policies, now
        before = (self.trust.policy, self.trust.problems, self.trust.state)
        changed = self.trust.configure(policies)
        if (self.trust.policy, self.trust.problems, self.trust.state) != before:
            self._save_trust_status()
        return self._trust_step() or changed

    def _trust_step(self) -> bool:
        """Advance a root rotation as far as reports allow; True if the clusters' trust target moved."""
        t = self.trust
        before = (t.policy, t.problems, t.state, dict(t.waiting), t.next_at, len(t.events), t.signed)
        changed = t.step(set(self.clusters), set(self.sessions))
        if self._trust_timer is not None:
            self._trust_timer.cancel()
            self._trust_timer = None
        if self.trust.next_at is not None and self._loop is not None:
            delay = max(0.0, self.trust.next_at - time.time())
            self._trust_timer = self._loop.call_later(delay, self._trust_tick)
        if (t.policy, t.problems, t.state, dict(t.waiting), t.next_at, len(t.events), t.signed) != before:
            self._save_trust_status()  # at rest (the poll re-states who holds a rotation) nothing moves
        return changed

    def _trust_tick(self) -> None:
        """A grace period ended (timer), or a report or request arrived: step and publish what moved."""
        self._trust_timer = None
        if not self._stopped and self._trust_step():
            self._retrust()

    def _trust_request(self) -> None:
        """Run a `meshfleet certs rotate-root|rollback` the CLI queued in hub.db, and record its outcome."""
        request = self.registry.take_meta(REQUEST_KEY)
        if request is None:
            return
        age = time.time() - float(request.get("at") or 0)
        try:
            if age > REQUEST_TTL:
                raise RotationError(f"the request was queued {age:.0f} s ago while no hub ran; not acted on "
                                    f"(requests expire after {REQUEST_TTL:.0f} s): run the command again")
            message = self.trust.command(str(request.get("action")))
            ok = True
        except RotationError as exc:
            message, ok = str(exc), False
        log.log(logging.INFO if ok else logging.WARNING, "certs %s: %s", request.get("action"), message)
        self.registry.set_meta(RESULT_KEY, {"id": request.get("id"), "ok": ok, "message": message})
        self._retrust()
        self._trust_tick()

    def _save_trust_status(self) -> None:
        """The mesh CA's state moved: persist it with the next status flush (a rotation of a large fleet brings
        hundreds of reports a second, and the document grows with the fleet)."""
        self._trust_dirty = True
        self.status_epoch += 1

    def _flush_trust(self) -> None:
        self.trust.flush()  # batched CA reports
        if self._trust_dirty:
            self._trust_dirty = False
            doc = self.trust.status()
            if doc != self._trust_status:
                self._trust_status = doc
                self.registry.set_meta(STATUS_KEY, doc)

    def _status_changed(self) -> None:
        """Per-cluster facts moved: persist them soon, and let status writers know (`status_epoch`)."""
        self._dirty_status = True
        self.status_epoch += 1

    @property
    def ca_reports(self) -> Mapping[str, Any]:
        """Per cluster, what its agent last reported of its plug-in CA (mgmt.rotation.CaFacts)."""
        return self.trust.reports

    @property
    def concerned(self) -> Mapping[str, tuple[str, ...]]:
        """Resource key -> the clusters it is meant to take effect in (as of the last translation)."""
        if self._last_snapshot is None:
            return {}
        memo = self._last_snapshot.memo
        if "concerned" not in memo:
            memo["concerned"] = concerned(self._last_snapshot)
        found: Mapping[str, tuple[str, ...]] = memo["concerned"]
        return found

    def digest(self, resource: Resource) -> str:
        """resource_digest, cached while the resource object stays the same."""
        hit = self._digests.get(resource.meta.key)
        if hit is None or hit[0] is not resource:
            hit = self._digests[resource.meta.key] = (resource, resource_digest(resource))
        return hit[1]

    def policy_changed(self) -> None:
        """Thread-safe nudge from a push-based source (a CR watch): rescan now, not at the next poll."""
        if self._loop is not None and not self._stopped:
            self._loop.call_soon_threadsafe(self._rescan)

    def _rescan(self) -> None:
        if self.source is not None and not self._stopped and self.source.scan():
            self._save_problems()
            self.mark_dirty()

    def _remember(self, cluster: str, version: str, carried: dict[str, str], problems: tuple[Problem, ...]) -> None:
        """Which policies `version` carries to `cluster` (the last few versions), for per-cluster status."""
        self.cluster_problems[cluster] = {}
        for p in problems:
            self.cluster_problems[cluster].setdefault(p.policy, []).append(p.message)
        versions = self.included.setdefault(cluster, {})
        versions.pop(version, None)
        versions[version] = carried
        keep = {version, self.statuses[cluster].acked_version} if cluster in self.statuses else {version}
        for old in [v for v in versions if v not in keep][:-8]:
            del versions[old]

    def facts(self) -> dict[str, ClusterFacts]:
        """Per cluster, what policy status is computed from."""
        return {name: ClusterFacts(desired=self.intents[name].version if name in self.intents else "",
                                   acked=st.acked_version, nack_version=st.nack_version, nack_error=st.nack_error,
                                   included=dict(self.included.get(name, {})),
                                   problems=dict(self.cluster_problems.get(name, {})))
                for name, st in self.statuses.items() if name in self.clusters}

    def _save_problems(self) -> None:
        """Persist what the policy source reports, and its last good files (for a restart)."""
        if self.source is not None:
            self.registry.set_meta("policy_last_good", self.source.last_good())
        source_errors = [str(e) for e in self.source.errors] if self.source else []
        self.registry.set_meta("policy_problems", {
            "source_errors": source_errors,
            "problems": [dataclasses.asdict(p) for p in self.problems],
        })

    # background loops -------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                self._trust_request()
                changed = self.refresh_clusters()
                if changed:
                    self.trust.forget(set(self.clusters))
                if self._configure_trust(self.source.resources.trust if self.source else ()):
                    self._retrust()
                else:
                    self._trust_tick()  # connections come and go: who holds a rotation is re-stated
                source = self.source
                if source is not None and await asyncio.to_thread(source.scan):
                    self._save_problems()
                    changed = True
                if changed:
                    self.mark_dirty()
            except Exception:  # a bad poll must not stop the next one
                log.exception("polling policies/registry failed")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_flush_interval)
            try:
                self._flush_status()
            except Exception:
                log.exception("writing status to %s failed", self.registry.path)

    def _flush_status(self) -> None:
        self._flush_trust()
        if self._dirty_status:
            self._dirty_status = False
            self.registry.save_statuses(list(self.statuses.values()))

    # liveness ---------------------------------------------------------------------------------
    def _seen(self, cluster: str) -> None:
        now = _now()
        st = self.statuses[cluster]
        st.last_heartbeat = now
        was_lost = st.connection == "Unreachable"
        if st.connection != "Connected" and cluster in self.sessions:
            log.info("cluster %s is Connected", cluster)
            st.connection = "Connected"
        self._dirty_status = True  # liveness alone: no resource status depends on it (status_epoch stays)
        self._arm_deadline(cluster, now)
        if was_lost and st.connection != "Unreachable":
            self.evictions.moved(cluster, now)
            self._failover_step()

    def _arm_deadline(self, cluster: str, last_seen: float) -> None:
        old = self._deadlines.pop(cluster, None)
        if old:
            old.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, last_seen + self.settings.liveness_grace - _now())
        self._deadlines[cluster] = loop.call_later(delay, self._deadline_passed, cluster)

    def _deadline_passed(self, cluster: str) -> None:
        self._deadlines.pop(cluster, None)
        st = self.statuses.get(cluster)
        if st is None or st.connection == "Unreachable":
            return
        log.warning("cluster %s is Unreachable: no message for %.1f s", cluster, self.settings.liveness_grace)
        st.connection = "Unreachable"
        self._dirty_status = True
        self.evictions.moved(cluster, st.last_heartbeat or _now())
        self._failover_step()

    # Register ---------------------------------------------------------------------------------
    async def Register(self, request: hub_pb2.RegisterRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> hub_pb2.RegisterResponse:
        cluster = request.cluster
        if err := dns1123_label_error(cluster):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cluster name {err}")
        now = dt.datetime.now(dt.UTC)
        try:
            self.registry.peek_token(request.token, cluster, now.timestamp())
            cert = sign_cluster_csr(self.ca, request.csr_pem, cluster, now,
                                    dt.timedelta(days=self.settings.client_cert_days))
            self.registry.redeem_token(request.token, cluster, now.timestamp(), fingerprint(cert),
                                       cert.not_valid_after_utc.timestamp())
        except TokenRejected as exc:
            log.warning("Register for %s refused: %s", cluster, exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except CSRRejected as exc:
            log.warning("Register for %s refused: %s", cluster, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info("cluster %s registered (agent %s)", cluster, request.agent_version or "?")
        # the old certificate of a re-registered cluster no longer matches: end its stream
        if cluster in self.sessions:
            self._refuse(self.sessions[cluster], grpc.StatusCode.UNAUTHENTICATED,
                         "cluster re-registered; this certificate is no longer valid")
        return hub_pb2.RegisterResponse(certificate_pem=cert.public_bytes(Encoding.PEM),
                                        ca_bundle_pem=self.ca.cert_pem)

    # Sync -------------------------------------------------------------------------------------
    def _identity(self, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str, str]:
        """(cluster, certificate fingerprint) of the caller; raises StreamRefused."""
        pem = next(iter(context.auth_context().get("x509_pem_cert", ())), None)
        if pem is None:
            raise StreamRefused(grpc.StatusCode.UNAUTHENTICATED,
                                "Sync needs the client certificate from Register (mutual TLS port)")
        cert = x509.load_pem_x509_certificate(pem)
        cluster = cluster_of(cert)
        if cluster is None:
            raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED, "client certificate names no meshfleet cluster")
        record = self.registry.cluster(cluster)
        if record is None:
            raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED, f"cluster {cluster} is not registered")
        pinned = fingerprint(cert)
        if record.cert_fingerprint != pinned:
            raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED,
                                f"this certificate is no longer the identity of cluster {cluster} "
                                "(it registered again)")
        if cluster not in self.clusters and self.refresh_clusters():
            self.mark_dirty()  # added by `cluster add` since the last poll
        return cluster, pinned

    async def Sync(self, request_iterator: AsyncIterator[hub_pb2.AgentMessage],
                   context: grpc.aio.ServicerContext[Any, Any]) -> None:
        session: Session | None = None
        reader: asyncio.Task[None] | None = None
        try:
            cluster, pinned = self._identity(context)
            incoming = request_iterator.__aiter__()
            try:
                first = await asyncio.wait_for(incoming.__anext__(), self.settings.stream_timeout)
            except (StopAsyncIteration, TimeoutError):
                return
            session = self._open(cluster, pinned, first)
            reader = asyncio.create_task(self._read(session, incoming))
            await self._serve(session, context)
        except StreamRefused as exc:
            await context.abort(exc.code, exc.message)
        finally:
            try:
                if reader is not None:
                    reader.cancel()
                    with contextlib.suppress(BaseException):  # its outcome is already in the session
                        await reader
            finally:
                if session is not None:
                    self._close(session)

    def _open(self, cluster: str, pinned: str, first: hub_pb2.AgentMessage) -> Session:
        if first.WhichOneof("kind") != "hello":
            raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, "the first message on Sync must be hello")
        hello = first.hello
        if hello.cluster != cluster:
            raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED,
                                f"certificate identifies cluster {cluster}; it cannot sync as {hello.cluster!r}")
        major = hello.protocol_version.split(".")[0]
        if major != PROTOCOL_VERSION.split(".")[0]:
            raise StreamRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                f"protocol version {hello.protocol_version!r} not supported; this hub speaks "
                                f"{PROTOCOL_VERSION}")
        record = self.registry.cluster(cluster)  # again: it may have re-registered while hello was pending
        if record is None or record.cert_fingerprint != pinned:
            raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED,
                                f"this certificate is no longer the identity of cluster {cluster}")
        old = self.sessions.get(cluster)
        if old is not None:
            self._refuse(old, grpc.StatusCode.ABORTED, "superseded by a newer stream of the same cluster")
        session = Session(cluster, fingerprint=pinned, applied=hello.applied_version)
        self.sessions[cluster] = session
        st = self.statuses[cluster]
        st.agent_version = hello.agent_version
        if hello.applied_version:
            st.acked_version = hello.applied_version
            self._status_changed()
        log.info("cluster %s connected (agent %s, applied %s)", cluster, hello.agent_version,
                 hello.applied_version[:12] or "nothing")
        self._seen(cluster)
        return session

    def _close(self, session: Session) -> None:
        session.ended = True
        if self.sessions.get(session.cluster) is session:
            del self.sessions[session.cluster]
            st = self.statuses.get(session.cluster)
            if st is not None and st.connection == "Connected":
                st.connection = "Disconnected"
                self._dirty_status = True
            log.info("cluster %s stream closed", session.cluster)
            if self.evictions.forget_prober(session.cluster):
                self._failover_step()

    def _refuse(self, session: Session, code: grpc.StatusCode, message: str) -> None:
        session.refused = StreamRefused(code, message)
        session.wake.set()

    async def _read(self, session: Session, incoming: AsyncIterator[hub_pb2.AgentMessage]) -> None:
        try:
            async for msg in incoming:
                session.last_received = time.monotonic()
                self._handle(session, msg)
        except StreamRefused as exc:
            session.refused = exc
        except (grpc.aio.AioRpcError, grpc.aio.AbortError, asyncio.InvalidStateError):
            pass  # the agent went away or the stream was aborted; _serve notices through `ended`
        except Exception as exc:  # a hub fault (e.g. disk full) must end this stream, not freeze it
            log.exception("cluster %s: handling a message failed", session.cluster)
            session.refused = StreamRefused(grpc.StatusCode.INTERNAL, f"hub error: {exc}")
        finally:
            session.ended = True
            session.wake.set()

    def _handle(self, session: Session, msg: hub_pb2.AgentMessage) -> None:
        cluster = session.cluster
        if self.sessions.get(cluster) is not session:
            return  # a superseded or closed stream: its late ACKs must not roll status back
        kind = msg.WhichOneof("kind")
        st = self.statuses[cluster]
        self._seen(cluster)
        if kind == "ack":
            session.applied = msg.ack.version
            if session.in_flight == msg.ack.version:
                session.in_flight = ""
            session.nacks = 0
            st.acked_version = msg.ack.version
            if st.nack_version and st.nack_version == msg.ack.version:
                st.nack_version, st.nack_error = "", ""
            self._status_changed()
        elif kind == "nack":
            session.in_flight = ""
            session.nacks += 1
            delay = min(self.settings.nack_backoff_base * 2 ** (session.nacks - 1), self.settings.nack_backoff_max)
            session.retry_at = time.monotonic() + delay
            st.nack_version, st.nack_error, st.nack_at = msg.nack.version, msg.nack.error, _now()
            self._status_changed()
            log.error("cluster %s NACKed %s: %s (retry in %.1f s)", cluster, msg.nack.version[:12],
                      msg.nack.error, delay)
        elif kind == "discovery":
            self._discovery(cluster, msg.discovery)
        elif kind == "csr":
            signed = self.trust.sign(cluster, msg.csr)
            session.outbox.append(hub_pb2.HubMessage(certificate=signed.message))
            self._save_trust_status()
        elif kind == "ca":
            if self.trust.report(cluster, msg.ca):
                self._status_changed()
                self._save_trust_status()
                self._trust_tick()
        elif kind == "probes":
            try:
                if self.evictions.report(cluster, msg.probes, self._probe_targets(cluster)):
                    self._failover_step()
            except ProbeReportRefused as exc:
                log.error("probe report of %s refused, keeping the previous one: %s", cluster, exc)
        elif kind == "hello":
            raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, "hello sent twice on one stream")
        session.wake.set()

    def _discovery(self, cluster: str, report: hub_pb2.DiscoveryReport) -> None:
        if report.cluster != cluster:
            raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED,
                                f"certificate identifies cluster {cluster}; it cannot report for "
                                f"{report.cluster!r}")
        doc = discovery_json(report)
        try:
            parsed = discovery_from_json(doc)
        except DiscoveryError as exc:
            log.error("discovery report of %s refused, keeping the previous one: %s", cluster, exc)
            return
        if self.discovery.get(cluster) != parsed:
            self.registry.save_discovery(cluster, doc)
            self.discovery[cluster] = parsed
            self.mark_dirty()

    def _push_due(self, session: Session) -> Intent | None:
        intent = self.intents.get(session.cluster)
        if intent is None or intent.version in (session.applied, session.in_flight):
            return None
        if session.in_flight:
            return None  # one push in flight at a time: the agent answers in order
        if time.monotonic() < session.retry_at:
            return None
        return intent

    async def _serve(self, session: Session, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        s = self.settings
        next_beat = time.monotonic()
        while True:
            session.wake.clear()  # before looking: a wake-up during a write below must not be lost
            if session.refused is not None:
                raise session.refused
            if session.ended:
                return
            now = time.monotonic()
            if now - session.last_received > s.stream_timeout:
                raise StreamRefused(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"watchdog: no message from the agent for {s.stream_timeout:.0f} s")
            while session.outbox:
                await self._write(context, session.outbox.pop(0))
            intent = self._push_due(session)
            if intent is not None:
                session.in_flight = intent.version
                await self._write(context, hub_pb2.HubMessage(intent=hub_pb2.IntentPush(
                    version=intent.version, content=intent.content, content_type=MEDIA_TYPE)))
            if now >= next_beat:
                desired = self.intents.get(session.cluster)
                await self._write(context, hub_pb2.HubMessage(heartbeat=hub_pb2.Heartbeat(
                    sent_unix_ms=int(_now() * 1000), desired_version=desired.version if desired else "")))
                next_beat = now + s.heartbeat_interval
            wake_at = min(next_beat, session.last_received + s.stream_timeout)
            if session.retry_at > now:
                wake_at = min(wake_at, session.retry_at)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.wake.wait(), max(0.0, wake_at - time.monotonic()))


    async def _write(self, context: grpc.aio.ServicerContext[Any, Any], msg: hub_pb2.HubMessage) -> None:
        """Write, but never wait on a peer that stopped reading longer than the watchdog allows."""
        try:
            await asyncio.wait_for(context.write(msg), self.settings.stream_timeout)
        except TimeoutError:
            raise StreamRefused(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"watchdog: the agent read nothing for {self.settings.stream_timeout:.0f} s") from None


def discovery_json(report: hub_pb2.DiscoveryReport) -> dict[str, Any]:
    """The wire report as the JSON document the hub stores and validates."""
    return {
        "gateway": {"address": report.gateway.address, "port": report.gateway.port},
        "services": [
            {
                "namespace": s.namespace,
                "name": s.name,
                "ports": [{"name": p.name, "number": p.number, "protocol": p.protocol} for p in s.ports],
                "labels": dict(s.labels),
                "selector": dict(s.selector),
                "subsets": [{"name": x.name, "labels": dict(x.labels)} for x in s.subsets],
            }
            for s in report.services
        ],
    }
