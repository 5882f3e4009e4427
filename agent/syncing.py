"""The agent process: register once, then keep one Sync stream to the hub.

The pure parts (inventory parsing, rendering) and the sink are called from here;
this module owns the gRPC channel, reconnects with jittered exponential backoff,
the watchdog, and the cache of the last applied intent (fail-static: a restart
with the hub down re-applies nothing and deletes nothing).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
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
from agent.render import RenderContext, render
from agent.settings import AgentSettings
from agent.writing import DirectorySink, Sink, SinkError
from meshfleet import __version__, jointokens
from meshfleet.files import atomic_write
from meshfleet.intents import PROTOCOL_VERSION, IntentError, TrustIntent, decode, version_of
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
        self._ca_sent: hub_pb2.CaReport | None = None
        self._ca_lock = asyncio.Lock()
        self.ctx = RenderContext(settings.cluster, settings.cluster_domain)
        self.objects = 0
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
            if self.sink.holds(objects):
                self.objects = len(objects)
                self.trust = intent.trust  # renewals go on from it, even while the hub is away
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
        try:
            intent = decode(push.version, push.content, push.content_type)
            if intent.cluster.name != self.settings.cluster:
                raise IntentError(f"intent is for cluster {intent.cluster.name!r}, not {self.settings.cluster!r}")
            objects = render(intent, self.ctx)
            result = self.sink.apply(objects)
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
        self.objects, self.last_error = len(objects), ""
        log.info("applied intent %s: %d objects (%d written, %d unchanged, %d pruned)", push.version[:12],
                 len(objects), result.written, result.unchanged, result.pruned)
        return hub_pb2.AgentMessage(ack=hub_pb2.Ack(version=push.version))

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
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError,
                                         grpc.aio.UsageError, asyncio.InvalidStateError):
                    await t
            call.cancel()

    async def handle_intent(self, push: hub_pb2.IntentPush) -> hub_pb2.AgentMessage:
        """Apply a push off the event loop (rendering and file writes block); the answer to send.

        The apply is shielded: if the stream dies meanwhile it still completes, and run() waits
        for it before dialling again, so two applies never overlap.
        """
        self._applying = asyncio.ensure_future(asyncio.to_thread(self.apply, push))
        return await asyncio.shield(self._applying)
