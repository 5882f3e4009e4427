"""`meshfleet agent`: run the spoke agent of one cluster."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from agent.applying import KubernetesSink
from agent.cacerts import SecretCaStore
from agent.discovering import ClusterDiscovery
from agent.identity import IdentityError
from agent.kubeapi import Rest
from agent.settings import AgentSettings
from agent.syncing import Agent, AgentFatal
from meshfleet.kubeclients import KubeConfigError, kubernetes_client

log = logging.getLogger("meshfleet.agent")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run the agent of one workload cluster")
    p.add_argument("--hub", required=True, help="hub Sync address host:port")
    p.add_argument("--hub-bootstrap", help="hub Register address (default: the hub port + 1)")
    p.add_argument("--cluster", required=True, help="this cluster's name on the hub")
    p.add_argument("--token", help="join token from `meshfleet cluster add` (first start only); prefer "
                   "--token-file or $MESHFLEET_JOIN_TOKEN, which other users cannot read in the process list")
    p.add_argument("--token-file", type=Path, help="file holding the join token")
    p.add_argument("--state-dir", type=Path, required=True, help="agent key, certificates, applied intent")
    embedded = p.add_argument_group("embedded mode (no Kubernetes): both")
    embedded.add_argument("--inventory", type=Path, help="YAML file of this cluster's services")
    embedded.add_argument("--output", type=Path, help="directory the manifests are written to")
    embedded.add_argument("--cacerts-dir", type=Path,
                          help="where Istio's plug-in CA files go (default: STATE_DIR/cacerts; keep it out of the "
                               "output directory, since ca-key.pem is a private key)")
    kube = p.add_argument_group("Kubernetes mode: one of")
    kube.add_argument("--kubeconfig", type=Path, help="kubeconfig of the cluster this agent serves")
    kube.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    kube.add_argument("--discovery-interval", type=float, default=10.0,
                      help="seconds between listings of Services and Pods (default %(default)s)")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds (default %(default)s)")
    p.add_argument("--removal-grace", type=float, default=AgentSettings.removal_grace, metavar="SECONDS",
                   help="keep an object that left the hub's intent this long before removing it; what a user "
                        "deleted on the hub goes at once (default %(default)s)")
    probes = p.add_argument_group("probes of the east-west gateways this cluster sends traffic to (reported to "
                                  "the hub, which by default evicts a cluster only if its peers cannot reach it)")
    probes.add_argument("--probe-interval", type=float, default=AgentSettings.probe_interval,
                        help="seconds between probe rounds; 0 turns probing off (default %(default)s)")
    probes.add_argument("--probe-timeout", type=float, default=AgentSettings.probe_timeout,
                        help="seconds one probe (name lookup and TCP connect) may take (default %(default)s)")
    probes.add_argument("--probe-failures", type=int, default=AgentSettings.probe_failures,
                        help="consecutive failed probes before a gateway is reported unreachable "
                             "(default %(default)s)")
    p.set_defaults(func=run_agent)


def run_agent(args: argparse.Namespace) -> int:
    kube_mode = bool(args.kubeconfig or args.in_cluster)
    if not kube_mode and not (args.inventory and args.output):
        print("error: give --inventory and --output (embedded mode), or --kubeconfig / --in-cluster", file=sys.stderr)
        return 2
    if (bad := _probe_flags_error(args)) is not None:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    if not args.removal_grace >= 0:  # also refuses nan
        print("error: --removal-grace must be a number of seconds, 0 or more", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("MESHFLEET_JOIN_TOKEN")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            print(f"error: cannot read --token-file: {exc}", file=sys.stderr)
            return 2
    settings = AgentSettings(hub=args.hub, hub_bootstrap=args.hub_bootstrap, cluster=args.cluster,
                             token=token, state_dir=args.state_dir, inventory=args.inventory,
                             output=args.output, cacerts_dir=args.cacerts_dir, cluster_domain=args.cluster_domain,
                             heartbeat_interval=args.heartbeat_interval,
                             stream_timeout=4 * args.heartbeat_interval, removal_grace=args.removal_grace,
                             poll_interval=args.discovery_interval if kube_mode else 1.0,
                             probe_interval=args.probe_interval, probe_timeout=args.probe_timeout,
                             probe_failures=args.probe_failures)
    sink: KubernetesSink | None = None
    discovery: ClusterDiscovery | None = None
    ca_store: SecretCaStore | None = None
    if kube_mode:
        try:
            rest = Rest(kubernetes_client(args.kubeconfig, args.in_cluster))
        except KubeConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        sink, discovery = KubernetesSink(rest, args.cluster), ClusterDiscovery(rest)
        ca_store = SecretCaStore(rest, args.cluster)  # istio-system/cacerts

    async def main() -> None:
        agent = Agent(settings, sink=sink, discovery=discovery, ca_store=ca_store)
        task = asyncio.create_task(agent.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("agent stopping")

    try:
        asyncio.run(main())
    except (AgentFatal, IdentityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


def _probe_flags_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the probe flags, if anything."""
    # the chained comparisons also refuse NaN (every comparison with it fails) and infinity
    if not 0 <= args.probe_interval < float("inf"):
        return f"--probe-interval must be 0 (probing off) or a positive number of seconds, not {args.probe_interval:g}"
    if not 0 < args.probe_timeout < float("inf"):
        return f"--probe-timeout must be a positive number of seconds, not {args.probe_timeout:g}"
    if args.probe_failures < 1:
        return f"--probe-failures must be at least 1, not {args.probe_failures}"
    return None
