"""Convergence benchmark: policy change -> last ACK, over N agents, against a bare gRPC broadcast.

    python bench/convergence.py [--agents 100] [--changes 20] [--mode simulated|full] [--workdir DIR]

meshfleet side: a real `mgmt.serving.Hub` (mutual TLS on 127.0.0.1:0, policies from a directory) and N
agents in this event loop, built with `meshfleet.demo.Fleet`. Only the hub is a thin subclass (`TimedHub`)
that timestamps translations and ACKs; it changes no behaviour.

--mode simulated (default, the headline): each agent is the real `agent.syncing.Agent` (Register with a
join token, its own key and mTLS identity, hello, discovery report, heartbeats, the same stream code) whose
apply step only checks the pushed version against the content's SHA-256 and ACKs, without rendering or
writing. That isolates the hub and protocol, which is what the baseline can be compared with. What a real
agent adds in its own cluster (decode, render, write with fsync) is measured separately, one agent at a
time, and printed as "agent apply".
--mode full: real agents that render and write, all in this one process; their CPU work adds up on one
GIL and two cores, where a deployment runs one agent per cluster in parallel.

For each change the reviews-split policy file is rewritten with new weights (every cluster's intent
changes). The clock starts right before the write. The hub's own file poll is switched off
(poll_interval = 1e6 s) and the bench runs what the poll loop would run, immediately after the write:
`source.scan()` in a worker thread, `_save_problems()`, `mark_dirty()`. So the figure is "policy change
-> last ACK" (scan + debounce + translation + push + agent decode/render/write/fsync + ACK), without the
poll interval, which is a configuration choice (HubSettings.poll_interval, 1 s by default).
The clock stops when the hub handles the last ACK of the new versions. All agents run in this one
process (as the issue allows), so their CPU work (decode, render, YAML, fsync) adds up on one GIL and two
cores, where a deployment runs one agent per cluster: "write -> first ACK" is printed as well.

baseline: a bare grpc.aio server with a generic stream-stream handler (raw bytes, no protobuf decoding)
and N client streams (one channel = one TCP/TLS connection each, in this process), using the same mutual
TLS setup as the hub. Per change the server writes to every client the exact bytes the hub pushed to the
corresponding cluster (the serialized HubMessage of its current intent); each client answers with a
message of the size of a meshfleet ACK; latency = start of the broadcast -> last ack.

Percentiles are nearest-rank: with 20 changes p99 is the maximum and p50 the 10th smallest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import logging
import math
import random
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography.hazmat.primitives.serialization import Encoding

# run as `python bench/NAME.py`: the repository root, where the `bench` package lives, is not on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent.identity import IdentityStore
from agent.settings import AgentSettings
from agent.syncing import GRPC_OPTIONS as AGENT_GRPC_OPTIONS
from agent.syncing import Agent
from bench import running
from meshfleet.demo import EXAMPLES, Fleet, demo_clusters
from meshfleet.intents import MEDIA_TYPE, version_of
from meshfleet.v1 import hub_pb2
from mgmt.identities import ensure_server_certificate, load_or_create_ca, sign_cluster_csr
from mgmt.serving import GRPC_OPTIONS as HUB_GRPC_OPTIONS
from mgmt.serving import Hub, Session
from mgmt.settings import HubSettings

POLICY_FILE = "reviews-split.yaml"
POLL_OFF = 1e6  # seconds: the hub's file poll never fires during the run; the bench triggers the scan itself
TARGET_P99 = 1.0  # seconds
TARGET_RATIO = 3.0
BASELINE_METHOD = "/meshfleet.bench.Broadcast/Sync"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in (0, 100]): the smallest value with at least q % of the values <= it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# meshfleet side --------------------------------------------------------------------------------------


class SimulatedAgent(Agent):
    """The real agent with an apply step that only verifies the version and ACKs (see the module doc)."""

    async def handle_intent(self, push: hub_pb2.IntentPush) -> hub_pb2.AgentMessage:
        # inline: nothing here blocks, so no worker-thread hop (the baseline clients make none either)
        if version_of(push.content) != push.version:
            return hub_pb2.AgentMessage(nack=hub_pb2.Nack(version=push.version, error="checksum mismatch"))
        return hub_pb2.AgentMessage(ack=hub_pb2.Ack(version=push.version))


def measure_agent_apply(workdir: Path, contents: Sequence[tuple[str, bytes]], cluster: str, rounds: int
                        ) -> list[float]:
    """Seconds per real Agent.apply (decode, render, DirectorySink write + fsync), alternating two intents."""
    agent = Agent(AgentSettings(hub="127.0.0.1:1", cluster=cluster, state_dir=workdir / "apply-agent",
                                inventory=workdir / "unused.yaml", output=workdir / "apply-output"))
    times = []
    for i in range(rounds + 1):
        version, content = contents[i % len(contents)]
        t0 = time.perf_counter()
        answer = agent.apply(hub_pb2.IntentPush(version=version, content=content, content_type=MEDIA_TYPE))
        if answer.WhichOneof("kind") != "ack":
            raise RuntimeError(f"agent apply NACKed: {answer.nack.error}")
        if i:  # the first apply writes every file from scratch
            times.append(time.perf_counter() - t0)
    return times


class TimedHub(Hub):
    """The real hub, plus timestamps of translations and of the ACKs of the versions it last computed."""

    def __init__(self, settings: HubSettings) -> None:
        super().__init__(settings)
        self.target: dict[str, str] = {}
        self.pending: set[str] = set()
        self.translated = asyncio.Event()
        self.all_acked = asyncio.Event()
        self.translated_at = 0.0
        self.first_ack_at = 0.0
        self.last_ack_at = 0.0
        self.nacks = 0

    def arm(self) -> None:
        self.translated.clear()
        self.all_acked.clear()

    def _recompute(self) -> None:
        super()._recompute()
        self.translated_at = time.perf_counter()
        self.target = {name: intent.version for name, intent in self.intents.items()}
        self.pending = {name for name, version in self.target.items()
                        if self.statuses[name].acked_version != version}
        self.first_ack_at = 0.0
        self.translated.set()
        if not self.pending:
            self.all_acked.set()

    def _handle(self, session: Session, msg: hub_pb2.AgentMessage) -> None:
        super()._handle(session, msg)
        kind = msg.WhichOneof("kind")
        if kind == "nack":
            self.nacks += 1
        elif kind == "ack" and session.cluster in self.pending \
                and self.target.get(session.cluster) == msg.ack.version:
            self.pending.discard(session.cluster)
            self.last_ack_at = time.perf_counter()
            self.first_ack_at = self.first_ack_at or self.last_ack_at
            if not self.pending:
                self.all_acked.set()


@dataclass
class Change:
    total: float  # policy write -> last ACK
    translate: float  # policy write -> translation done (scan, debounce, translate)
    first_ack: float  # policy write -> first ACK of the new versions
    changed: int  # clusters whose intent changed


def policy_text(template: dict[str, Any], step: int) -> str:
    doc = dict(template)
    spec = dict(doc["spec"])
    route = [dict(r) for r in spec["route"]]
    shift = step % 50
    route[0]["weight"] = 80 - shift
    route[1]["weight"] = 20 + shift
    spec["route"] = route
    doc["spec"] = spec
    return yaml.safe_dump(doc, sort_keys=False)


async def one_change(hub: TimedHub, policy: Path, template: dict[str, Any], step: int,
                     limit: float) -> Change:
    source = hub.source
    assert source is not None
    before = dict(hub.target) or {n: i.version for n, i in hub.intents.items()}
    text = policy_text(template, step)

    def write_and_scan() -> bool:
        policy.write_text(text)
        return source.scan()

    hub.arm()
    t0 = time.perf_counter()
    # the write, then what Hub._poll_loop does on its next tick (scan in a worker thread), without the wait
    if not await asyncio.to_thread(write_and_scan):
        raise RuntimeError(f"change {step}: the policy source saw no change after rewriting {policy}")
    hub._save_problems()
    hub.mark_dirty()
    async with asyncio.timeout(limit):
        await hub.translated.wait()
        await hub.all_acked.wait()
    changed = sum(1 for n, v in hub.target.items() if before.get(n) != v)
    return Change(hub.last_ack_at - t0, hub.translated_at - t0, hub.first_ack_at - t0, changed)


@dataclass
class MeshfleetResult:
    changes: list[Change]
    warmup: list[Change]
    startup: float
    payloads: list[bytes]  # serialized HubMessage of each cluster's current intent
    content_sizes: list[int]
    nacks: int
    apply_times: list[float]  # one real agent applying successive intents of its cluster


async def run_meshfleet(workdir: Path, agents: int, changes: int, warmup: int, heartbeat: float,
                        pause: float, limit: float, simulated: bool) -> MeshfleetResult:
    policies = workdir / "policies"
    shutil.copytree(EXAMPLES / "policies", policies)
    policy = policies / POLICY_FILE
    template: dict[str, Any] = yaml.safe_load(policy.read_text())
    if len(template["spec"]["route"]) < 2:
        raise RuntimeError(f"{policy}: expected at least two route targets")
    policy.write_text(policy_text(template, 0))

    # agents check their inventories at the production default (1 s), as they heartbeat at it (5 s)
    fleet = Fleet(workdir, demo_clusters(agents, workdir), policies, heartbeat=heartbeat, grace=3 * heartbeat,
                  poll=AgentSettings.poll_interval,
                  agent_class=SimulatedAgent if simulated else Agent)
    # same settings as Fleet's hub (debounce default), file poll off: the bench triggers scans itself
    fleet.hub.registry.close()
    hub = TimedHub(dataclasses.replace(fleet.hub.settings, poll_interval=POLL_OFF))
    fleet.hub = hub
    rng = random.Random(1)
    # until every discovery report is in, translations report missing backends: expected, not worth printing
    serving_log = logging.getLogger("mgmt.serving")
    startup_filter = running.StartupPolicyNoise()
    serving_log.addFilter(startup_filter)
    started = time.perf_counter()
    await fleet.start()
    try:
        converged = await fleet.wait_converged(limit)
        serving_log.removeFilter(startup_filter)
        if not converged:
            raise RuntimeError(f"the fleet of {agents} agents did not converge within {limit:.0f} s")
        startup = time.perf_counter() - started
        # as `meshfleet hub` does once started: long-lived objects leave the collector's generations,
        # so a full collection does not walk them on every change (the tail of this benchmark)
        gc.collect()
        gc.freeze()
        done: list[Change] = []
        history: list[tuple[str, bytes]] = []  # the largest cluster's successive intents, for the apply figure
        biggest = max(fleet.clusters, key=lambda c: len(hub.intents[c.name].content)).name
        for step in range(1, warmup + changes + 1):
            await asyncio.sleep(pause * rng.uniform(0.75, 1.25))  # off the beat of heartbeats and polls
            try:
                change = await one_change(hub, policy, template, step, limit)
            except TimeoutError:
                raise RuntimeError(f"change {step}: {len(hub.pending)} of {agents} agents had not ACKed "
                                   f"within {limit:.0f} s (NACKs so far: {hub.nacks})") from None
            if change.changed != agents:
                raise RuntimeError(f"change {step}: only {change.changed} of {agents} intents changed")
            done.append(change)
            history.append((hub.intents[biggest].version, hub.intents[biggest].content))
        if not fleet.converged():
            raise RuntimeError("the fleet is not converged after the last change")
        payloads = [hub_pb2.HubMessage(intent=hub_pb2.IntentPush(
            version=hub.intents[c.name].version, content=hub.intents[c.name].content,
            content_type=MEDIA_TYPE)).SerializeToString() for c in fleet.clusters]
        sizes = [len(hub.intents[c.name].content) for c in fleet.clusters]
        apply_times = await asyncio.to_thread(measure_agent_apply, workdir, history, biggest, len(history))
        return MeshfleetResult(done[warmup:], done[:warmup], startup, payloads, sizes, hub.nacks, apply_times)
    finally:
        serving_log.removeFilter(startup_filter)
        await fleet.stop()


# baseline ------------------------------------------------------------------------------------------


class BroadcastServer:
    """A bare gRPC stream-stream server: push bytes to every client stream, count the answers."""

    def __init__(self) -> None:
        self.queues: dict[int, asyncio.Queue[bytes]] = {}
        self.pending: set[int] = set()
        self.all_acked = asyncio.Event()
        self.last_ack_at = 0.0
        self.connected = asyncio.Event()
        self.expected = 0
        self.active = 0  # handlers running; the server stops once the clients are gone and this is 0
        self.idle = asyncio.Event()
        self._ids = 0

    async def sync(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        cid = self._ids
        self._ids += 1
        self.active += 1
        try:
            await self._serve(cid, requests.__aiter__(), context)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, StopAsyncIteration):
            pass  # the client went away
        finally:
            self.active -= 1
            if not self.active:
                self.idle.set()

    async def _serve(self, cid: int, incoming: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        await incoming.__anext__()  # hello

        async def read() -> None:
            async for _ in incoming:
                if cid in self.pending:
                    self.pending.discard(cid)
                    if not self.pending:
                        self.last_ack_at = time.perf_counter()
                        self.all_acked.set()

        reader = asyncio.create_task(read())
        self.queues[cid] = queue
        if len(self.queues) == self.expected:
            self.connected.set()
        try:
            while not reader.done():
                getting = asyncio.ensure_future(queue.get())
                await asyncio.wait({getting, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    break
                await context.write(getting.result())
        finally:
            self.queues.pop(cid, None)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await reader

    async def broadcast(self, payloads: Sequence[bytes]) -> float:
        """Write payloads[i % len] to client i; seconds from the first write to the last ack."""
        self.all_acked.clear()
        ids = sorted(self.queues)
        self.pending = set(ids)
        t0 = time.perf_counter()
        for i, cid in enumerate(ids):
            self.queues[cid].put_nowait(payloads[i % len(payloads)])
        await self.all_acked.wait()
        return self.last_ack_at - t0


async def baseline_client(target: str, creds: grpc.ChannelCredentials, ack: bytes) -> None:
    options = [*AGENT_GRPC_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]  # one connection per client
    async with grpc.aio.secure_channel(target, creds, options=options) as channel:
        call = channel.stream_stream(BASELINE_METHOD, None, None)(None)
        await call.write(b"hello")
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            await call.write(ack)


@dataclass
class BaselineResult:
    latencies: list[float]
    warmup: list[float]


async def run_baseline(workdir: Path, clients: int, changes: int, warmup: int, payloads: Sequence[bytes],
                       ack: bytes, pause: float, limit: float) -> BaselineResult:
    now = dt.datetime.now(dt.UTC)
    state = workdir / "baseline"
    state.mkdir(parents=True, exist_ok=True)
    ca = load_or_create_ca(state, now)
    key_pem, cert_pem = ensure_server_certificate(state, ca, (), now)
    client_ids = IdentityStore(state / "client")
    client_cert = sign_cluster_csr(ca, client_ids.csr_pem("baseline"), "baseline", now, dt.timedelta(days=1))
    client_creds = grpc.ssl_channel_credentials(ca.cert_pem, client_ids.key_pem(),
                                                client_cert.public_bytes(Encoding.PEM))
    server_creds = grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca.cert_pem,
                                               require_client_auth=True)

    bench = BroadcastServer()
    bench.expected = clients
    server = grpc.aio.server(options=HUB_GRPC_OPTIONS)
    handler = grpc.method_handlers_generic_handler("meshfleet.bench.Broadcast", {
        "Sync": grpc.stream_stream_rpc_method_handler(bench.sync),
    })
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", server_creds)
    if not port:
        raise OSError("cannot listen on 127.0.0.1:0")
    await server.start()
    tasks = [asyncio.create_task(baseline_client(f"127.0.0.1:{port}", client_creds, ack)) for _ in range(clients)]
    rng = random.Random(2)
    try:
        async with asyncio.timeout(limit):
            await bench.connected.wait()
        done: list[float] = []
        for _ in range(warmup + changes):
            await asyncio.sleep(pause * rng.uniform(0.75, 1.25))
            async with asyncio.timeout(limit):
                done.append(await bench.broadcast(payloads))
        return BaselineResult(done[warmup:], done[:warmup])
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await t
        if bench.active:  # let the handlers see their clients go, so stop() cancels none of them
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await bench.idle.wait()
        await server.stop(0)


# report --------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def report(args: argparse.Namespace, mesh: MeshfleetResult, base: BaselineResult) -> bool:
    m = [c.total for c in mesh.changes]
    tr = [c.translate for c in mesh.changes]
    fa = [c.first_ack for c in mesh.changes]
    m50, m99 = percentile(m, 50), percentile(m, 99)
    b50, b99 = percentile(base.latencies, 50), percentile(base.latencies, 99)
    sizes = sorted(mesh.content_sizes)
    pushed = sorted(len(p) for p in mesh.payloads)
    rows = [
        ("agents", str(args.agents)),
        ("changes (+ warm-up, not counted)", f"{len(m)} (+{len(mesh.warmup)})"),
        ("intent content bytes (min/median/max)", f"{sizes[0]} / {int(statistics.median(sizes))} / {sizes[-1]}"),
        ("pushed message bytes per agent (median)", f"{int(statistics.median(pushed))}"),
        ("pushed bytes per change, all agents", f"{sum(pushed)}"),
        ("meshfleet p50 / p99 (ms)", f"{ms(m50)} / {ms(m99)}"),
        ("  write -> translated p50 / p99", f"{ms(percentile(tr, 50))} / {ms(percentile(tr, 99))}"),
        ("  write -> first ACK p50 / p99", f"{ms(percentile(fa, 50))} / {ms(percentile(fa, 99))}"),
        ("  min / mean / max (ms)", f"{ms(min(m))} / {ms(statistics.fmean(m))} / {ms(max(m))}"),
        ("baseline p50 / p99 (ms)", f"{ms(b50)} / {ms(b99)}"),
        ("  min / mean / max (ms)",
         f"{ms(min(base.latencies))} / {ms(statistics.fmean(base.latencies))} / {ms(max(base.latencies))}"),
        ("ratio p50 / p99 (meshfleet / baseline)", f"{m50 / b50:.2f} / {m99 / b99:.2f}"),
        ("agent apply, one real agent p50 / p99 (ms)",
         f"{ms(percentile(mesh.apply_times, 50))} / {ms(percentile(mesh.apply_times, 99))}"),
        ("NACKs", str(mesh.nacks)),
        ("initial convergence (s)", f"{mesh.startup:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nconvergence benchmark: policy change -> last ACK, {args.agents} agents, {len(m)} changes, "
          f"mode {args.mode}")
    if args.mode == "simulated":
        print("  meshfleet: real Hub + simulated agents (real Agent stream code, Register, mTLS, discovery,")
        print("             heartbeats; apply = verify SHA-256 and ACK); a real agent's apply is measured apart")
    else:
        print("  meshfleet: real Hub + real Agents (render, DirectorySink with fsync), all in this process:")
        print("             their CPU work adds up on one GIL and two cores")
    print("             clock starts before the policy file write; file poll replaced by an immediate scan +")
    print(f"             mark_dirty (translation at once, bursts spaced by {HubSettings.debounce * 1000:.0f} ms)")
    print("  baseline:  bare grpc.aio stream-stream, raw bytes, mutual TLS, same pushed bytes, ACK-sized reply")
    print(f"  percentiles: nearest rank over {len(m)} samples (p99 = max when fewer than 100)\n")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    p99_ok, ratio_ok = m99 <= TARGET_P99, m99 / b99 <= TARGET_RATIO
    ratio50_ok = m50 / b50 <= TARGET_RATIO
    verdict = "target met" if p99_ok and ratio_ok and ratio50_ok else "target missed"
    print(f"\n{verdict}: p99 {ms(m99)} ms {'<=' if p99_ok else '>'} {TARGET_P99 * 1000:.0f} ms; "
          f"ratio p99 {m99 / b99:.2f} {'<=' if ratio_ok else '>'} {TARGET_RATIO:.0f}; "
          f"ratio p50 {m50 / b50:.2f} {'<=' if ratio50_ok else '>'} {TARGET_RATIO:.0f}")
    return p99_ok and ratio_ok and ratio50_ok


async def main_async(args: argparse.Namespace, workdir: Path) -> None:
    print(f"meshfleet: starting a hub and {args.agents} agents in {workdir} ...", flush=True)
    mesh = await run_meshfleet(workdir, args.agents, args.changes, args.warmup, args.heartbeat, args.pause,
                               args.timeout, simulated=args.mode == "simulated")
    print(f"meshfleet: converged in {mesh.startup:.1f} s, {args.warmup} + {args.changes} changes done; "
          f"baseline: {args.agents} client streams ...", flush=True)
    ack = hub_pb2.AgentMessage(ack=hub_pb2.Ack(version="0" * 64)).SerializeToString()
    base = await run_baseline(workdir, args.agents, args.changes, args.warmup, mesh.payloads, ack, args.pause,
                              args.timeout)
    report(args, mesh, base)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--agents", type=int, default=100, help="number of agents / baseline clients (%(default)s)")
    p.add_argument("--changes", type=int, default=20, help="measured policy changes (%(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="changes run first and not counted (%(default)s)")
    p.add_argument("--mode", choices=["simulated", "full"], default="simulated",
                   help="simulated agents (verify + ACK) or full agents rendering and writing (%(default)s)")
    p.add_argument("--workdir", type=Path, help="keep state and manifests in a new directory under DIR "
                   "(default: a temporary directory, removed at the end)")
    p.add_argument("--heartbeat", type=float, default=HubSettings.heartbeat_interval,
                   help="hub and agent heartbeat interval, s (%(default)s, the production default)")
    p.add_argument("--pause", type=float, default=0.3, help="mean pause between changes, s (%(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="bound of each wait, s (%(default)s)")
    args = p.parse_args(argv)
    if args.agents < 1 or args.changes < 1 or args.warmup < 0:
        p.error("--agents and --changes must be at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return running.run("convergence", parse_args(argv), main_async)


if __name__ == "__main__":
    sys.exit(main())
