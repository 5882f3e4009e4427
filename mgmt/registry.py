"""The hub's durable state: clusters, bootstrap tokens, per-cluster status, discovery.

One SQLite file (`hub.db`, 0600) in the state directory. SQLite gives us
transactions across the hub process and the CLI (`cluster add` while the hub
runs) without a lock protocol of our own. WAL mode with synchronous=NORMAL keeps
a status write in the tens of microseconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
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
    registered_at REAL
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
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class RegistryError(Exception):
    """A registry operation the user asked for that cannot be done (message says why)."""


@dataclass(frozen=True)
class ClusterRecord:
    name: str
    region: str
    zone: str
    network: str
    created_at: float
    cert_fingerprint: str | None = None
    cert_not_after: float | None = None
    registered_at: float | None = None


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


class Registry:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / "hub.db"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        # autocommit mode; transactions are explicit in _tx
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)

    def close(self) -> None:
        self._db.close()

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
    def add_cluster(self, name: str, region: str, zone: str, network: str, now: float) -> ClusterRecord:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM clusters WHERE name=?", (name,)).fetchone():
                raise RegistryError(f"cluster {name!r} already exists; issue a new bootstrap token with "
                                    f"`meshfleet cluster token {name}`")
            db.execute("INSERT INTO clusters(name, region, zone, network, created_at) VALUES (?,?,?,?,?)",
                       (name, region, zone, network, now))
            db.execute("INSERT INTO status(cluster, connection, agent_version, acked_version, desired_version,"
                       " nack_version, nack_error) VALUES (?, 'Pending', '', '', '', '', '')", (name,))
        return ClusterRecord(name, region, zone, network, now)

    def remove_cluster(self, name: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM clusters WHERE name=?", (name,)).rowcount == 0:
                raise RegistryError(f"unknown cluster {name!r}")

    def clusters(self) -> dict[str, ClusterRecord]:
        rows = self._db.execute("SELECT * FROM clusters ORDER BY name").fetchall()
        return {r["name"]: ClusterRecord(**dict(r)) for r in rows}

    def cluster(self, name: str) -> ClusterRecord | None:
        row = self._db.execute("SELECT * FROM clusters WHERE name=?", (name,)).fetchone()
        return ClusterRecord(**dict(row)) if row else None

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

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))
