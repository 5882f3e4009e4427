"""`meshfleet agent`: run the spoke agent of one cluster."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from agent.identity import IdentityError
from agent.settings import AgentSettings
from agent.syncing import Agent, AgentFatal

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
    p.add_argument("--inventory", type=Path, required=True, help="YAML file of this cluster's services")
    p.add_argument("--output", type=Path, required=True, help="directory the manifests are written to")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds (default %(default)s)")
    p.set_defaults(func=run_agent)


def run_agent(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("MESHFLEET_JOIN_TOKEN")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            print(f"error: cannot read --token-file: {exc}", file=sys.stderr)
            return 2
    settings = AgentSettings(hub=args.hub, hub_bootstrap=args.hub_bootstrap, cluster=args.cluster,
                             token=token, state_dir=args.state_dir, inventory=args.inventory,
                             output=args.output, cluster_domain=args.cluster_domain,
                             heartbeat_interval=args.heartbeat_interval,
                             stream_timeout=4 * args.heartbeat_interval)

    async def main() -> None:
        agent = Agent(settings)
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
