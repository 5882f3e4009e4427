"""Agent settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AgentSettings:
    """How an agent runs; every duration is in seconds."""

    hub: str
    """Address of the hub's mutual-TLS Sync port (host:port)."""
    cluster: str
    """This cluster's name, as registered on the hub."""
    state_dir: Path
    """Where the agent keeps its key (0600), certificates and the last applied intent."""
    inventory: Path | None = None
    """YAML file listing this cluster's services and east-west gateway (embedded mode)."""
    output: Path | None = None
    """Directory the rendered manifests are written to (embedded mode)."""
    token: str | None = None
    """Join token from `meshfleet cluster add`; needed only until the agent has registered."""
    hub_bootstrap: str | None = None
    """Address of the hub's Register port (default: the hub port + 1)."""
    cacerts_dir: Path | None = None
    """Embedded mode: where Istio's plug-in CA files go (default: <state_dir>/cacerts; never the output directory,
    which a GitOps tool may publish, since ca-key.pem is a private key)."""
    cluster_domain: str = "cluster.local"
    """DNS suffix of this cluster's services, for local endpoints."""
    heartbeat_interval: float = 5.0
    """How often the agent sends a heartbeat."""
    stream_timeout: float = 20.0
    """Watchdog: a stream with no message from the hub for this long is re-dialled."""
    backoff_initial: float = 0.5
    """First reconnect delay; doubles up to backoff_max, with full jitter."""
    backoff_max: float = 30.0
    """Cap of the reconnect delay."""
    poll_interval: float = 1.0
    """How often discovery runs (the inventory file is re-read, or the cluster's Services listed)."""
    removal_grace: float = 600.0
    """How long an object that left the hub's intent is kept before it is removed (not for deliberate deletions)."""
    probe_interval: float = 5.0
    """How often the gateways of the clusters this one sends traffic to are probed; 0 turns probing off."""
    probe_timeout: float = 1.0
    """How long one probe (name lookup and TCP connect) may take before it counts as failed."""
    probe_failures: int = 2
    """Consecutive failed probes after which a gateway is reported unreachable (one success undoes it)."""
