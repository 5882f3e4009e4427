"""Hub settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HubSettings:
    """How a hub runs; every duration is in seconds."""

    state_dir: Path
    """Where the hub keeps hub.db, its identity CA and its serving certificate."""
    listen: str = "127.0.0.1:7443"
    """Address of the mutual-TLS port agents Sync on."""
    bootstrap_listen: str | None = None
    """Address of the server-TLS port for Register (default: the listen port + 1; port 0 stays 0)."""
    policies_dir: Path | None = None
    """Directory of policy YAML files; None: no policies."""
    advertise_hosts: tuple[str, ...] = ()
    """Extra DNS names / IPs for the serving certificate (localhost and loopback are always in)."""
    heartbeat_interval: float = 5.0
    """How often the hub sends a heartbeat on each stream (agents send theirs on their own timer)."""
    liveness_grace: float = 15.0
    """A cluster with no message for this long is Unreachable."""
    stream_timeout: float = 20.0
    """Watchdog: a stream with no message from its agent for this long is torn down."""
    nack_backoff_base: float = 1.0
    """Wait after a first NACK before pushing again; doubles per consecutive NACK."""
    nack_backoff_max: float = 60.0
    """Cap of the NACK backoff."""
    debounce: float = 0.05
    """Minimum spacing of translations: the first change runs at once, the rest of a burst is coalesced."""
    poll_interval: float = 1.0
    """How often the policy directory and the cluster registry are checked for changes."""
    status_flush_interval: float = 0.5
    """Status (heartbeats, ACKs) is written to hub.db at most this often."""
    trust_refresh: float = 30.0
    """How often the TrustPolicy is taken again although it did not change (a supplied root's Secret may have)."""
    failover_settle: float = 45.0
    """After a start, how long the failover planner waits before deciding anything: agents reconnect with a
    backoff of up to 30 s, plus the grace period for their probe reports (evictions in hub.db stay meanwhile)."""
    region_costs: tuple[tuple[str, str, float], ...] = ()
    """Declared costs (latency) of links between regions (mgmt.regions): the nearest-regions failover order."""
    client_cert_days: int = 365
    """Validity of the client certificates Register issues."""

