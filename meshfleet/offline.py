"""`meshfleet render`: what a cluster would receive, computed offline (no hub, no agents).

The same pure steps as a running fleet: policies parsed as the hub parses them,
inventories as agents report them, translate() for the cluster, render() as its
agent would. For review in CI pipelines: the output is the cluster's manifests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from agent import inventory as inventories
from agent.render import RenderContext, render
from meshfleet.crdschemas import CRDSchemas
from meshfleet.intents import ClusterRef, IntentError
from meshfleet.names import dns1123_label_error, labels_error, topology_name_error
from mgmt.model import DiscoveredService, Discovery, Snapshot
from mgmt.translate import resource_problems, translate
from mgmt.watching import DirectoryPolicySource


class OfflineError(Exception):
    """Input that cannot be rendered; the message names the file."""


def load_clusters(path: Path) -> tuple[dict[str, ClusterRef], dict[str, dict[str, str]]]:
    """(clusters, their labels) from a YAML list of {name, region, zone, network, labels (optional)}."""
    if not path.exists():
        raise OfflineError(f"no topology file {path}: pass --clusters FILE, a YAML list of "
                           "{name, region, zone, network, labels}")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise OfflineError(f"{path}: {exc}") from exc
    if not isinstance(doc, list):
        raise OfflineError(f"{path}: expected a list of {{name, region, zone, network}}")
    clusters, labels = {}, {}
    for i, c in enumerate(doc):
        if not isinstance(c, dict) or not {"name", "region", "zone", "network"} <= set(c) <= {
                "name", "region", "zone", "network", "labels"}:
            raise OfflineError(f"{path}: item {i} must have name, region, zone and network (and optionally labels)")
        if err := dns1123_label_error(c["name"]) or next(
                (e for k in ("region", "zone", "network") if (e := topology_name_error(c[k]))), None) \
                or labels_error(c.get("labels") or {}):
            raise OfflineError(f"{path}: item {i}: {err}")
        if c["name"] in clusters:
            raise OfflineError(f"{path}: item {i}: cluster {c['name']} is listed twice")
        clusters[c["name"]] = ClusterRef(c["name"], c["region"], c["zone"], c["network"])
        labels[c["name"]] = dict(c.get("labels") or {})
    return clusters, labels


def discovery_of(inv: inventories.Inventory) -> Discovery:
    """An inventory as the hub sees it once its agent reported it."""
    return Discovery(inv.gateway_address, inv.gateway_port, {
        (s.namespace, s.name): DiscoveredService(s.namespace, s.name, s.ports, s.subsets, s.selector)
        for s in inv.services})


def load_discovery(directory: Path, clusters: dict[str, ClusterRef]) -> dict[str, Discovery]:
    """`<cluster>.yaml` inventories for the clusters that have one."""
    found = {}
    for name in clusters:
        path = directory / f"{name}.yaml"
        if not path.exists():
            continue
        try:
            found[name] = discovery_of(inventories.parse(path.read_text(), str(path)))
        except inventories.InventoryError as exc:
            raise OfflineError(str(exc)) from exc
    return found


def render_cluster(policies: Path, inventory_dir: Path, clusters_file: Path, cluster: str
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """(objects, problems) for one cluster; raises OfflineError for input that cannot be used."""
    clusters, labels = load_clusters(clusters_file)
    if cluster not in clusters:
        raise OfflineError(f"unknown cluster {cluster!r}; {clusters_file} lists {', '.join(sorted(clusters))}")
    source = DirectoryPolicySource(policies)
    source.scan()
    if source.errors:
        raise OfflineError("policy files rejected:\n  " + "\n  ".join(str(e) for e in source.errors))
    snapshot = Snapshot(clusters, load_discovery(inventory_dir, clusters), source.resources, labels)
    result = translate(snapshot, cluster)
    problems = sorted({*resource_problems(snapshot), *result.problems})
    return render(result.intent, RenderContext(cluster)), [f"{p.policy.replace('/', ' ', 1)}: {p.message}"
                                                           for p in problems]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("render", help="print the manifests a cluster would receive, without hub or agents")
    p.add_argument("--policies", type=Path, required=True, help="directory of policy YAML files")
    p.add_argument("--inventories", type=Path, required=True, help="directory of <cluster>.yaml inventories")
    p.add_argument("--clusters", type=Path,
                   help="topology: a YAML list of {name, region, zone, network, labels} "
                        "(default: INVENTORIES/clusters.yaml)")
    p.add_argument("--cluster", required=True, help="the cluster to render for")
    p.add_argument("-o", "--output", choices=["yaml"], default="yaml")
    p.add_argument("--validate", type=Path, metavar="CRDS",
                   help="also validate every object against these CRDs (e.g. Istio's crd-all.gen.yaml)")
    p.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    clusters_file = args.clusters or args.inventories / "clusters.yaml"
    try:
        objects, problems = render_cluster(args.policies, args.inventories, clusters_file, args.cluster)
        invalid = []
        if args.validate is not None:
            schemas = CRDSchemas.from_file(args.validate)
            invalid = [f"{o['kind']} {o['metadata']['namespace']}/{o['metadata']['name']}: {e}"
                       for o in objects for e in schemas.validate(o)]
    except (OfflineError, OSError, IntentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    for err in invalid:
        print(f"error: invalid object: {err}", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False) if objects else "")
    return 1 if invalid else 0
