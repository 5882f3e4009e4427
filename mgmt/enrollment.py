"""Enrolling a cluster: a registry row plus a one-time join token carrying the hub CA."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from meshfleet.jointokens import JoinToken
from meshfleet.names import dns1123_label_error, labels_error, topology_name_error
from mgmt.identities import load_or_create_ca
from mgmt.registry import Registry, RegistryError
from mgmt.tokens import new_secret

DEFAULT_TOKEN_TTL = 3600.0


@dataclass(frozen=True)
class IssuedToken:
    token: JoinToken
    expires_at: float


def validate_cluster(name: str, region: str, zone: str, network: str) -> None:
    """Raise RegistryError naming the first bad field."""
    for what, value, check in (("cluster name", name, dns1123_label_error), ("region", region, topology_name_error),
                               ("zone", zone, topology_name_error), ("network", network, topology_name_error)):
        if err := check(value):
            raise RegistryError(f"{what}: {err}")


def issue_token(registry: Registry, state_dir: Path, cluster: str, ttl: float = DEFAULT_TOKEN_TTL) -> IssuedToken:
    ca = load_or_create_ca(state_dir, dt.datetime.now(dt.UTC))
    token_id, secret = new_secret()
    expires = registry.add_token(cluster, token_id, secret, time.time(), ttl)
    return IssuedToken(JoinToken(token_id, secret, ca.cert.public_bytes(Encoding.DER)), expires)


def add_cluster(registry: Registry, state_dir: Path, name: str, region: str, zone: str, network: str,
                ttl: float = DEFAULT_TOKEN_TTL, labels: Mapping[str, str] | None = None) -> IssuedToken:
    validate_cluster(name, region, zone, network)
    if err := labels_error(dict(labels or {})):
        raise RegistryError(f"labels: {err}")
    registry.add_cluster(name, region, zone, network, time.time(), labels=dict(labels or {}))
    return issue_token(registry, state_dir, name, ttl)
