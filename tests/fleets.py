"""Helpers for integration tests: a real hub and real agents on 127.0.0.1 in one event loop."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import grpc

from agent.identity import IdentityStore
from meshfleet.demo import EXAMPLES, Fleet, demo_clusters
from meshfleet.v1 import hub_pb2_grpc

T = TypeVar("T")
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


def make_fleet(workdir: Path, clusters: int = 3, heartbeat: float = 0.5, grace: float = 3.0) -> Fleet:
    policies = workdir / "policies"
    if not policies.exists():
        shutil.copytree(EXAMPLES / "policies", policies)
    return Fleet(workdir, demo_clusters(clusters, workdir), policies, heartbeat=heartbeat, grace=grace)


@asynccontextmanager
async def running_fleet(workdir: Path, clusters: int = 3, heartbeat: float = 0.5,
                        grace: float = 3.0) -> AsyncIterator[Fleet]:
    fleet = make_fleet(workdir, clusters, heartbeat, grace)
    await fleet.start()
    try:
        assert await fleet.wait_converged(20.0), "fleet did not converge"
        yield fleet
    finally:
        await fleet.stop()


async def rescan(fleet: Fleet) -> None:
    """Make the hub pick up policy-file edits now instead of at its next poll."""
    assert fleet.hub.source is not None
    if fleet.hub.source.scan():
        fleet.hub._save_problems()
        fleet.hub.mark_dirty()
    await asyncio.sleep(fleet.hub.settings.debounce * 2)


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below root with its content and mtime_ns."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def agent_channel(fleet: Fleet, cluster: str) -> grpc.aio.Channel:
    """A mutual-TLS channel to the hub with the identity `cluster`'s agent holds."""
    ident = IdentityStore(fleet.workdir / "agents" / cluster).load(cluster)
    assert ident is not None
    creds = grpc.ssl_channel_credentials(ident.ca_pem, ident.key_pem, ident.cert_pem)
    return grpc.aio.secure_channel(f"127.0.0.1:{fleet.hub.port}", creds)


def bootstrap_channel(fleet: Fleet) -> grpc.aio.Channel:
    ca = (fleet.hub.settings.state_dir / "ca.crt").read_bytes()
    return grpc.aio.secure_channel(f"127.0.0.1:{fleet.hub.bootstrap_port}", grpc.ssl_channel_credentials(ca))


def stub(channel: grpc.aio.Channel) -> hub_pb2_grpc.HubStub:
    return hub_pb2_grpc.HubStub(channel)
