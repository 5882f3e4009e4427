"""Hub translation benchmark: a full translation of a large fleet, and single policy changes.

    python bench/translation.py [--clusters 100] [--services 1000] [--policies 500] [--changes 20] [--seed 1]

The hub is a real `mgmt.serving.Hub` (registry and CA in a temporary directory; no ports opened). Its
clusters, their discovery reports and its policy source are set directly, then the bench calls what the
hub's debounce timer calls, `Hub._recompute()`: topology graph, change detection, translation of the
affected clusters, canonical encoding and versioning. No agent is connected, so nothing is pushed.

The fleet: N clusters in 5 regions (2 zones each), labelled env/tier/region. S Kubernetes services in 20
namespaces, each run by 3 clusters (two in one region, one in another) with 2 version subsets and a pod
selector; one MulticlusterService per service, exported to every cluster, to one region by label, or to
an explicit list of 5 clusters (a third each). P policies: 60 % TrafficPolicies (half spec.route, half
spec.http with a header match, retries and a timeout; clients: every receiver, one region, or 3 named
clusters), 20 % FailoverPolicies, 20 % AccessPolicies.

Figures printed:
* full: the first _recompute (every cluster, cold memo); median of --full-runs fresh hubs;
* change: rewrite one TrafficPolicy's weights (a different one each time) and _recompute; wall time and
  how many clusters were re-translated; separately for policies with 3 named clients and with every
  receiver as client;
* RSS: the process's peak resident set (ru_maxrss) after all of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

from meshfleet.intents import ClusterRef, OutlierDetection, Port, RequestMatch, Retries, StringMatch, Subset
from mgmt.model import (
    AccessFrom,
    AccessPolicy,
    ClusterSelector,
    Destination,
    DiscoveredService,
    Discovery,
    FailoverPolicy,
    HttpRule,
    Meta,
    MulticlusterService,
    Resources,
    RouteTarget,
    TrafficPolicy,
)
from mgmt.policies import PolicyError
from mgmt.registry import ClusterStatus
from mgmt.serving import Hub
from mgmt.settings import HubSettings

REGIONS = ("us-east", "us-west", "eu-west", "eu-central", "ap-south")


class StaticSource:
    """A policy source whose resources the bench sets directly."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.errors: tuple[PolicyError, ...] = ()

    def scan(self) -> bool:
        return False

    def last_good(self) -> dict[str, str]:
        return {}


@dataclasses.dataclass
class Fleet:
    clusters: dict[str, ClusterRef]
    labels: dict[str, dict[str, str]]
    discovery: dict[str, Discovery]
    resources: Resources
    backends: dict[tuple[str, str], list[str]]


def build(n_clusters: int, n_services: int, n_policies: int, rng: random.Random) -> Fleet:
    clusters, labels = {}, {}
    by_region: dict[str, list[str]] = {r: [] for r in REGIONS}
    for i in range(n_clusters):
        region = REGIONS[i % len(REGIONS)]
        name = f"{region}-{i:03d}"
        zone = f"{region}-{'ab'[i // len(REGIONS) % 2]}"
        clusters[name] = ClusterRef(name, region, zone, f"net-{region}")
        labels[name] = {"env": "prod" if i % 4 else "staging", "tier": "edge" if i % 3 == 0 else "core",
                        "region": region}
        by_region[region].append(name)
    names = sorted(clusters)
    services: dict[str, dict[tuple[str, str], DiscoveredService]] = {n: {} for n in names}
    backends: dict[tuple[str, str], list[str]] = {}
    mcs = []
    for j in range(n_services):
        ns, svc = f"team-{j % 20:02d}", f"svc-{j:04d}"
        home, other = rng.sample(REGIONS, 2)
        chosen = rng.sample(by_region[home], 2) + rng.sample(by_region[other], 1)
        backends[(ns, svc)] = chosen
        for c in chosen:
            services[c][(ns, svc)] = DiscoveredService(
                ns, svc, (Port("http", 8080, "HTTP"), Port("grpc", 9090, "GRPC")),
                (Subset("v1", {"version": "v1"}), Subset("v2", {"version": "v2"})), (("app", svc),))
        kind = j % 3
        export = None if kind == 0 else (
            ClusterSelector(match_labels=(("region", home),)) if kind == 1 else
            ClusterSelector(clusters=tuple(sorted(rng.sample(names, 5)))))
        mcs.append(MulticlusterService(Meta("MulticlusterService", ns, svc), svc, "",
                                       ClusterSelector(clusters=tuple(sorted(chosen))), export))
    discovery = {n: Discovery(f"eastwest.{n}.example", 15443, services[n]) for n in names}
    policies: list[TrafficPolicy | FailoverPolicy | AccessPolicy] = []
    for k in range(n_policies):
        target = mcs[(k * 7) % len(mcs)]
        ns, svc = target.meta.namespace, target.meta.name
        dest = Destination(multicluster_service=svc)
        chosen = backends[(ns, svc)]
        if k % 5 < 3:
            policies.append(traffic_policy(k, ns, dest, chosen, 50, names, rng))
        elif k % 5 == 3:
            policies.append(FailoverPolicy(Meta("FailoverPolicy", ns, f"fo-{k:04d}"), dest,
                                           OutlierDetection(3, "5s", "30s", 50)))
        else:
            policies.append(AccessPolicy(Meta("AccessPolicy", ns, f"ap-{k:04d}"), dest, "ALLOW",
                                         (AccessFrom(namespaces=(ns,), service_accounts=(f"caller-{k % 9}",)),)))
    return Fleet(clusters, labels, discovery, Resources.of([*mcs, *policies]), backends)


def traffic_policy(k: int, ns: str, dest: Destination, chosen: list[str], first: int, names: list[str],
                   rng: random.Random) -> TrafficPolicy:
    route = (RouteTarget(chosen[0], first, "v1"), RouteTarget(chosen[2], 100 - first, "v2"))
    clients = (None, tuple(sorted(rng.sample(names, 3))))[k % 2]
    rules: tuple[HttpRule, ...]
    if k % 4 < 2:
        rules = (HttpRule("default", route),)
        simple = True
    else:
        canary = (RequestMatch((("x-canary", StringMatch("exact", "1")),)),)
        rules = (HttpRule("canary", (RouteTarget(chosen[1], 100),), canary, "2s", Retries(2, "500ms", "5xx")),
                 HttpRule("default", route, timeout="3s"))
        simple = False
    return TrafficPolicy(Meta("TrafficPolicy", ns, f"tp-{k:04d}"), dest, rules, clients, simple)


def new_hub(workdir: Path, fleet: Fleet, source: StaticSource) -> Hub:
    hub = Hub(HubSettings(state_dir=workdir, listen="127.0.0.1:0"), source=source)
    hub.clusters, hub.labels, hub.discovery = dict(fleet.clusters), dict(fleet.labels), dict(fleet.discovery)
    for name in fleet.clusters:
        hub.statuses[name] = ClusterStatus(name)
    return hub


def timed(hub: Hub) -> tuple[float, int]:
    before = hub.translations
    start = time.perf_counter()
    hub._recompute()
    return (time.perf_counter() - start) * 1000, hub.translations - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--full-runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    fleet = build(args.clusters, args.services, args.policies, rng)
    print(f"fleet: {len(fleet.clusters)} clusters, {len(fleet.resources.services)} MulticlusterServices, "
          f"{len(fleet.resources.traffic)} TrafficPolicies, {len(fleet.resources.failover)} FailoverPolicies, "
          f"{len(fleet.resources.access)} AccessPolicies (built in {time.perf_counter() - t0:.1f} s)")
    full = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.full_runs):
            hub = new_hub(Path(tmp) / f"hub-{run}", fleet, StaticSource(fleet.resources))
            gc.collect()
            ms, translated = timed(hub)
            full.append(ms)
            sizes = [len(i.content) for i in hub.intents.values()]
            if run < args.full_runs - 1:
                hub.registry.close()
        print(f"full translation: {statistics.median(full):.0f} ms median of {args.full_runs} "
              f"(runs: {', '.join(f'{x:.0f}' for x in full)}); {translated} clusters; intents "
              f"{statistics.median(sizes) / 1024:.0f} KiB median, {sum(sizes) / 2**20:.1f} MiB in all")
        gc.freeze()  # as `meshfleet hub` does after start-up
        source = hub.source
        assert isinstance(source, StaticSource)
        traffic = list(fleet.resources.traffic)
        for label, named in (("3 named client clusters", True), ("every receiver a client", False)):
            pool = [i for i, p in enumerate(traffic) if (p.clients is not None) == named]
            times, counts = [], []
            for n in range(args.changes):
                i = pool[(n * 13) % len(pool)]
                old = traffic[i]
                first = old.http[-1].route[0].weight
                new_first = 30 + (first + 7) % 41
                rules = (*old.http[:-1], dataclasses.replace(old.http[-1], route=(
                    dataclasses.replace(old.http[-1].route[0], weight=new_first),
                    dataclasses.replace(old.http[-1].route[1], weight=100 - new_first))))
                traffic[i] = dataclasses.replace(old, http=rules)
                source.resources = dataclasses.replace(source.resources, traffic=tuple(traffic))
                ms, translated = timed(hub)
                times.append(ms)
                counts.append(translated)
            times.sort()
            print(f"one TrafficPolicy change ({label}): p50 {times[len(times) // 2]:.1f} ms, max {times[-1]:.1f} ms; "
                  f"clusters re-translated: median {statistics.median(counts):.0f} (max {max(counts)}) "
                  f"of {len(fleet.clusters)}")
        hub.registry.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"hub RSS (peak, whole benchmark process): {rss:.0f} MiB")


if __name__ == "__main__":
    main()
