"""The hub's durable state: clusters, bootstrap tokens, per-cluster status, discovery.

One SQLite file (`hub.db`, 0600) in the state directory. SQLite gives us
transactions across the hub process and the CLI (`cluster add` while the hub
runs) without a lock protocol of our own. WAL mode with synchronous=NORMAL keeps
a status write in the tens of microseconds.

Each cluster records its `origin`: `cli` (added by `meshfleet cluster add`, removed only
by `meshfleet cluster remove`) or `meshcluster` (created, updated and removed by the hub
from MeshCluster custom resources, see mgmt/meshclusters.py). Files written before a
column existed are migrated when opened (see `_MIGRATIONS`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mgmt.tokens import TokenRecord, check, hash_secret, token_id_of

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    zone TEXT NOT NULL,
    network TEXT NOT NULL,
    created_at REAL NOT NULL,
    cert_fingerprint TEXT,
    cert_not_after REAL,
    registered_at REAL,
    labels TEXT NOT NULL DEFAULT '{}',
    origin TEXT NOT NULL DEFAULT 'cli'
);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
    secret_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL
);
CREATE TABLE IF NOT EXISTS status (
    cluster TEXT PRIMARY KEY REFERENCES clusters(name) ON DELETE CASCADE,
    connection TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    last_heartbeat REAL,
    acked_version TEXT NOT NULL,
    desired_version TEXT NOT NULL,
    nack_version TEXT NOT NULL,
    nack_error TEXT NOT NULL,
    nack_at REAL
);
CREATE TABLE IF NOT EXISTS discovery (
    cluster TEXT PRIMARY KEY REFERENCES clusters(name) ON DELETE CASCADE,
    report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ca_reports (
    cluster TEXT PRIMARY KEY REFERENCES clusters(name) ON DELETE CASCADE,
    report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# columns added to `clusters` after its first release: (name, definition) for ALTER TABLE ADD COLUMN,
# so that a hub.db written by an older version opens with its clusters intact
_MIGRATIONS = (
    ("labels", "TEXT NOT NULL DEFAULT '{}'"),
    ("origin", "TEXT NOT NULL DEFAULT 'cli'"),
)

ORIGIN_CLI = "cli"
"""A cluster added by `meshfleet cluster add`: only `meshfleet cluster remove` removes it."""
ORIGIN_MESHCLUSTER = "meshcluster"
"""A cluster whose MeshCluster resource is its source of truth: the hub adds, updates and removes it."""
ORIGINS = (ORIGIN_CLI, ORIGIN_MESHCLUSTER)


class RegistryError(Exception):
    """A registry operation the user asked for that cannot be done (message says why)."""


@dataclass(frozen=True)
class ClusterRecord:
    """One member cluster as the registry stores it."""

    name: str
    """Cluster name (a DNS-1123 label): the name policies and the agent's certificate use."""
    region: str
    """Locality region of its workloads."""
    zone: str
    """Locality zone within the region."""
    network: str
    """Istio network name; peers on other networks go through its east-west gateway."""
    created_at: float
    """When the entry was created (epoch seconds); a removed and re-added cluster gets a new one."""
    cert_fingerprint: str | None = None
    """SHA-256 of the agent's client certificate, None until the agent registered with a token."""
    cert_not_after: float | None = None
    """notAfter of that certificate (epoch seconds)."""
    registered_at: float | None = None
    """When the agent last registered (epoch seconds)."""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Kubernetes-style labels: what the clusterSelectors of MulticlusterService/TrafficPolicy match."""
    origin: str = ORIGIN_CLI
    """Who manages the entry: ORIGIN_CLI or ORIGIN_MESHCLUSTER."""


def _record(row: sqlite3.Row) -> ClusterRecord:
    values = dict(row)
    values["labels"] = json.loads(values["labels"])
    return ClusterRecord(**values)


@dataclass
class ClusterStatus:
    """What the hub last knew of a cluster's agent (mutable: updated in place, flushed in batches)."""

    cluster: str
    connection: str = "Pending"  # Pending | Connected | Disconnected | Unreachable
    agent_version: str = ""
    last_heartbeat: float | None = None
    acked_version: str = ""
    desired_version: str = ""
    nack_version: str = ""
    nack_error: str = ""
    nack_at: float | None = None


_STATUS_COLUMNS = [f.name for f in fields(ClusterStatus)]


def _check_origin(origin: str) -> None:
    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {', '.join(ORIGINS)}, not {origin!r}")


class Registry:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / "hub.db"
        if not self.path.exists():
            # create it 0600 before SQLite does with the umask's mode. Only when missing: closing any
            # descriptor of an open database drops every POSIX lock this process holds on it, and
            # another process's connection could then checkpoint and delete the WAL under ours
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        # autocommit mode; transactions are explicit in _tx
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        """Add the columns a hub.db from an older version lacks (their defaults fill existing rows)."""
        def missing() -> list[tuple[str, str]]:
            have = {r["name"] for r in self._db.execute("PRAGMA table_info(clusters)")}
            return [(name, ddl) for name, ddl in _MIGRATIONS if name not in have]
        if not missing():
            return  # the common case: no write lock taken
        with self._tx() as db:
            for name, ddl in missing():  # again under the lock: the hub and the CLI may both be migrating
                db.execute(f"ALTER TABLE clusters ADD COLUMN {name} {ddl}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # clusters ---------------------------------------------------------------------------------
    def add_cluster(self, name: str, region: str, zone: str, network: str, now: float, *,
                    labels: Mapping[str, str] | None = None, origin: str = ORIGIN_CLI) -> ClusterRecord:
        """Create a cluster without certificate or token; RegistryError if the name is taken.

        The values are stored as given: callers validate them (mgmt.enrollment, mgmt.meshclusters).
        """
        _check_origin(origin)
        labels = dict(labels or {})
        with self._tx() as db:
            if db.execute("SELECT 1 FROM clusters WHERE name=?", (name,)).fetchone():
                raise RegistryError(f"cluster {name!r} already exists; issue a new bootstrap token with "
                                    f"`meshfleet cluster token {name}`")
            db.execute("INSERT INTO clusters(name, region, zone, network, created_at, labels, origin)"
                       " VALUES (?,?,?,?,?,?,?)",
                       (name, region, zone, network, now, json.dumps(labels, sort_keys=True), origin))
            db.execute("INSERT INTO status(cluster, connection, agent_version, acked_version, desired_version,"
                       " nack_version, nack_error) VALUES (?, 'Pending', '', '', '', '', '')", (name,))
        return ClusterRecord(name, region, zone, network, now, labels=labels, origin=origin)

    def update_cluster(self, name: str, region: str, zone: str, network: str, labels: Mapping[str, str], *,
                       origin: str | None = None) -> ClusterRecord:
        """Change a cluster's topology and labels (and its origin, if given) in place; returns the new record.

        Its certificate, tokens, status and discovery are kept: the agent stays connected and
        the hub re-translates at its next registry refresh. RegistryError if it does not exist.
        """
        if origin is not None:
            _check_origin(origin)
        with self._tx() as db:
            row = db.execute("SELECT * FROM clusters WHERE name=?", (name,)).fetchone()
            if row is None:
                raise RegistryError(f"unknown cluster {name!r}")
            db.execute("UPDATE clusters SET region=?, zone=?, network=?, labels=?, origin=? WHERE name=?",
                       (region, zone, network, json.dumps(dict(labels), sort_keys=True),
                        origin if origin is not None else row["origin"], name))
            updated = db.execute("SELECT * FROM clusters WHERE name=?", (name,)).fetchone()
        return _record(updated)

    def remove_cluster(self, name: str, *, origin: str | None = None) -> None:
        """Delete a cluster with its tokens, status and discovery: its certificate stops being accepted.

        With `origin`, only a cluster of that origin is removed (RegistryError otherwise), so a
        MeshCluster deletion can never remove a cluster someone added with `cluster add` meanwhile.
        """
        with self._tx() as db:
            row = db.execute("SELECT origin FROM clusters WHERE name=?", (name,)).fetchone()
            if row is None:
                raise RegistryError(f"unknown cluster {name!r}")
            if origin is not None and row["origin"] != origin:
                raise RegistryError(f"cluster {name!r} has origin {row['origin']!r}, not {origin!r}; not removed")
            db.execute("DELETE FROM clusters WHERE name=?", (name,))

    def clusters(self) -> dict[str, ClusterRecord]:
        rows = self._db.execute("SELECT * FROM clusters ORDER BY name").fetchall()
        return {r["name"]: _record(r) for r in rows}

    def cluster(self, name: str) -> ClusterRecord | None:
        row = self._db.execute("SELECT * FROM clusters WHERE name=?", (name,)).fetchone()
        return _record(row) if row else None

    # tokens -----------------------------------------------------------------------------------
    def add_token(self, cluster: str, token_id: str, secret: str, now: float, ttl_seconds: float) -> float:
        """Store a token's hash for `cluster`; returns its expiry time."""
        expires = now + ttl_seconds
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM clusters WHERE name=?", (cluster,)).fetchone():
                raise RegistryError(f"unknown cluster {cluster!r}; add it with `meshfleet cluster add`")
            db.execute("INSERT INTO tokens(token_id, cluster, secret_sha256, created_at, expires_at)"
                       " VALUES (?,?,?,?,?)", (token_id, cluster, hash_secret(secret), now, expires))
        return expires

    def redeem_token(self, credential: str, cluster: str, now: float, fingerprint: str,
                     not_after: float) -> None:
        """Check and burn a token, pinning the newly issued certificate, in one transaction.

        Raises TokenRejected. The token is burnt only if the certificate is pinned,
        so a failure here never leaves a cluster half-registered.
        """
        token_id = token_id_of(credential)
        with self._tx() as db:
            row = db.execute("SELECT token_id, cluster, secret_sha256, expires_at, used_at FROM tokens"
                             " WHERE token_id=?", (token_id,)).fetchone()
            check(TokenRecord(**dict(row)) if row else None, credential, cluster, now)
            db.execute("UPDATE tokens SET used_at=? WHERE token_id=?", (now, token_id))
            db.execute("UPDATE clusters SET cert_fingerprint=?, cert_not_after=?, registered_at=? WHERE name=?",
                       (fingerprint, not_after, now, cluster))

    def peek_token(self, credential: str, cluster: str, now: float) -> None:
        """Check a token without burning it (before spending a signature on it)."""
        token_id = token_id_of(credential)
        row = self._db.execute("SELECT token_id, cluster, secret_sha256, expires_at, used_at FROM tokens"
                               " WHERE token_id=?", (token_id,)).fetchone()
        check(TokenRecord(**dict(row)) if row else None, credential, cluster, now)

    # status -----------------------------------------------------------------------------------
    def statuses(self) -> dict[str, ClusterStatus]:
        rows = self._db.execute("SELECT * FROM status ORDER BY cluster").fetchall()
        return {r["cluster"]: ClusterStatus(**dict(r)) for r in rows}

    def save_statuses(self, statuses: list[ClusterStatus]) -> None:
        cols = ", ".join(_STATUS_COLUMNS)
        marks = ", ".join("?" for _ in _STATUS_COLUMNS)
        with self._tx() as db:
            for s in statuses:
                # a cluster removed meanwhile must stay removed
                if db.execute("SELECT 1 FROM clusters WHERE name=?", (s.cluster,)).fetchone():
                    db.execute(f"INSERT OR REPLACE INTO status({cols}) VALUES ({marks})",
                               [getattr(s, c) for c in _STATUS_COLUMNS])

    # CA reports -------------------------------------------------------------------------------
    def ca_reports(self) -> dict[str, dict[str, Any]]:
        """Per cluster, what its agent last reported of its plug-in CA (see mgmt.trust)."""
        rows = self._db.execute("SELECT cluster, report FROM ca_reports").fetchall()
        return {r["cluster"]: json.loads(r["report"]) for r in rows}

    def save_ca_reports(self, reports: Mapping[str, Mapping[str, Any]]) -> None:
        """Store clusters' CA reports in one transaction (a cluster removed meanwhile stays removed)."""
        with self._tx() as db:
            for cluster, report in reports.items():
                if db.execute("SELECT 1 FROM clusters WHERE name=?", (cluster,)).fetchone():
                    db.execute("INSERT OR REPLACE INTO ca_reports(cluster, report) VALUES (?, ?)",
                               (cluster, json.dumps(report, sort_keys=True)))

    # discovery --------------------------------------------------------------------------------
    def discovery(self) -> dict[str, dict[str, Any]]:
        rows = self._db.execute("SELECT cluster, report FROM discovery").fetchall()
        return {r["cluster"]: json.loads(r["report"]) for r in rows}

    def save_discovery(self, cluster: str, report: Mapping[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO discovery(cluster, report) VALUES (?, ?)",
                       (cluster, json.dumps(report, sort_keys=True)))

    # small documents (policy problems, hub address) ------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row["value"]) if row else None

    def take_meta(self, key: str) -> Any:
        """Read and delete a value in one transaction (a request queued by the CLI is consumed once)."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            db.execute("DELETE FROM meta WHERE key=?", (key,))
        return json.loads(row["value"]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))
