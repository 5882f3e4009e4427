"""The agent process: register once, then keep one Sync stream to the hub.

The pure parts (inventory parsing, rendering) and the sink are called from here;
this module owns the gRPC channel, reconnects with jittered exponential backoff,
the watchdog, and the cache of the last applied intent (fail-static: a restart
with the hub down re-applies nothing and deletes nothing). What an intent stops
rendering is kept for `removal_grace` unless the user deleted it on the hub
(agent.retention); removals due later run from the stream's tick.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.cacerts import CaKeeper, CaStore, DirectoryCaStore
from agent.discovering import DiscoveryFailed, DiscoverySource, InventoryFile
from agent.identity import Identity, IdentityStore
from agent.inventory import Inventory
from agent.probes import Target, targets_of
from agent.probing import Prober
from agent.render import RenderContext, render
from agent.retention import Missed, Plan, RetentionFile, next_due, origin_of
from agent.settings import AgentSettings
from agent.writing import ApplyResult, DirectorySink, Sink, SinkError
from meshfleet import __version__, jointokens
from meshfleet.files import atomic_write
from meshfleet.intents import PROTOCOL_VERSION, ClusterIntent, IntentError, TrustIntent, decode, version_of
from meshfleet.v1 import hub_pb2, hub_pb2_grpc

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 20000),
    ("grpc.keepalive_timeout_ms", 10000),
]
# gRPC codes after which retrying with the same credentials cannot help
FATAL_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                         grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT})


class StreamEnded(Exception):
    """The hub ended the stream with a non-OK status noticed outside a read."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class AgentFatal(Exception):
    """A condition the agent cannot recover from by retrying (bad token, revoked identity)."""


@dataclass(frozen=True)
class Applied:
    version: str
    content: bytes


def backoff_delay(attempt: int, initial: float, maximum: float, rng: Callable[[], float]) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, initial * 2^attempt)]."""
    return float(rng() * min(maximum, initial * 2.0**attempt))


class AppliedCache:
    """The last intent this agent applied, kept so a restart knows what is in place."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "applied-intent.json"

    def load(self) -> Applied | None:
        try:
            doc = json.loads(self.path.read_text())
            content = base64.b64decode(doc["content"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable %s (%s); the hub will resend the intent", self.path, exc)
            return None
        if version_of(content) != doc.get("version"):
            log.error("ignoring %s: content does not match its version", self.path)
            return None
        return Applied(doc["version"], content)

    def save(self, applied: Applied) -> None:
        doc = {"version": applied.version, "content": base64.b64encode(applied.content).decode()}
        atomic_write(self.path, json.dumps(doc).encode())


class Agent:
    def __init__(self, settings: AgentSettings, rng: Callable[[], float] = random.random,
                 sink: Sink | None = None, discovery: DiscoverySource | None = None,
                 ca_store: CaStore | None = None) -> None:
        """`sink`, `discovery` and `ca_store` default to the embedded ones: the output directory, the
        inventory file, and plug-in CA files under `cacerts_dir`."""
        self.settings = settings
        self.rng = rng
        self.identities = IdentityStore(settings.state_dir)
        self.cache = AppliedCache(settings.state_dir)
        if sink is None:
            if settings.output is None:
                raise ValueError("an output directory is needed when not applying to Kubernetes")
            sink = DirectorySink(settings.output)
        if discovery is None:
            if settings.inventory is None:
                raise ValueError("an inventory file is needed when not discovering from Kubernetes")
            discovery = InventoryFile(settings.inventory)
        self.sink: Sink = sink
        self.discovery: DiscoverySource = discovery
        if ca_store is None:
            ca_store = DirectoryCaStore(settings.cacerts_dir or settings.state_dir / "cacerts")
        self.ca = CaKeeper(ca_store, settings.state_dir, settings.cluster, rng=rng)
        self.trust: TrustIntent | None = None  # the trust section of the last applied intent
        self.probe_targets: tuple[Target, ...] = ()  # remote gateways of the last applied intent
        self.prober = Prober(settings.probe_interval, settings.probe_timeout, settings.probe_failures)
        self._ca_sent: hub_pb2.CaReport | None = None
        self._ca_lock = asyncio.Lock()
        self.ctx = RenderContext(settings.cluster, settings.cluster_domain)
        self.objects = 0
        self.clock: Callable[[], float] = time.time  # unix time: retained objects' grace outlives restarts
        self.retention = RetentionFile(settings.state_dir)
        self.retained: dict[str, Missed] = self.retention.load()  # owned, no longer rendered, not removed yet
        self._origins: dict[str, str] = {}  # sink key -> origin of each object the applied intent renders
        # one sink apply at a time: a push's (in a thread, see handle_intent) and the tick's due removals
        self._sink_lock = threading.Lock()
        self._synced = False  # on the current stream, the hub confirmed or replaced the applied intent
        self._prune_error = ""
        self.applied = self._verified_cache()
        self._applying: asyncio.Future[hub_pb2.AgentMessage] | None = None
        self.connected = asyncio.Event()
        self.received: list[str] = []  # versions pushed to this agent, in order (for status and tests)
        self.last_error = ""
        self._discovery_error = ""
        self._inventory: Inventory | None = None
        self._report: hub_pb2.DiscoveryReport | None = None

    def _verified_cache(self) -> Applied | None:
        """The cached applied intent, if the output directory still holds exactly what it renders to.

        Otherwise (output wiped or edited, renderer upgraded) the agent announces nothing applied, so
        the hub pushes again; nothing is written or deleted before that push.
        """
        cached = self.cache.load()
        if cached is None:
            return None
        try:
            intent = decode(cached.version, cached.content)
            objects = render(intent, self.ctx)
            # what the next push drops came from these origins, whether or not the target still matches
            self._origins = self._origins_of(objects)
            if self.sink.holds(objects, extra=self.retained):  # objects kept past their intent are expected too
                self.objects = len(objects)
                self.trust = intent.trust  # renewals go on from it, even while the hub is away
                self.probe_targets = targets_of(intent)
                return cached
        except (IntentError, SinkError) as exc:
            log.warning("cached intent unusable (%s)", exc)
        log.warning("what the cluster holds differs from the cached intent %s; asking the hub to push it again",
                    cached.version[:12])
        return None

    @property
    def applied_version(self) -> str:
        return self.applied.version if self.applied else ""

    # identity ---------------------------------------------------------------------------------
    async def ensure_identity(self) -> Identity:
        """Load the stored identity, or register with the join token (retrying while the hub is away)."""
        s = self.settings
        identity = self.identities.load(s.cluster)
        if identity is not None:
            return identity
        if not s.token:
            raise AgentFatal(f"no identity in {s.state_dir} and no --token: run `meshfleet cluster add "
                             f"{s.cluster}` on the hub and pass the token it prints")
        try:
            token = jointokens.parse(s.token)
            ca_pem = x509.load_der_x509_certificate(token.ca_der).public_bytes(Encoding.PEM)
        except ValueError as exc:
            raise AgentFatal(str(exc)) from exc
        csr = self.identities.csr_pem(s.cluster)
        target = jointokens.register_address(s.hub, s.hub_bootstrap)
        attempt = 0
        while True:
            try:
                async with grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca_pem),
                                                   options=GRPC_OPTIONS) as channel:
                    resp = await hub_pb2_grpc.HubStub(channel).Register(
                        hub_pb2.RegisterRequest(cluster=s.cluster, token=token.credential, csr_pem=csr,
                                                agent_version=__version__), timeout=30)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FATAL_CODES:
                    raise AgentFatal(f"hub refused registration: {exc.details()}") from exc
                delay = backoff_delay(attempt, s.backoff_initial, s.backoff_max, self.rng)
                log.warning("cannot register at %s (%s: %s); retrying in %.1f s", target, exc.code().name,
                            exc.details(), delay)
                attempt += 1
                await asyncio.sleep(delay)
        self.identities.save(resp.certificate_pem, resp.ca_bundle_pem)
        log.info("registered as cluster %s", s.cluster)
        identity = self.identities.load(s.cluster)
        assert identity is not None
        return identity

    # discovery --------------------------------------------------------------------------------
    def _read_inventory(self) -> hub_pb2.DiscoveryReport | None:
        """The report to send if what the cluster runs changed and could be read, else None."""
        try:
            inv = self.discovery.read()
        except DiscoveryFailed as exc:
            if str(exc) != self._discovery_error:
                log.error("discovery failed, keeping the last report: %s", exc)
                self._discovery_error = str(exc)
            return None
        self._discovery_error = ""
        if inv is self._inventory or inv == self._inventory:
            return None  # unchanged: no report to build or send
        self._inventory = inv
        report = hub_pb2.DiscoveryReport(
            cluster=self.settings.cluster,
            gateway=hub_pb2.Gateway(address=inv.gateway_address, port=inv.gateway_port),
            services=[hub_pb2.Service(
                namespace=s.namespace, name=s.name,
                ports=[hub_pb2.ServicePort(name=p.name, number=p.number, protocol=p.protocol) for p in s.ports],
                labels=dict(s.labels),
                subsets=[hub_pb2.Subset(name=x.name, labels=dict(x.labels)) for x in s.subsets],
                selector=dict(s.selector),
            ) for s in inv.services])
        if report == self._report:
            return None
        self._report = report
        return report

    # applying ---------------------------------------------------------------------------------
    def apply(self, push: hub_pb2.IntentPush) -> hub_pb2.AgentMessage:
        """Decode, render and write one pushed intent; the ACK or NACK to send back."""
        with self._sink_lock:
            return self._apply(push)

    def _apply(self, push: hub_pb2.IntentPush) -> hub_pb2.AgentMessage:
        try:
            intent = decode(push.version, push.content, push.content_type)
            if intent.cluster.name != self.settings.cluster:
                raise IntentError(f"intent is for cluster {intent.cluster.name!r}, not {self.settings.cluster!r}")
            objects = render(intent, self.ctx)
            result = self._write(intent, objects)
            applied = Applied(push.version, push.content)
            try:
                self.cache.save(applied)
            except OSError as exc:
                raise SinkError(f"manifests written, but recording the applied intent in "
                                f"{self.cache.path} failed: {exc}") from exc
        except (IntentError, SinkError) as exc:
            self.last_error = str(exc)
            log.error("rejecting intent %s: %s", push.version[:12], exc)
            return hub_pb2.AgentMessage(nack=hub_pb2.Nack(version=push.version, error=str(exc)))
        except Exception as exc:  # a renderer bug must NACK, not kill the stream
            self.last_error = f"internal error rendering intent: {exc!r}"
            log.exception("rendering intent %s failed", push.version[:12])
            return hub_pb2.AgentMessage(nack=hub_pb2.Nack(version=push.version, error=self.last_error))
        self.applied = applied
        self.trust = intent.trust
        self.probe_targets = targets_of(intent)
        self.objects, self.last_error = len(objects), ""
        self._synced = True
        log.info("applied intent %s: %d objects (%d written, %d unchanged, %d pruned, %d kept)", push.version[:12],
                 len(objects), result.written, result.unchanged, result.pruned, len(result.held))
        return hub_pb2.AgentMessage(ack=hub_pb2.Ack(version=push.version))

    # removal after a grace period -------------------------------------------------------------
    def _origins_of(self, objects: list[dict[str, Any]]) -> dict[str, str]:
        """Sink key -> the hub resource each object comes from (what a later intent's `deleted` names)."""
        return {self.sink.key(o): origin_of(o) for o in objects}

    def _write(self, intent: ClusterIntent, objects: list[dict[str, Any]]) -> ApplyResult:
        """Apply `objects` to the sink, keeping what the intent dropped for the removal grace (under _sink_lock).

        What a user deleted on the hub (its origin in `intent.deleted`) goes at once; anything else the
        applied intent rendered and this one does not is kept until `removal_grace` after it was first missed.
        """
        plan = Plan(self.retained, self._origins, frozenset(intent.deleted), self.clock(), self.settings.removal_grace)
        try:
            result = self.sink.apply(objects, hold=plan.hold)
        except SinkError:
            # what was decided to keep keeps its first-miss time for the next attempt; nothing is saved
            self.retained = {**self.retained, **plan.kept}
            raise
        for key in plan.newly_kept():
            log.warning("keeping %s for up to %g s: no longer in the hub's intent", key, self.settings.removal_grace)
        for key, why in sorted(plan.pruned.items()):
            log.info("removing %s: %s", key, why)
        retained = plan.after(result.held)
        self._origins = self._origins_of(objects)
        if retained != self.retained:
            self.retained = retained
            try:
                self.retention.save(retained)
            except OSError as exc:  # only a restart would lose the first-miss times, lengthening retention
                log.error("cannot record the objects kept for the removal grace in %s: %s", self.retention.path, exc)
        return result

    def prune_due(self) -> bool:
        """Re-apply the applied intent locally if a kept object's grace has run out (blocking I/O); True if it ran.

        Nothing is sent: the version is unchanged. Holds _sink_lock, so it never overlaps a push being applied.
        """
        with self._sink_lock:
            due = next_due(self.retained, self.settings.removal_grace)
            if self.applied is None or due is None or self.clock() < due:
                return False
            try:
                intent = decode(self.applied.version, self.applied.content)
                result = self._write(intent, render(intent, self.ctx))
            except Exception as exc:  # the tick calls this: no failure here may end the stream
                if str(exc) != self._prune_error:
                    log.error("removing objects whose grace ran out failed (retrying at the next tick): %s", exc,
                              exc_info=not isinstance(exc, (IntentError, SinkError)))
                    self._prune_error = str(exc)
                return False
            self._prune_error = ""
            log.info("removal grace ran out: %d object(s) removed, %d still kept", result.pruned, len(result.held))
            return True

    def prune_pending(self) -> bool:
        """True if the tick should call prune_due: a kept object's grace ran out and the hub has since confirmed
        or replaced what this agent applied (nothing is deleted before the first sync after a start)."""
        due = next_due(self.retained, self.settings.removal_grace)
        return self._synced and self.connected.is_set() and self.applied is not None and due is not None \
            and self.clock() >= due

    # the plug-in CA ---------------------------------------------------------------------------
    def ca_messages(self) -> list[hub_pb2.AgentMessage]:
        """Bring the plug-in CA towards the intent's trust: a CSR to send if a new intermediate is needed,
        and a CA report if what the cluster holds changed since the last one sent (blocking I/O)."""
        if self.trust is None:
            return []  # no TrustPolicy on the hub: meshfleet manages no CA here, and reports none
        out = []
        request = self.ca.reconcile(self.trust)
        if request is not None:
            out.append(hub_pb2.AgentMessage(csr=request))
        report = self.ca.report()
        if report != self._ca_sent:
            self._ca_sent = report
            out.append(hub_pb2.AgentMessage(ca=report))
        return out

    async def _ca(self, fn: Callable[..., list[hub_pb2.AgentMessage]], *args: Any) -> list[hub_pb2.AgentMessage]:
        """Run a CA step off the loop, one at a time (the tick and the reader both call in)."""
        async with self._ca_lock:
            return await asyncio.to_thread(fn, *args)

    def install_certificate(self, issued: hub_pb2.IntermediateIssued) -> list[hub_pb2.AgentMessage]:
        """Install a certificate the hub signed (or record its refusal); the messages that follow (blocking I/O)."""
        self.ca.install(issued)
        return self.ca_messages()

    # the stream -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Sync until cancelled; raises AgentFatal when retrying cannot help."""
        identity = await self.ensure_identity()
        creds = grpc.ssl_channel_credentials(identity.ca_pem, identity.key_pem, identity.cert_pem)
        attempt = 0
        while True:
            if self._applying is not None:
                # an apply outlives the stream it came on: finish it so hello states the truth
                with contextlib.suppress(Exception):
                    await self._applying
            started = time.monotonic()
            try:
                async with grpc.aio.secure_channel(self.settings.hub, creds, options=GRPC_OPTIONS) as channel:
                    await self._sync(hub_pb2_grpc.HubStub(channel))
                reason = "stream ended"
            except (grpc.aio.AioRpcError, StreamEnded) as exc:
                if exc.code() in FATAL_CODES:
                    raise AgentFatal(f"hub refused the stream: {exc.code().name}: {exc.details()}") from exc
                reason = f"{exc.code().name}: {exc.details()}"
            except TimeoutError:
                reason = f"watchdog: no message from the hub for {self.settings.stream_timeout:.0f} s"
            finally:
                self.connected.clear()
            if time.monotonic() - started > 2 * self.settings.heartbeat_interval:
                attempt = 0  # the stream was healthy for a while: start backing off from scratch
            delay = backoff_delay(attempt, self.settings.backoff_initial, self.settings.backoff_max, self.rng)
            attempt += 1
            log.warning("disconnected from hub (%s); reconnecting in %.2f s", reason, delay)
            await asyncio.sleep(delay)

    async def _sync(self, stub: hub_pb2_grpc.HubStub) -> None:
        s = self.settings
        call = stub.Sync()
        outbox: asyncio.Queue[hub_pb2.AgentMessage] = asyncio.Queue()
        await outbox.put(hub_pb2.AgentMessage(hello=hub_pb2.Hello(
            cluster=s.cluster, agent_version=__version__, protocol_version=PROTOCOL_VERSION,
            applied_version=self.applied_version)))
        self._report = self._inventory = None  # a new stream reports afresh
        self._ca_sent = None
        self.ca.forget_outstanding()  # a CSR sent on a dead stream is answered nowhere: send it again
        self._synced = False  # a stream the hub never answers (hung, partitioned) must not let removals run
        report = await asyncio.to_thread(self._read_inventory)
        if report is not None:
            await outbox.put(hub_pb2.AgentMessage(discovery=report))
        for msg in await self._ca(self.ca_messages):
            await outbox.put(msg)

        async def write() -> None:
            while True:
                msg = await outbox.get()
                try:
                    await call.write(msg)
                except (asyncio.InvalidStateError, grpc.aio.UsageError):
                    return  # the call has finished; its status is read below

        async def tick() -> None:
            period = min(s.heartbeat_interval, s.poll_interval)
            # agents that (re)connect together, e.g. after a hub restart, must not tick in lockstep
            await asyncio.sleep(self.rng() * period)
            while True:
                await asyncio.sleep(period)
                report = await asyncio.to_thread(self._read_inventory)
                if report is not None:
                    await outbox.put(hub_pb2.AgentMessage(discovery=report))
                for msg in await self._ca(self.ca_messages):  # renewal due, a refused CSR to retry
                    await outbox.put(msg)
                if time.monotonic() >= next_beat[0]:
                    next_beat[0] = time.monotonic() + s.heartbeat_interval
                    await outbox.put(hub_pb2.AgentMessage(heartbeat=hub_pb2.Heartbeat(
                        sent_unix_ms=int(time.time() * 1000))))
                # kept objects whose removal grace ran out go now, without waiting for a push. The tick runs
                # only on a live stream, so while the hub is away (or before it first answers) nothing is removed.
                if self.prune_pending():
                    await asyncio.to_thread(self.prune_due)

        next_beat = [time.monotonic() + s.heartbeat_interval]
        last_heard = [time.monotonic()]

        async def read() -> None:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                last_heard[0] = time.monotonic()
                self.connected.set()
                kind = msg.WhichOneof("kind")
                if kind == "heartbeat" and msg.heartbeat.desired_version \
                        and msg.heartbeat.desired_version == self.applied_version:
                    # the hub wants what is applied: in sync without a push (removals whose grace ran out
                    # may proceed); a hub with no intent for this cluster yet says "" and proves nothing
                    self._synced = True
                if kind == "intent":
                    self.received.append(msg.intent.version)
                    await outbox.put(await self.handle_intent(msg.intent))
                    for out in await self._ca(self.ca_messages):
                        await outbox.put(out)
                elif kind == "certificate":
                    for out in await self._ca(self.install_certificate, msg.certificate):
                        await outbox.put(out)

        async def watchdog() -> None:
            while True:
                if self._applying is not None and not self._applying.done():
                    last_heard[0] = time.monotonic()  # our own slow apply is not the hub's silence
                silent = time.monotonic() - last_heard[0]
                if silent > s.stream_timeout:
                    raise TimeoutError
                await asyncio.sleep(s.stream_timeout - silent + 0.01)

        tasks = [asyncio.create_task(f()) for f in (read, write, tick, watchdog)]
        if s.probe_interval > 0:
            tasks.append(asyncio.create_task(self._probe(outbox)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # the hub's status (AioRpcError) or the watchdog's TimeoutError
            code = await call.code()  # the stream ended without an error above: why?
            if code != grpc.StatusCode.OK:
                raise StreamEnded(code, await call.details())
        finally:
            for t in tasks:
                t.cancel()
            try:
                # one gather, not an await per task under suppress(CancelledError): that would also swallow a
                # cancellation of this task arriving while they wind down, and the agent would reconnect
                # instead of stopping (a cancelled gather still waits for its tasks, then raises)
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                call.cancel()

    async def handle_intent(self, push: hub_pb2.IntentPush) -> hub_pb2.AgentMessage:
        """Apply a push off the event loop (rendering and file writes block); the answer to send.

        The apply is shielded: if the stream dies meanwhile it still completes, and run() waits
        for it before dialling again, so two applies never overlap.
        """
        self._applying = asyncio.ensure_future(asyncio.to_thread(self.apply, push))
        return await asyncio.shield(self._applying)

    # probes of the gateways this cluster sends traffic to ----------------------------------------
    async def _probe(self, outbox: asyncio.Queue[hub_pb2.AgentMessage]) -> None:
        """Probe the applied intent's remote gateways every probe_interval while the stream lasts, and queue the
        report whenever it changed (and once on each new stream). Never returns or raises: it must not end the stream.
        """
        self.prober.forget_sent()  # the hub keeps probe results per stream
        while True:
            try:
                if self.prober.due_in() == 0:
                    await self.prober.round(self.probe_targets)
                report = self.prober.report()
                if report is not None:
                    await outbox.put(hub_pb2.AgentMessage(probes=report))
                delay = self.prober.due_in()
            except Exception:
                log.exception("probing the gateways of remote clusters failed")
                delay = self.settings.probe_interval
            await asyncio.sleep(delay)
