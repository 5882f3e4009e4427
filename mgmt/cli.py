"""Hub-side commands: `hub`, `cluster add|token|remove`, `status`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
import time
import uuid
from pathlib import Path

import yaml
from kubernetes.client import ApiClient

from meshfleet.kubeclients import KubeConfigError, kubernetes_client
from meshfleet.names import labels_error, parse_duration
from mgmt import status as status_view
from mgmt.enrollment import IssuedToken, add_cluster, issue_token
from mgmt.kubewatching import KubePolicySource
from mgmt.meshclusters import MeshClusterManager
from mgmt.regions import RegionCostsError, parse_costs
from mgmt.registry import ORIGIN_MESHCLUSTER, Registry, RegistryError
from mgmt.roots import SecretRootStore
from mgmt.serving import Hub
from mgmt.settings import HubSettings
from mgmt.statuswriting import PolicyStatusWriter
from mgmt.trust import REQUEST_KEY, REQUEST_TTL, RESULT_KEY, ROLLBACK, ROTATE, STATUS_KEY

log = logging.getLogger("meshfleet.hub")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hub = sub.add_parser("hub", help="run the hub (management server)")
    hub.add_argument("--state-dir", type=Path, required=True, help="hub state: registry, CA, keys")
    hub.add_argument("--listen", default="127.0.0.1:7443", help="mutual-TLS Sync address (default %(default)s)")
    hub.add_argument("--bootstrap-listen", help="Register address (default: the listen port + 1)")
    hub.add_argument("--policies", type=Path, help="directory of policy YAML files (embedded mode)")
    hub.add_argument("--kubeconfig", type=Path, help="watch the meshfleet custom resources in this cluster")
    hub.add_argument("--in-cluster", action="store_true", help="watch custom resources with the pod's account")
    hub.add_argument("--namespace", help="Kubernetes mode: the hub's namespace, where generated root CAs are kept as "
                     "Secrets (default: the pod's namespace in-cluster, else meshfleet-system)")
    hub.add_argument("--advertise-host", action="append", default=[],
                     help="extra DNS name or IP agents use to reach the hub (repeatable)")
    hub.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds (default %(default)s)")
    hub.add_argument("--liveness-grace", type=float, default=15.0,
                     help="seconds without a message before a cluster is Unreachable (default %(default)s)")
    hub.add_argument("--region-costs", type=Path, metavar="FILE",
                     help="YAML of the costs (e.g. latency in ms) of links between regions, for the nearest-regions "
                          "failover order (default: every region equally near)")
    hub.set_defaults(func=run_hub)

    cluster = sub.add_parser("cluster", help="manage member clusters")
    csub = cluster.add_subparsers(dest="cluster_cmd", required=True)
    add = csub.add_parser("add", help="register a cluster and print its one-time join token")
    add.add_argument("name")
    add.add_argument("--region", required=True)
    add.add_argument("--zone", required=True)
    add.add_argument("--network", required=True)
    add.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                     help="a label cluster selectors match (repeatable)")
    add.add_argument("--state-dir", type=Path, required=True)
    add.add_argument("--ttl", default="1h", help="token lifetime (default %(default)s)")
    add.set_defaults(func=cluster_add)
    tok = csub.add_parser("token", help="issue a new join token for an existing cluster")
    tok.add_argument("name")
    tok.add_argument("--state-dir", type=Path, required=True)
    tok.add_argument("--ttl", default="1h", help="token lifetime (default %(default)s)")
    tok.set_defaults(func=cluster_token)
    rm = csub.add_parser("remove", help="remove a cluster; its agent certificate stops being accepted")
    rm.add_argument("name")
    rm.add_argument("--state-dir", type=Path, required=True)
    rm.add_argument("--force", action="store_true",
                    help="also remove a cluster its MeshCluster resource manages (a hub in kube mode adds it back "
                         "while the resource exists)")
    rm.set_defaults(func=cluster_remove)

    certs = sub.add_parser("certs", help="the mesh CA: status, root rotation, rollback")
    certs_sub = certs.add_subparsers(dest="certs_cmd", required=True)
    cst = certs_sub.add_parser("status", help="roots, rotation phase, each cluster's CA and who holds a rotation")
    cst.add_argument("--state-dir", type=Path, required=True)
    cst.add_argument("-o", "--output", choices=["text", "json"], default="text")
    cst.set_defaults(func=certs_status)
    for action, what in ((ROTATE, "start a root rotation: a new root is generated and phased in"),
                         (ROLLBACK, "go back to the old root (from phase AddingRoot or ReissuingIntermediates)")):
        cmd = certs_sub.add_parser(action, help=what)
        cmd.add_argument("--state-dir", type=Path, required=True)
        cmd.add_argument("--wait", type=float, default=15.0,
                         help="seconds to wait for the running hub to take the request (default %(default)s)")
        cmd.set_defaults(func=certs_request, action=action)

    st = sub.add_parser("status", help="clusters, connection, versions, last NACK")
    st.add_argument("--state-dir", type=Path, required=True)
    st.add_argument("-o", "--output", choices=["text", "json"], default="text")
    st.set_defaults(func=show_status)


def _print_token(issued: IssuedToken, name: str) -> None:
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued.expires_at))
    print(f"# join token for cluster {name}, valid until {expires}; it is shown only once", file=sys.stderr)
    print(issued.token)


def parse_labels(items: list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings as a label map; ValueError naming the bad item (Kubernetes label syntax)."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--label {item!r}: expected KEY=VALUE")
        if key in labels:
            raise ValueError(f"--label {item!r}: label {key!r} given twice")
        if err := labels_error({key: value}):
            raise ValueError(f"--label {item!r}: {err}")
        labels[key] = value
    return labels


def cluster_add(args: argparse.Namespace) -> int:
    try:
        labels = parse_labels(args.label)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    registry = Registry(args.state_dir)
    try:
        _print_token(add_cluster(registry, args.state_dir, args.name, args.region, args.zone, args.network,
                                 parse_duration(args.ttl), labels=labels), args.name)
    except (RegistryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        registry.close()
    return 0


def cluster_token(args: argparse.Namespace) -> int:
    registry = Registry(args.state_dir)
    try:
        _print_token(issue_token(registry, args.state_dir, args.name, parse_duration(args.ttl)), args.name)
    except (RegistryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        registry.close()
    return 0


def cluster_remove(args: argparse.Namespace) -> int:
    registry = Registry(args.state_dir)
    try:
        record = registry.cluster(args.name)
        if record is not None and record.origin == ORIGIN_MESHCLUSTER and not args.force:
            raise RegistryError(f"cluster {args.name!r} is managed by its MeshCluster resource: delete that "
                                f"(kubectl delete meshcluster {args.name}), or pass --force")
        registry.remove_cluster(args.name)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        registry.close()
    print(f"cluster {args.name} removed")
    return 0


def show_status(args: argparse.Namespace) -> int:
    if not (args.state_dir / "hub.db").exists():
        print(f"error: no hub state in {args.state_dir} (expected hub.db)", file=sys.stderr)
        return 1
    registry = Registry(args.state_dir)
    try:
        doc = status_view.collect(registry)
    finally:
        registry.close()
    print(json.dumps(doc, indent=2) if args.output == "json" else status_view.render_text(doc))
    return 0


def _open_registry(state_dir: Path) -> Registry | None:
    if not (state_dir / "hub.db").exists():
        print(f"error: no hub state in {state_dir} (expected hub.db)", file=sys.stderr)
        return None
    return Registry(state_dir)


def certs_status(args: argparse.Namespace) -> int:
    registry = _open_registry(args.state_dir)
    if registry is None:
        return 1
    try:
        doc = registry.get_meta(STATUS_KEY)
    finally:
        registry.close()
    print(json.dumps(doc, indent=2) if args.output == "json" else status_view.render_trust(doc))
    return 0


def certs_request(args: argparse.Namespace) -> int:
    """Queue rotate-root / rollback for the running hub and await its answer (exit 0 done, 1 refused, 3 not taken)."""
    registry = _open_registry(args.state_dir)
    if registry is None:
        return 1
    try:
        doc = registry.get_meta(STATUS_KEY) or {}
        # the hub checks the phase itself (this document may lag it by a status flush); this is for an
        # immediate answer when no mesh CA runs at all
        if not doc.get("policy"):
            print("error: no TrustPolicy is in effect on the hub (see `meshfleet certs status`)", file=sys.stderr)
            return 1
        if registry.get_meta(REQUEST_KEY) is not None:
            print("error: another certs request is queued and the hub has not taken it yet", file=sys.stderr)
            return 1
        request_id = uuid.uuid4().hex
        registry.set_meta(REQUEST_KEY, {"id": request_id, "action": args.action, "at": time.time()})
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            result = registry.get_meta(RESULT_KEY)
            if result is not None and result.get("id") == request_id:
                print(result["message"] if result["ok"] else f"error: {result['message']}",
                      file=sys.stdout if result["ok"] else sys.stderr)
                return 0 if result["ok"] else 1
            time.sleep(0.1)
        print(f"error: the hub has not taken the request within {args.wait:g} s (is it running?); it stays queued "
              f"for {REQUEST_TTL:.0f} s and runs if a hub polls meanwhile (see `meshfleet certs status`)",
              file=sys.stderr)
        return 3
    finally:
        registry.close()


def hub_namespace(in_cluster: bool) -> str:
    """The pod's namespace when running in a cluster, else meshfleet-system."""
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if in_cluster and path.exists():
        return path.read_text().strip()
    return "meshfleet-system"


def load_region_costs(path: Path) -> tuple[tuple[str, str, float], ...]:
    """The region-costs file, validated; raises RegionCostsError naming the file and the place."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RegionCostsError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise RegionCostsError(f"{path}: not YAML: {exc}") from exc
    return parse_costs(doc, str(path))


def run_hub(args: argparse.Namespace) -> int:
    try:
        costs = load_region_costs(args.region_costs) if args.region_costs else ()
    except RegionCostsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = HubSettings(state_dir=args.state_dir, listen=args.listen, bootstrap_listen=args.bootstrap_listen,
                           policies_dir=args.policies, advertise_hosts=tuple(args.advertise_host),
                           heartbeat_interval=args.heartbeat_interval, liveness_grace=args.liveness_grace,
                           stream_timeout=max(args.liveness_grace, 4 * args.heartbeat_interval), region_costs=costs)

    source: KubePolicySource | None = None
    api: ApiClient | None = None
    roots: SecretRootStore | None = None
    if args.kubeconfig or args.in_cluster:
        if args.policies:
            print("error: give --policies (embedded mode) or --kubeconfig / --in-cluster, not both", file=sys.stderr)
            return 2
        try:
            api = kubernetes_client(args.kubeconfig, args.in_cluster)
        except KubeConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        source = KubePolicySource.for_api(api)
        roots = SecretRootStore(api, args.namespace or hub_namespace(args.in_cluster))

    async def main() -> None:
        hub = Hub(settings, source=source, roots=roots, kube_api=api)
        await hub.start()
        # what start-up loaded lives as long as the process: keep it out of the collector's full
        # passes, which otherwise add tens of ms to a translation now and then (bench/convergence.py)
        gc.collect()
        gc.freeze()
        writer: asyncio.Task[None] | None = None
        if source is not None and api is not None:
            source.on_change = hub.policy_changed  # every watched change triggers a rescan at once
            source.start()
            writer = asyncio.create_task(PolicyStatusWriter(hub, source, api).run())
        # kube mode: MeshCluster resources are the source of clusters, and get their status written
        meshclusters = MeshClusterManager(hub, api, settings.state_dir).start() if api is not None else None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            log.info("hub stopping")
            if writer is not None:
                writer.cancel()
            if meshclusters is not None:
                await meshclusters.stop()
            if source is not None:
                await asyncio.to_thread(source.stop)
            await hub.stop()

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
