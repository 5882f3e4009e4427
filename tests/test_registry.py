"""The registry's cluster rows: labels, origin, in-place updates, guarded removal, and migrating old hub.db files."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mgmt.registry import ORIGIN_CLI, ORIGIN_MESHCLUSTER, ClusterRecord, Registry, RegistryError

ROOT = Path(__file__).resolve().parents[1]

# the clusters table as the first release wrote it (no labels, no origin)
OLD_SCHEMA = """
CREATE TABLE clusters (
    name TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    zone TEXT NOT NULL,
    network TEXT NOT NULL,
    created_at REAL NOT NULL,
    cert_fingerprint TEXT,
    cert_not_after REAL,
    registered_at REAL
);
"""


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(tmp_path)
    yield registry
    registry.close()


def test_labels_and_origin_round_trip(registry: Registry) -> None:
    added = registry.add_cluster("east", "us-east", "us-east-1a", "n1", 10.0, labels={"env": "prod", "tier": "edge"},
                                 origin=ORIGIN_MESHCLUSTER)
    assert registry.cluster("east") == added
    assert dict(added.labels) == {"env": "prod", "tier": "edge"}
    assert added.origin == ORIGIN_MESHCLUSTER
    plain = registry.add_cluster("west", "eu-west", "eu-west-1a", "n2", 11.0)
    assert (dict(plain.labels), plain.origin) == ({}, ORIGIN_CLI)
    assert list(registry.clusters()) == ["east", "west"]
    assert hash(added)  # records stay hashable although labels is a dict


def test_update_changes_topology_and_labels_and_keeps_identity_and_status(registry: Registry) -> None:
    registry.add_cluster("east", "us-east", "us-east-1a", "n1", 10.0, labels={"env": "dev"})
    registry.add_token("east", "tid", "secret", 10.0, 3600)
    registry._db.execute("UPDATE clusters SET cert_fingerprint='ab', cert_not_after=99.0, registered_at=12.0")
    before = registry.statuses()["east"]
    updated = registry.update_cluster("east", "us-west", "us-west-2b", "n9", {"env": "prod"})
    assert updated == ClusterRecord("east", "us-west", "us-west-2b", "n9", 10.0, "ab", 99.0, 12.0,
                                    labels={"env": "prod"}, origin=ORIGIN_CLI)
    assert registry.cluster("east") == updated
    assert registry.statuses()["east"] == before
    assert registry._db.execute("SELECT count(*) FROM tokens").fetchone()[0] == 1
    adopted = registry.update_cluster("east", "us-west", "us-west-2b", "n9", {}, origin=ORIGIN_MESHCLUSTER)
    assert (adopted.origin, dict(adopted.labels)) == (ORIGIN_MESHCLUSTER, {})


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda r: r.update_cluster("nope", "r", "z", "n", {}), "unknown cluster 'nope'", id="update-unknown"),
    pytest.param(lambda r: r.remove_cluster("nope"), "unknown cluster 'nope'", id="remove-unknown"),
    pytest.param(lambda r: r.remove_cluster("cli-added", origin=ORIGIN_MESHCLUSTER), "has origin 'cli'",
                 id="remove-guarded-by-origin"),
])
def test_refused_changes_name_the_reason_and_change_nothing(registry: Registry, call: object, message: str) -> None:
    registry.add_cluster("cli-added", "r", "z", "n", 1.0)
    before = registry.clusters()
    with pytest.raises(RegistryError, match=message):
        call(registry)  # type: ignore[operator]
    assert registry.clusters() == before


def test_unknown_origin_is_refused(registry: Registry) -> None:
    with pytest.raises(ValueError, match="origin must be one of"):
        registry.add_cluster("east", "r", "z", "n", 1.0, origin="gitops")


def test_remove_with_matching_origin_removes(registry: Registry) -> None:
    registry.add_cluster("east", "r", "z", "n", 1.0, origin=ORIGIN_MESHCLUSTER)
    registry.remove_cluster("east", origin=ORIGIN_MESHCLUSTER)
    assert registry.clusters() == {}
    assert registry.statuses() == {}


def test_an_old_hub_db_gains_the_new_columns_with_its_clusters_intact(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "hub.db")
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO clusters VALUES ('east', 'us-east', 'us-east-1a', 'n1', 5.0, 'ab', 99.0, 6.0)")
    db.commit()
    db.close()
    registry = Registry(tmp_path)
    assert registry.clusters() == {"east": ClusterRecord("east", "us-east", "us-east-1a", "n1", 5.0, "ab", 99.0, 6.0,
                                                         labels={}, origin=ORIGIN_CLI)}
    registry.update_cluster("east", "us-east", "us-east-1a", "n1", {"env": "prod"})
    registry.close()
    again = Registry(tmp_path)  # opening a migrated file changes nothing
    assert dict(again.clusters()["east"].labels) == {"env": "prod"}
    again.close()


def test_a_second_registry_in_one_process_does_not_lose_the_first_ones_writes(tmp_path: Path) -> None:
    """Closing any descriptor of hub.db drops every POSIX lock the process holds on it; another process
    closing its connection could then take the file for its own, checkpoint and delete the WAL under
    the first connection, whose later writes were lost (the hub's registry plus the MeshCluster sync's)."""
    first, second = Registry(tmp_path), Registry(tmp_path)
    try:
        first.add_cluster("a", "r", "z", "n", 1.0)
        elsewhere = [sys.executable, "-c", "import sys; from pathlib import Path; from mgmt.registry import Registry; "
                     "r = Registry(Path(sys.argv[1])); print(sorted(r.clusters())); r.close()", str(tmp_path)]
        subprocess.run(elsewhere, check=True, capture_output=True, cwd=ROOT)  # like `meshfleet cluster token`
        first.add_cluster("b", "r", "z", "n", 2.0)
        second.update_cluster("a", "r", "z", "n", {"env": "prod"})
        seen = subprocess.run(elsewhere, check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    finally:
        first.close()
        second.close()
    assert seen == "['a', 'b']"
    again = Registry(tmp_path)
    assert dict(again.clusters()["a"].labels) == {"env": "prod"}
    again.close()
