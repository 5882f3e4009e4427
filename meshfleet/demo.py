"""`meshfleet demo`: a hub and N agents on 127.0.0.1, in one process, no cluster needed.

Runs the same code paths as a real deployment (Register with join tokens, mutual
TLS Sync, translation, rendering, the directory sink); only the outer adapters
are the embedded ones: policies from a directory, services from inventory files,
manifests to DIR/clusters/<cluster>/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.settings import AgentSettings
from agent.syncing import Agent
from mgmt import rotation
from mgmt.enrollment import add_cluster
from mgmt.roots import RootStore
from mgmt.serving import Hub
from mgmt.settings import HubSettings
from mgmt.status import table
from mgmt.watching import PolicySource

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXTRA_REGIONS = ("us-west", "eu-central", "ap-northeast", "sa-east", "ca-central")

log = logging.getLogger("meshfleet.demo")


@dataclass(frozen=True)
class DemoCluster:
    name: str
    region: str
    zone: str
    network: str
    inventory: Path
    labels: Mapping[str, str] = field(default_factory=dict)


def demo_clusters(count: int, workdir: Path, examples: Path = EXAMPLES) -> list[DemoCluster]:
    """The first `count` example clusters; beyond those, new ones with copies of their inventories."""
    base = yaml.safe_load((examples / "clusters.yaml").read_text())
    out = []
    for i in range(count):
        b = base[i % len(base)]
        if i < len(base):
            out.append(DemoCluster(b["name"], b["region"], b["zone"], b["network"],
                                   examples / "inventories" / f"{b['name']}.yaml", dict(b.get("labels") or {})))
            continue
        region = EXTRA_REGIONS[(i - len(base)) % len(EXTRA_REGIONS)]
        name = f"{region}-{i + 1}"
        inv = yaml.safe_load((examples / "inventories" / f"{b['name']}.yaml").read_text())
        inv["gateway"]["address"] = f"eastwest.{name}.meshfleet.example"
        path = workdir / "inventories" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(inv))
        labels = {**(b.get("labels") or {}), "region": region}
        out.append(DemoCluster(name, region, f"{region}-a", f"net-{region}", path, labels))
    return out


class Gateway:
    """A stand-in for a cluster's east-west gateway: a TCP port on 127.0.0.1 that accepts and hangs up.

    What the agents' probes connect to; closing it is the data-plane side of an outage.
    """

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        # the same port again after a close (asyncio sets SO_REUSEADDR), so intents need not change
        self._server = await asyncio.start_server(hang_up, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def open_now(self) -> bool:
        return self._server is not None


class Fleet:
    """A hub and its agents in this event loop; used by the demo, tests and benchmarks."""

    def __init__(self, workdir: Path, clusters: list[DemoCluster], policies: Path | None,
                 heartbeat: float = 1.0, grace: float = 5.0, agent_class: type[Agent] = Agent,
                 poll: float = 0.2, source: PolicySource | None = None, roots: RootStore | None = None,
                 kube_api: Any = None, gateways: bool = False, removal_grace: float = 600.0) -> None:
        """`poll`: how often the hub checks its policies and agents their inventories (seconds);
        `source` replaces the policy directory (e.g. a CR watch); `roots` and `kube_api` are the hub's
        root store and API client in Kubernetes mode. With `gateways`, each cluster's east-west gateway is
        a real TCP port on 127.0.0.1 (opened by `start`) that the agents probe every heartbeat; without,
        the inventories' gateway names resolve nowhere and the agents do not probe."""
        self.workdir = workdir
        self.clusters = clusters
        self.gateways: dict[str, Gateway] = {c.name: Gateway() for c in clusters} if gateways else {}
        self.removal_grace = removal_grace
        self.hub = Hub(HubSettings(state_dir=workdir / "hub", listen="127.0.0.1:0",
                                   bootstrap_listen="127.0.0.1:0", policies_dir=policies,
                                   heartbeat_interval=heartbeat, liveness_grace=grace,
                                   stream_timeout=4 * heartbeat, poll_interval=poll, failover_settle=grace),
                       source=source,
                       roots=roots, kube_api=kube_api)
        self.heartbeat = heartbeat
        self.poll = poll
        self.agent_class = agent_class
        self.agents: dict[str, Agent] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.tokens: dict[str, str] = {}

    def output(self, cluster: str) -> Path:
        return self.workdir / "clusters" / cluster

    async def start(self, agents: Iterable[str] | None = None) -> None:
        """Start the hub, enroll every cluster, and start the agents named (default: all)."""
        for gateway in self.gateways.values():
            await gateway.open()
        self.clusters = [self._on_loopback(c) for c in self.clusters]
        await self.hub.start()
        for c in self.clusters:
            if self.hub.registry.cluster(c.name) is None:
                issued = add_cluster(self.hub.registry, self.hub.settings.state_dir, c.name, c.region, c.zone,
                                     c.network, labels=c.labels)
                self.tokens[c.name] = str(issued.token)
        self.hub.refresh_clusters()
        self.hub.mark_dirty()
        for name in [c.name for c in self.clusters] if agents is None else agents:
            self.start_agent(name)

    def _on_loopback(self, c: DemoCluster) -> DemoCluster:
        """The cluster with an inventory whose gateway is its loopback Gateway (unchanged without gateways)."""
        gateway = self.gateways.get(c.name)
        if gateway is None or c.inventory.parent == self.workdir / "gateways":
            return c
        inv = yaml.safe_load(c.inventory.read_text())
        inv["gateway"] = {"address": "127.0.0.1", "port": gateway.port}
        path = self.workdir / "gateways" / f"{c.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(inv))
        return DemoCluster(c.name, c.region, c.zone, c.network, path, c.labels)

    def agent_settings(self, cluster: str) -> AgentSettings:
        c = next(x for x in self.clusters if x.name == cluster)
        return AgentSettings(hub=f"127.0.0.1:{self.hub.port}", hub_bootstrap=f"127.0.0.1:{self.hub.bootstrap_port}",
                             cluster=c.name, token=self.tokens.get(c.name), state_dir=self.workdir / "agents" / c.name,
                             inventory=c.inventory, output=self.output(c.name), heartbeat_interval=self.heartbeat,
                             stream_timeout=4 * self.heartbeat, backoff_initial=0.1, backoff_max=2.0,
                             poll_interval=self.poll, removal_grace=self.removal_grace,
                             probe_interval=self.heartbeat if self.gateways else 0.0,
                             probe_timeout=min(1.0, self.heartbeat))

    def start_agent(self, cluster: str, **adapters: Any) -> Agent:
        """Start `cluster`'s agent; `adapters` (sink=, discovery=) replace the embedded ones."""
        agent = self.agent_class(self.agent_settings(cluster), **adapters)
        self.agents[cluster] = agent
        self.tasks[cluster] = asyncio.create_task(agent.run(), name=f"agent-{cluster}")
        return agent

    async def stop_agent(self, cluster: str) -> None:
        task = self.tasks.pop(cluster)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stop(self) -> None:
        for name in list(self.tasks):
            await self.stop_agent(name)
        # let the hub see the streams end before it stops serving (no handler left to cancel mid-stream)
        await _until(lambda: not self.hub.sessions, 2.0)
        await self.hub.stop(grace=0)
        for gateway in self.gateways.values():
            await gateway.close()

    def converged(self) -> bool:
        """Every agent has ACKed the hub's current intent for its cluster, after its discovery arrived."""
        hub = self.hub
        if hub._recompute_handle is not None:
            return False
        for c in self.clusters:
            intent, st = hub.intents.get(c.name), hub.statuses.get(c.name)
            if intent is None or st is None or c.name not in hub.discovery or c.name not in hub.sessions:
                return False
            if st.acked_version != intent.version:
                return False
        return True

    def ca_ready(self) -> bool:
        """Every cluster holds the trust bundle and an intermediate from the signing root (True without TrustPolicy)."""
        trust = self.hub.trust
        if trust.intent() is None or trust.state is None:
            return True
        return all(rotation.confirms(trust.state, trust.reports.get(c.name)) is None for c in self.clusters)

    async def wait_converged(self, within: float, ca: bool = False) -> bool:
        """Wait until every agent ACKed its intent (and, with `ca`, until `ca_ready`); False on timeout."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for name, task in self.tasks.items():
                if task.done() and not task.cancelled() and task.exception():
                    raise RuntimeError(f"agent {name} stopped: {task.exception()}")
            if self.converged() and (not ca or self.ca_ready()):
                return True
            await asyncio.sleep(0.05)
        return False

    def settled(self, clusters: Iterable[str]) -> bool:
        """No translation pending, and each named cluster has ACKed the hub's current intent for it."""
        hub = self.hub
        if hub._recompute_handle is not None:
            return False
        for name in clusters:
            intent, st = hub.intents.get(name), hub.statuses.get(name)
            if intent is None or st is None or st.acked_version != intent.version:
                return False
        return True

    def evicted(self) -> frozenset[str]:
        """The clusters the intents the hub last translated leave out of some destination (failover)."""
        snapshot = self.hub._last_snapshot
        return frozenset().union(*snapshot.evicted.values()) if snapshot is not None else frozenset()

    def rows(self) -> list[list[str]]:
        rows = []
        for c in self.clusters:
            st = self.hub.statuses.get(c.name)
            agent = self.agents.get(c.name)
            rows.append([c.name, c.region, st.connection if st else "-",
                         (st.acked_version[:12] if st and st.acked_version else "-"),
                         str(agent.objects if agent else 0),
                         (st.nack_error if st and st.nack_error else "")])
        return rows


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run a hub and several agents on 127.0.0.1 until they converge")
    p.add_argument("--clusters", type=int, default=3, help="number of clusters (default %(default)s)")
    p.add_argument("--workdir", type=Path, help="where state and manifests go (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory of a temporary run")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for convergence")
    p.add_argument("--verbose", action="store_true", help="show the hub's and agents' log (default: warnings)")
    p.add_argument("--outage", metavar="REGION",
                   help="after converging, stop the region's agents and east-west gateways, show the other clusters "
                        "failing over, then bring the region back and show its traffic restored")
    p.set_defaults(func=run_demo)


async def _demo(args: argparse.Namespace, workdir: Path) -> int:
    if args.clusters < 1:
        print("error: --clusters must be at least 1", file=sys.stderr)
        return 2
    if not (EXAMPLES / "clusters.yaml").exists():
        print(f"error: example data not found at {EXAMPLES}; run the demo from a source checkout "
              "installed with `pip install -e .`", file=sys.stderr)
        return 1
    policies = workdir / "policies"
    if not policies.exists():
        shutil.copytree(EXAMPLES / "policies", policies)
    clusters = demo_clusters(args.clusters, workdir)
    regions = sorted({c.region for c in clusters})
    if args.outage is not None and (args.outage not in regions or len(regions) < 2):
        print(f"error: --outage {args.outage}: the demo's regions are {', '.join(regions)}; name one of them "
              "(and keep at least one other)", file=sys.stderr)
        return 2
    fleet = Fleet(workdir, clusters, policies, gateways=args.outage is not None)
    started = time.monotonic()
    await fleet.start()
    try:
        ok = await fleet.wait_converged(args.timeout, ca=True)
        elapsed = time.monotonic() - started
        print(table(["CLUSTER", "REGION", "CONNECTED", "VERSION ACKED", "OBJECTS WRITTEN", "LAST NACK"],
                    fleet.rows()))
        if not ok:
            print(f"\nerror: the fleet did not converge within {args.timeout:g} s (see the table and the log)",
                  file=sys.stderr)
            return 1
        print(f"\nconverged: {len(fleet.clusters)} clusters ACKed their current intent in {elapsed:.2f} s")
        trust = fleet.hub.trust
        if trust.intent() is not None and trust.state is not None and trust.policy is not None:
            print(f"mesh CA ({trust.policy.meta.ref}): root {trust.state.active[:16]} ({trust.policy.algorithm}); "
                  f"{trust.signed} intermediate CA(s) signed from CSRs, each key made by its agent")
        for p in fleet.hub.problems:
            print(f"policy {p.policy}: {p.message}")
        sample = fleet.output(fleet.clusters[-1].name) / "bookinfo" / "virtualservice-reviews-global.yaml"
        if sample.exists():
            print(f"\n--- {sample.relative_to(workdir)} (TrafficPolicy bookinfo/reviews-split) ---")
            print(sample.read_text().rstrip())
        kept = "" if args.workdir or args.keep else "  (removed at exit: pass --keep or --workdir to keep them)"
        print(f"\nmanifests: {workdir / 'clusters'}/<cluster>/{kept}\npolicies:  {policies}")
        if trust.intent() is not None:
            print(f"cacerts:   {workdir / 'agents'}/<cluster>/cacerts/ (Istio's plug-in CA files; see "
                  f"`meshfleet certs status --state-dir {workdir / 'hub'}`)")
        if args.outage is not None:
            return await outage(fleet, args.outage, args.timeout)
        return 0
    finally:
        await fleet.stop()


def _weights(fleet: Fleet, cluster: str) -> str:
    """The reviews route weights in `cluster`'s rendered VirtualService, as `cluster=weight` pairs."""
    path = fleet.output(cluster) / "bookinfo" / "virtualservice-reviews-global.yaml"
    if not path.exists():
        return "-"
    doc = yaml.safe_load(path.read_text())
    route = doc["spec"]["http"][0]["route"]
    return " ".join(f"{r['destination'].get('subset', '?')}={r.get('weight', 100)}" for r in route)


def _endpoints(fleet: Fleet, cluster: str) -> str:
    path = fleet.output(cluster) / "bookinfo" / "serviceentry-reviews-global.yaml"
    if not path.exists():
        return "-"
    doc = yaml.safe_load(path.read_text())
    return " ".join(sorted({e["labels"]["meshfleet.io/cluster"] for e in doc["spec"]["endpoints"]
                            if "meshfleet.io/cluster" in e["labels"]}))


async def _until(condition: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return False


async def outage(fleet: Fleet, region: str, within: float) -> int:
    """Stop a region, watch the others fail over, bring it back, watch it restored; print each step's timing."""
    hub = fleet.hub
    lost = [c.name for c in fleet.clusters if c.region == region]
    survivors = [c.name for c in fleet.clusters if c.region != region]
    watch = survivors[0]
    grace = hub.settings.liveness_grace
    print(f"\n=== outage of region {region} ({', '.join(lost)}); liveness grace {grace:g} s ===")
    print(f"  before: {watch} sends reviews to {_weights(fleet, watch)}; endpoints {_endpoints(fleet, watch)}")
    t0 = time.monotonic()

    def at() -> str:
        return f"t+{time.monotonic() - t0:6.2f} s"

    last_heard = max(hub.statuses[c].last_heartbeat or 0.0 for c in lost)
    for name in lost:
        await fleet.stop_agent(name)
        await fleet.gateways[name].close()
    last_heard = max(hub.statuses[c].last_heartbeat or 0.0 for c in lost)  # a heartbeat may have landed meanwhile
    print(f"  {at()}  stopped the agents and east-west gateways of {', '.join(lost)}")
    if not await _until(lambda: all(hub.statuses[c].connection == "Unreachable" for c in lost), grace + within):
        print("error: the hub did not mark the region Unreachable", file=sys.stderr)
        return 1
    print(f"  {at()}  hub: {', '.join(lost)} Unreachable (no message for the grace period)")
    if not await _until(lambda: set(lost) <= fleet.evicted() and fleet.settled(survivors), within):
        print("error: the surviving clusters did not fail over (see `meshfleet status`)", file=sys.stderr)
        return 1
    acked = time.time()
    for e in hub.evictions.events:
        if e.kind in ("Evicted", "RegionEvicted") and (e.cluster in lost or region in e.message):
            print(f"            hub: {e.policy}: {e.kind}{' ' + e.cluster if e.cluster else ''}: {e.message}")
    print(f"  {at()}  every surviving cluster ACKed its failover intent: "
          f"{(acked - last_heard - grace) * 1000:.0f} ms after the grace period ended")
    print(f"  after:  {watch} sends reviews to {_weights(fleet, watch)}; endpoints {_endpoints(fleet, watch)}")
    for name in lost:
        await fleet.gateways[name].open()
        fleet.start_agent(name)
    print(f"  {at()}  restarted the region's gateways and agents")
    if not await _until(lambda: all(c in hub.sessions and hub.statuses[c].connection == "Connected" for c in lost),
                        within):
        print("error: the region's agents did not reconnect", file=sys.stderr)
        return 1
    print(f"  {at()}  hub: {', '.join(lost)} Connected again; restored after the hold-down if they stay")
    if not await _until(lambda: not set(lost) & fleet.evicted() and fleet.settled([c.name for c in fleet.clusters]),
                        within):
        print("error: the region was not restored", file=sys.stderr)
        return 1
    for e in hub.evictions.events:
        if e.kind in ("Returned", "Restored") and e.cluster in lost and e.at >= acked:
            print(f"            hub: {e.policy}: {e.kind} {e.cluster}: {e.message}")
    print(f"  {at()}  restored: every cluster ACKed the intent with {', '.join(lost)} back")
    print(f"  after:  {watch} sends reviews to {_weights(fleet, watch)}; endpoints {_endpoints(fleet, watch)}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    if not args.verbose:
        logging.getLogger("agent").setLevel(logging.WARNING)
        # the hub's policy problems are printed once the fleet converged; before agents report, every
        # Service looks missing, and those passing warnings would only be noise here
        logging.getLogger("mgmt").setLevel(logging.ERROR)
        logging.getLogger("grpc._cython.cygrpc").setLevel(logging.ERROR)  # "Aborting method ... server stop"
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="meshfleet-demo-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_demo(args, workdir))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
