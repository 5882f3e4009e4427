"""Root rotation benchmark: the three phases of a root rotation over N clusters, and the hub's CSR signing rate.

    python bench/rotation.py [--agents 100] [--rotations 3] [--algorithm EC-P256] [--workdir DIR]

rotation: a real `mgmt.serving.Hub` (mutual TLS on 127.0.0.1:0, the example policies plus a TrustPolicy:
root generated with --algorithm, intermediate ttl 720h, gracePeriod 0s) and N agents in this event loop,
built with `meshfleet.demo.Fleet`. Each agent is the real `agent.syncing.Agent` with its real CA keeper
(`agent.cacerts.CaKeeper` over a `DirectoryCaStore` in <state>/cacerts): the intermediate key is made in
the agent, its CSR goes over the stream, the signed intermediate is verified and the four plug-in CA files
are written as one fsync'ed "..data" swap, and CA reports go back. That CA work is what is measured, so
none of it is stubbed. Only the manifest step is simulated, as in bench/convergence.py: a pushed intent is
decoded (its trust section is what the CA keeper works from) and ACKed, without rendering or writing
Istio manifests. Hub and trust manager are thin subclasses (`TimedHub`, `TimedTrust`) that timestamp
each change of the rotation phase and count and time the messages; they change no behaviour.

Once the fleet has converged and every cluster confirms the first root, each rotation runs what
`Hub._trust_request` runs for `meshfleet certs rotate-root`, without waiting for the hub's 1 s poll:
`trust.command("rotate-root")` (the new root's key and certificate are generated: "root generation"),
`_retrust()`, `_trust_tick()`. A phase's time runs from the moment the trust manager enters it to the
moment it enters the next one: AddingRoot ends when the last cluster reports trusting both roots,
ReissuingIntermediates when the last cluster reports an intermediate issued by the new root (one CSR
each), RemovingOldRoot when the last cluster reports the new root alone; "total" is AddingRoot entered ->
Idle again. With gracePeriod 0s no phase waits after its last confirmation. Agents react to a pushed
intent at once (Agent._sync's reader); their 1 s tick only drives renewals and retries. All agents run
in this one process, so their CA work (key generation, PEM parsing, signature checks, 4 fsync'ed files and
2 directory fsyncs per write) shares one GIL, two cores and asyncio's default thread pool
(min(32, CPUs + 4) threads), where a deployment runs one agent per cluster. With --algorithm RSA-4096
keep --agents small: every CA step of an agent (each push, and each 1 s tick) loads its ca-key.pem, and
loading an RSA-4096 key validates it, about 0.2 s holding the GIL, so the agents starve the hub.

signing: `TrustManager.sign` (the hub's path for one CSR message: check_intermediate_csr,
sign_intermediate, PEM of certificate and chain) over pre-generated agent CSRs, one thread, for EC-P256,
EC-P384 and RSA-4096 roots; the agents' intermediate keys use the root's algorithm, as the TrustPolicy
tells them to. Key and CSR generation are outside the timed part (their cost per CSR is printed apart).
RSA-4096 keys take about a second each to generate, so fewer distinct RSA CSRs are made and each is
signed several times (--rsa-keys). "pure" times the mgmt.certs calls alone, without TrustManager. Each
figure is the best of 3 alternating rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import gc
import logging
import os
import platform
import random
import resource
import shlex
import shutil
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cryptography
import yaml
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend

# run as `python bench/NAME.py`: the repository root, where the `bench` package lives, is not on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent.cacerts import CaMaterial, DirectoryCaStore
from agent.settings import AgentSettings
from agent.syncing import Agent, Applied
from bench import running
from meshfleet import pki
from meshfleet.demo import EXAMPLES, Fleet, demo_clusters
from meshfleet.intents import IntentError, decode
from meshfleet.v1 import hub_pb2
from mgmt import rotation
from mgmt.certs import IssuancePolicy, check_intermediate_csr, sign_intermediate
from mgmt.model import Meta, TrustPolicy
from mgmt.registry import Registry
from mgmt.roots import FileRootStore, RootStore
from mgmt.rotation import TrustState
from mgmt.serving import Hub, Session
from mgmt.settings import HubSettings
from mgmt.trust import ROTATE, Signed, TrustManager

TRUST_FILE = "trust.yaml"
INTERMEDIATE_TTL = "720h"
INTERMEDIATE_TTL_SECONDS = 720 * 3600
PHASES = (rotation.ADDING_ROOT, rotation.REISSUING, rotation.REMOVING_OLD_ROOT)
OTHER = "poll/timer"  # a phase change not caused by a message or by the bench's command


# rotation ------------------------------------------------------------------------------------------


class TimedStore(DirectoryCaStore):
    """The real plug-in CA directory, counting and timing its writes (files, fsyncs, the ..data swap)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes = 0
        self.write_seconds = 0.0

    def write(self, material: CaMaterial) -> None:
        t0 = time.perf_counter()
        try:
            super().write(material)
        finally:
            self.writes += 1
            self.write_seconds += time.perf_counter() - t0


class SimulatedAgent(Agent):
    """The real agent (CA keeper included) whose manifest step only decodes the intent and ACKs.

    It times its CA steps: the time each runs in its worker thread, and the time it waits for the
    agent's CA lock and a thread of the shared pool before running. The counters are per agent, and an
    agent runs one CA step at a time, so they need no lock.
    """

    def __init__(self, settings: AgentSettings, rng: Callable[[], float] = random.random, **adapters: Any) -> None:
        self.store = TimedStore(settings.cacerts_dir or settings.state_dir / "cacerts")
        super().__init__(settings, rng, ca_store=self.store, **adapters)
        self.ca_steps = 0
        self.ca_run = 0.0
        self.ca_wait = 0.0

    def reset(self) -> None:
        self.ca_steps, self.ca_run, self.ca_wait = 0, 0.0, 0.0
        self.store.writes, self.store.write_seconds = 0, 0.0

    async def handle_intent(self, push: hub_pb2.IntentPush) -> hub_pb2.AgentMessage:
        # inline: decoding blocks no more than a few hundred microseconds; the reader then runs the CA step
        try:
            intent = decode(push.version, push.content, push.content_type)
        except IntentError as exc:
            return hub_pb2.AgentMessage(nack=hub_pb2.Nack(version=push.version, error=str(exc)))
        self.applied = Applied(push.version, push.content)
        self.trust = intent.trust  # what Agent.apply keeps for the CA keeper
        return hub_pb2.AgentMessage(ack=hub_pb2.Ack(version=push.version))

    async def _ca(self, fn: Callable[..., list[hub_pb2.AgentMessage]], *args: Any) -> list[hub_pb2.AgentMessage]:
        ran = [0.0]

        def timed(*a: Any) -> list[hub_pb2.AgentMessage]:
            t = time.perf_counter()
            try:
                return fn(*a)
            finally:
                ran[0] = time.perf_counter() - t

        t0 = time.perf_counter()
        try:
            return await super()._ca(timed, *args)
        finally:
            self.ca_steps += 1
            self.ca_run += ran[0]
            self.ca_wait += time.perf_counter() - t0 - ran[0]


@dataclass(frozen=True)
class Transition:
    at: float  # perf_counter
    phase: str
    trigger: str  # the message kind being handled, "command", or OTHER


class TimedTrust(TrustManager):
    """The real trust manager, plus a timestamp of every phase change and per-phase counts of CSRs and reports."""

    def __init__(self, registry: Registry, store: RootStore, api: Any = None) -> None:
        self._state: TrustState | None = None
        self.transitions: list[Transition] = []
        self.trigger = "startup"
        self.idle = asyncio.Event()
        self.csrs: Counter[str] = Counter()  # phase -> CSRs signed in it
        self.reports_seen: Counter[str] = Counter()  # phase -> CaReports received in it
        self.reports_changed = 0
        self.sign_seconds = 0.0
        self.report_seconds = 0.0
        super().__init__(registry, store, api)

    @property
    def state(self) -> TrustState | None:
        return self._state

    @state.setter
    def state(self, value: TrustState | None) -> None:
        old, self._state = self._state, value
        if value is not None and (old is None or (old.phase, old.bundle) != (value.phase, value.bundle)):
            self.transitions.append(Transition(time.perf_counter(), value.phase, self.trigger))
            if value.phase == rotation.IDLE:
                self.idle.set()

    def reset(self) -> None:
        self.transitions.clear()
        self.idle.clear()
        self.csrs.clear()
        self.reports_seen.clear()
        self.reports_changed = 0
        self.sign_seconds = 0.0
        self.report_seconds = 0.0

    def _phase(self) -> str:
        return self._state.phase if self._state else "-"

    def sign(self, cluster: str, request: hub_pb2.IntermediateRequest) -> Signed:
        t0 = time.perf_counter()
        signed = super().sign(cluster, request)
        self.sign_seconds += time.perf_counter() - t0
        if not signed.message.error:
            self.csrs[self._phase()] += 1
        return signed

    def report(self, cluster: str, report: hub_pb2.CaReport) -> bool:
        self.reports_seen[self._phase()] += 1
        t0 = time.perf_counter()
        changed = super().report(cluster, report)
        self.report_seconds += time.perf_counter() - t0
        self.reports_changed += changed
        return changed


class TimedHub(Hub):
    """The real hub with a TimedTrust, timing the handling of each message kind and the intent re-publishing."""

    def __init__(self, settings: HubSettings) -> None:
        super().__init__(settings)
        self.timed = TimedTrust(self.registry, self.trust.store, self.trust.api)
        self.trust = self.timed
        self.handled: Counter[str] = Counter()
        self.handle_seconds: defaultdict[str, float] = defaultdict(float)
        self.retrusts = 0
        self.retrust_seconds = 0.0
        self.status_saves = 0
        self.status_seconds = 0.0

    def reset(self) -> None:
        self.timed.reset()
        self.handled.clear()
        self.handle_seconds.clear()
        self.retrusts = 0
        self.retrust_seconds = 0.0
        self.status_saves = 0
        self.status_seconds = 0.0

    def _save_trust_status(self) -> None:
        t0 = time.perf_counter()
        super()._save_trust_status()
        self.status_saves += 1
        self.status_seconds += time.perf_counter() - t0

    def _handle(self, session: Session, msg: hub_pb2.AgentMessage) -> None:
        kind = msg.WhichOneof("kind") or "?"
        self.timed.trigger = kind
        t0 = time.perf_counter()
        try:
            super()._handle(session, msg)
        finally:
            self.handle_seconds[kind] += time.perf_counter() - t0
            self.handled[kind] += 1
            self.timed.trigger = OTHER

    def _retrust(self, skip: Iterable[str] = ()) -> None:
        t0 = time.perf_counter()
        super()._retrust(skip)
        self.retrusts += 1
        self.retrust_seconds += time.perf_counter() - t0


@dataclass
class Rotation:
    generate: float  # command called -> AddingRoot entered (new root key, certificate, store)
    phases: dict[str, float]  # phase -> seconds from entering it to entering the next
    total: float  # AddingRoot entered -> Idle
    cpu: float  # process CPU seconds (all threads) from the command to Idle
    csrs: dict[str, int]  # phase -> CSRs signed in it
    reports: dict[str, int]  # phase -> CaReports received in it
    reports_changed: int
    handled: dict[str, int]  # message kind -> count, command to Idle
    handle_seconds: dict[str, float]
    sign_seconds: float
    report_seconds: float  # TrustManager.report (hub.db write of the report included)
    status_saves: int  # Hub._save_trust_status calls (TrustManager.status() of every cluster, hub.db write)
    status_seconds: float
    retrusts: int
    retrust_seconds: float
    triggers: list[str]  # what caused each phase change after AddingRoot
    ca_steps: int  # agents' CA steps (after a push, an answer, or on their 1 s tick), summed over agents
    ca_run: float  # seconds they ran in worker threads, summed
    ca_wait: float  # seconds they waited for the agent's CA lock and a pool thread, summed
    writes: int  # plug-in CA directory writes, summed over agents
    write_seconds: float


@dataclass
class RotationResult:
    rotations: list[Rotation]
    startup: float  # fleet start -> converged and every cluster confirming the first root
    ca_ready: float  # of which: converged -> every cluster confirming
    initial_csrs: int


def trust_policy_text(algorithm: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "meshfleet.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": "mesh"},
        "spec": {"root": {"generate": {"algorithm": algorithm, "validity": "87600h"}},
                 "intermediate": {"ttl": INTERMEDIATE_TTL}, "rotation": {"gracePeriod": "0s"}},
    }, sort_keys=False)


def ca_ready(fleet: Fleet) -> bool:
    """Idle, and every cluster's last CA report confirms it (trusts the root alone, intermediate under it)."""
    state = fleet.hub.trust.state
    return state is not None and state.phase == rotation.IDLE and fleet.ca_ready()


async def wait_until(fleet: Fleet, done: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not done():
        for name, task in fleet.tasks.items():
            if task.done() and not task.cancelled() and task.exception():
                raise RuntimeError(f"agent {name} stopped: {task.exception()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {within:.0f} s")
        await asyncio.sleep(0.02)


def verify_stores(fleet: Fleet, root: str) -> list[str]:
    """Clusters whose plug-in CA files on disk do not hold `root` alone with an intermediate it issued."""
    wrong = []
    for name, agent in fleet.agents.items():
        store = agent.ca.store
        assert isinstance(store, DirectoryCaStore)
        material = store.read()
        if material is None:
            wrong.append(name)
            continue
        roots = pki.load_certs(material.root_cert)
        cert = pki.load_certs(material.ca_cert)[0]
        if [pki.fingerprint(r) for r in roots] != [root] or not pki.issued_by(cert, roots[0]):
            wrong.append(name)
    return wrong


async def one_rotation(fleet: Fleet, hub: TimedHub, number: int, limit: float) -> Rotation:
    trust = hub.timed
    before = trust.state
    assert before is not None
    agents = [a for a in fleet.agents.values() if isinstance(a, SimulatedAgent)]
    hub.reset()
    for agent in agents:
        agent.reset()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    # what Hub._trust_request does with a queued `meshfleet certs rotate-root`
    trust.trigger = "command"
    try:
        trust.command(ROTATE)
        hub._retrust()
        hub._trust_tick()
    finally:
        trust.trigger = OTHER
    try:
        async with asyncio.timeout(limit):
            await trust.idle.wait()
    except TimeoutError:
        st = trust.status()
        waiting = st["waiting"]
        sample = "; ".join(f"{c}: {why}" for c, why in list(waiting.items())[:3])
        raise RuntimeError(f"rotation {number}: still in phase {st['phase']} after {limit:.0f} s, "
                           f"{len(waiting)} cluster(s) holding it ({sample})") from None
    cpu = time.process_time() - cpu0
    after = trust.state
    assert after is not None
    entered = {t.phase: t.at for t in trust.transitions}
    order = [t.phase for t in trust.transitions]
    if order != [*PHASES, rotation.IDLE]:
        raise RuntimeError(f"rotation {number}: unexpected phases {' -> '.join(order)}")
    if after.active == before.active or after.bundle != (after.active,):
        raise RuntimeError(f"rotation {number}: ended with root {after.active[:12]}, bundle {after.bundle}")
    ends = [*PHASES[1:], rotation.IDLE]
    return Rotation(
        generate=entered[rotation.ADDING_ROOT] - t0,
        phases={p: entered[e] - entered[p] for p, e in zip(PHASES, ends, strict=True)},
        total=entered[rotation.IDLE] - entered[rotation.ADDING_ROOT],
        cpu=cpu,
        csrs=dict(trust.csrs), reports=dict(trust.reports_seen), reports_changed=trust.reports_changed,
        handled=dict(hub.handled), handle_seconds=dict(hub.handle_seconds), sign_seconds=trust.sign_seconds,
        report_seconds=trust.report_seconds, status_saves=hub.status_saves, status_seconds=hub.status_seconds,
        retrusts=hub.retrusts, retrust_seconds=hub.retrust_seconds,
        triggers=[t.trigger for t in trust.transitions[1:]],
        ca_steps=sum(a.ca_steps for a in agents), ca_run=sum(a.ca_run for a in agents),
        ca_wait=sum(a.ca_wait for a in agents), writes=sum(a.store.writes for a in agents),
        write_seconds=sum(a.store.write_seconds for a in agents),
    )


async def run_rotations(workdir: Path, agents: int, rotations: int, algorithm: str, heartbeat: float,
                        pause: float, limit: float) -> RotationResult:
    policies = workdir / "policies"
    shutil.copytree(EXAMPLES / "policies", policies)
    (policies / TRUST_FILE).write_text(trust_policy_text(algorithm))
    # agents check their inventories (and CA) at the production default (1 s), as they heartbeat at it (5 s);
    # the hub polls its policies and registry at its production default (1 s) too
    fleet = Fleet(workdir, demo_clusters(agents, workdir), policies, heartbeat=heartbeat, grace=3 * heartbeat,
                  poll=AgentSettings.poll_interval, agent_class=SimulatedAgent)
    fleet.hub.registry.close()
    hub = TimedHub(dataclasses.replace(fleet.hub.settings, poll_interval=HubSettings.poll_interval))
    fleet.hub = hub
    serving_log = logging.getLogger("mgmt.serving")
    startup_filter = running.StartupPolicyNoise()
    serving_log.addFilter(startup_filter)
    started = time.perf_counter()
    await fleet.start()
    try:
        if not await fleet.wait_converged(limit):
            raise RuntimeError(f"the fleet of {agents} agents did not converge within {limit:.0f} s")
        serving_log.removeFilter(startup_filter)
        converged = time.perf_counter()
        await wait_until(fleet, lambda: ca_ready(fleet), limit,
                         f"not every one of the {agents} clusters confirmed the first root")
        ready = time.perf_counter()
        initial_csrs = hub.timed.signed
        gc.collect()  # as `meshfleet hub` does once started
        gc.freeze()
        done = []
        for number in range(1, rotations + 1):
            await asyncio.sleep(pause)
            done.append(await one_rotation(fleet, hub, number, limit))
            state = hub.timed.state
            assert state is not None
            # the last intents (bundle of the new root alone) ACKed, and the files on disk as reported
            await wait_until(fleet, lambda: fleet.converged() and ca_ready(fleet), limit,
                             f"rotation {number}: the fleet did not settle after Idle")
            wrong = await asyncio.to_thread(verify_stores, fleet, state.active)
            if wrong:
                raise RuntimeError(f"rotation {number}: {len(wrong)} cluster(s) do not hold root "
                                   f"{state.active[:12]} alone on disk: {', '.join(wrong[:5])}")
            print(f"  rotation {number}: {done[-1].total:.2f} s", flush=True)
        return RotationResult(done, ready - started, ready - converged, initial_csrs)
    finally:
        serving_log.removeFilter(startup_filter)
        await fleet.stop()


# signing -------------------------------------------------------------------------------------------


@dataclass
class Signing:
    algorithm: str
    distinct: int  # agent keys and CSRs generated
    signatures: int
    keygen: float  # seconds for all keys + CSRs (not timed below)
    full: float  # seconds for `signatures` TrustManager.sign calls (best round)
    pure: float  # seconds for as many check_intermediate_csr + sign_intermediate + PEM (best round)
    answer_bytes: int  # of one IntermediateIssued message


def measure_signing(workdir: Path, algorithm: str, signatures: int, distinct: int, rounds: int = 3) -> Signing:
    """Signatures by a TrustManager with a generated `algorithm` root, over `distinct` pre-generated CSRs."""
    state = workdir / f"signing-{algorithm}"
    registry = Registry(state)
    try:
        manager = TrustManager(registry, FileRootStore(state / "roots"))
        policy = TrustPolicy(Meta("TrustPolicy", "", "bench"), algorithm=algorithm,
                             intermediate_ttl=float(INTERMEDIATE_TTL_SECONDS), grace_period=0.0)
        manager.configure([policy])
        if manager.problems or manager.state is None:
            raise RuntimeError(f"signing {algorithm}: {'; '.join(manager.problems) or 'no root'}")
        t0 = time.perf_counter()
        clusters = [f"cluster-{i}" for i in range(distinct)]
        requests = [hub_pb2.IntermediateRequest(
            request_id=f"{i:032x}", ttl_seconds=INTERMEDIATE_TTL_SECONDS,
            csr_pem=pki.intermediate_csr(pki.generate_key(algorithm), c, policy.trust_domain, policy.path_length))
            for i, c in enumerate(clusters)]
        keygen = time.perf_counter() - t0

        warm = manager.sign(clusters[0], requests[0])  # loads the root key from its store once, as the hub does
        if warm.message.error:
            raise RuntimeError(f"signing {algorithm}: {warm.message.error}")
        root = FileRootStore(state / "roots").load(manager.state.active)
        assert root is not None
        issuance = IssuancePolicy(policy.trust_domain, dt.timedelta(seconds=policy.intermediate_ttl),
                                  policy.path_length)
        ttl = dt.timedelta(seconds=INTERMEDIATE_TTL_SECONDS)
        now = dt.datetime.now(dt.UTC)

        def full_path() -> float:
            t0 = time.perf_counter()
            for i in range(signatures):
                signed = manager.sign(clusters[i % distinct], requests[i % distinct])
                if signed.message.error:
                    raise RuntimeError(f"signing {algorithm}: {signed.message.error}")
            return time.perf_counter() - t0

        def pure_path() -> float:
            t0 = time.perf_counter()
            for i in range(signatures):
                cluster, request = clusters[i % distinct], requests[i % distinct]
                csr = check_intermediate_csr(request.csr_pem, cluster, issuance)
                cert = sign_intermediate(root, csr, cluster, issuance, now, ttl)
                pki.cert_pem(cert) + pki.cert_pem(root.cert)
            return time.perf_counter() - t0

        # best of a few alternating rounds, as timeit does: the least disturbed by the rest of the machine
        fulls, pures = [], []
        for _ in range(rounds):
            fulls.append(full_path())
            pures.append(pure_path())
        return Signing(algorithm, distinct, signatures, keygen, min(fulls), min(pures), warm.message.ByteSize())
    finally:
        registry.close()


# report --------------------------------------------------------------------------------------------


def three(values: Sequence[float]) -> str:
    """min / median / max, in seconds."""
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def per_phase(counts: Sequence[Mapping[str, int]]) -> str:
    return " / ".join("+".join(str(c.get(p, 0)) for c in counts) for p in PHASES)


def rows_out(rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def report_rotations(args: argparse.Namespace, res: RotationResult) -> None:
    rs = res.rotations
    print(f"\nroot rotation: {args.agents} clusters, {args.algorithm} root and intermediates, gracePeriod 0s, "
          f"intermediate ttl {INTERMEDIATE_TTL}, {len(rs)} rotation(s)")
    print("  real Hub + real Agents' CA keeper (key, CSR, verify, DirectoryCaStore with fsync), manifests not")
    print("  rendered; all in one process (one GIL, two cores); phase = entered -> next phase entered\n")
    print("  " + " ".join(f"{h:>12}" for h in ("rotation", "root gen", "AddingRoot", "Reissuing", "RemovingOld",
                                                  "total (s)")))
    for i, r in enumerate(rs, 1):
        cells = [f"{r.generate:.3f}", *(f"{r.phases[p]:.3f}" for p in PHASES), f"{r.total:.3f}"]
        print("  " + " ".join(f"{c:>12}" for c in [str(i), *cells]))
    print()
    handled: Counter[str] = Counter()
    seconds: defaultdict[str, float] = defaultdict(float)
    for r in rs:
        handled.update(r.handled)
        for kind, spent in r.handle_seconds.items():
            seconds[kind] += spent
    csrs = sum(sum(r.csrs.values()) for r in rs)
    rows = [
        ("phase seconds, min / median / max", ""),
        ("  root generation (command)", three([r.generate for r in rs])),
        *((f"  {p}", three([r.phases[p] for r in rs])) for p in PHASES),
        ("  total (AddingRoot -> Idle)", three([r.total for r in rs])),
        ("CSRs signed per rotation (expected " + str(args.agents) + ")", ", ".join(str(sum(r.csrs.values()))
                                                                              for r in rs)),
        ("  per phase (Adding / Reissuing / Removing)", per_phase([r.csrs for r in rs])),
        ("CaReports handled per rotation (changed)", ", ".join(f"{sum(r.reports.values())} ({r.reports_changed})"
                                                               for r in rs)),
        ("  per phase (Adding / Reissuing / Removing)", per_phase([r.reports for r in rs])),
        ("phase changes caused by", ", ".join(f"{k} {v}" for k, v in
                                              sorted(Counter(t for r in rs for t in r.triggers).items()))),
        ("intent re-publishings (all clusters) per rotation",
         f"{statistics.median([r.retrusts for r in rs]):.0f}, "
         f"{1000 * sum(r.retrust_seconds for r in rs) / max(1, sum(r.retrusts for r in rs)):.1f} ms each"),
        ("hub on its loop per message, mean ms", ", ".join(
            f"{k} {1000 * seconds[k] / handled[k]:.2f} (x{handled[k] // len(rs)})" for k in sorted(handled))),
        ("  of a CSR: TrustManager.sign, mean ms", f"{1000 * sum(r.sign_seconds for r in rs) / max(1, csrs):.2f}"),
        ("  of a CaReport: TrustManager.report, mean ms",
         f"{1000 * sum(r.report_seconds for r in rs) / max(1, sum(sum(r.reports.values()) for r in rs)):.2f}"),
        ("  Hub._save_trust_status per rotation", f"{statistics.median([r.status_saves for r in rs]):.0f} calls, "
         f"{1000 * sum(r.status_seconds for r in rs) / max(1, sum(r.status_saves for r in rs)):.2f} ms each"),
        ("  busy on CSRs + CaReports per rotation (s)", three([
            sum(v for k, v in r.handle_seconds.items() if k in ("csr", "ca")) for r in rs])),
        ("agents' CA steps per rotation (all agents)", f"{statistics.median([r.ca_steps for r in rs]):.0f}, mean "
         f"{1000 * sum(r.ca_run for r in rs) / max(1, sum(r.ca_steps for r in rs)):.1f} ms in a thread + "
         f"{1000 * sum(r.ca_wait for r in rs) / max(1, sum(r.ca_steps for r in rs)):.1f} ms waiting for it"),
        ("  plug-in CA directory writes per rotation", f"{statistics.median([r.writes for r in rs]):.0f}, mean "
         f"{1000 * sum(r.write_seconds for r in rs) / max(1, sum(r.writes for r in rs)):.1f} ms each "
         "(4 files + 2 directory fsyncs)"),
        ("process CPU / wall during rotations", f"{sum(r.cpu for r in rs):.2f} s / "
                                                f"{sum(r.generate + r.total for r in rs):.2f} s"),
        ("fleet start -> converged and CA ready (s)", f"{res.startup:.2f} (CA ready {res.ca_ready:.2f} s after "
                                                      f"convergence; {res.initial_csrs} CSRs)"),
    ]
    rows_out(rows)


def report_signing(results: Sequence[Signing]) -> None:
    print("\nhub CSR signing, one thread (TrustManager.sign: check CSR, sign, PEM certificate + chain), best of 3 "
          "rounds\n")
    print("  " + " ".join(f"{h:>14}" for h in ("root", "signatures", "distinct CSRs", "sign/s", "ms each",
                                               "pure sign/s", "agent key+CSR")))
    for s in results:
        cells = [s.algorithm, str(s.signatures), str(s.distinct), f"{s.signatures / s.full:.0f}",
                 f"{1000 * s.full / s.signatures:.2f}", f"{s.signatures / s.pure:.0f}",
                 f"{1000 * s.keygen / s.distinct:.1f} ms"]
        print("  " + " ".join(f"{c:>14}" for c in cells))
    print("  (pure: mgmt.certs.check_intermediate_csr + sign_intermediate + PEM, without TrustManager;")
    print("   agent key+CSR: generating one intermediate key and its CSR, outside the timed part;")
    print(f"   one answer (IntermediateIssued) is {', '.join(f'{s.answer_bytes} B ({s.algorithm})' for s in results)})")


def machine() -> list[tuple[str, str]]:
    return [
        ("command", shlex.join(sys.orig_argv)),
        ("machine", f"{os.cpu_count()} CPU(s), {running.cpu_model()}, {platform.system()} {platform.release()}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}, cryptography "
                   f"{cryptography.__version__}, {openssl_backend.openssl_version_text()}"),
    ]


async def main_async(args: argparse.Namespace, workdir: Path) -> None:
    if args.rotations:
        print(f"rotation: starting a hub and {args.agents} agents in {workdir} ...", flush=True)
        res = await run_rotations(workdir, args.agents, args.rotations, args.algorithm, args.heartbeat,
                                  args.pause, args.timeout)
    signing = []
    if args.signatures:
        print("signing: generating agent keys and CSRs, then signing ...", flush=True)
        for algorithm in pki.ALGORITHMS:
            rsa = algorithm.startswith("RSA")
            count = args.rsa_signatures if rsa else args.signatures
            distinct = min(count, args.rsa_keys if rsa else count)
            if count == 0:
                continue  # e.g. --rsa-signatures 0: that algorithm is not measured
            signing.append(await asyncio.to_thread(measure_signing, workdir, algorithm, count, distinct))
    print()
    rows_out(machine())
    if args.rotations:
        report_rotations(args, res)
    if signing:
        report_signing(signing)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of the process (hub and {args.agents} agents): {rss:.0f} MiB")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--agents", type=int, default=100, help="number of clusters / agents (%(default)s)")
    p.add_argument("--rotations", type=int, default=3, help="root rotations measured; 0: none (%(default)s)")
    p.add_argument("--algorithm", choices=pki.ALGORITHMS, default=pki.DEFAULT_ALGORITHM,
                   help="the TrustPolicy's key algorithm in the rotation (%(default)s)")
    p.add_argument("--signatures", type=int, default=1000,
                   help="signatures timed per EC root; 0: no signing figures (%(default)s)")
    p.add_argument("--rsa-signatures", type=int, default=200, help="signatures timed for RSA-4096 (%(default)s)")
    p.add_argument("--rsa-keys", type=int, default=10,
                   help="distinct RSA-4096 agent keys and CSRs, signed in turn (%(default)s)")
    p.add_argument("--workdir", type=Path, help="keep state in a new directory under DIR "
                   "(default: a temporary directory, removed at the end)")
    p.add_argument("--heartbeat", type=float, default=HubSettings.heartbeat_interval,
                   help="hub and agent heartbeat interval, s (%(default)s, the production default)")
    p.add_argument("--pause", type=float, default=0.5, help="pause before each rotation, s (%(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="bound of each wait, s (%(default)s)")
    args = p.parse_args(argv)
    if args.agents < 1 or args.rotations < 0 or args.signatures < 0 or args.rsa_signatures < 0 or args.rsa_keys < 1:
        p.error("--agents and --rsa-keys must be at least 1, --rotations and --*signatures at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return running.run("rotation", parse_args(argv), main_async)


if __name__ == "__main__":
    sys.exit(main())
