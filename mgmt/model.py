"""The frozen input of one translation: clusters, what their agents discovered, policies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshfleet.intents import PROTOCOLS, ClusterRef, Port, Subset
from meshfleet.names import address_error, dns1123_label_error, labels_error


@dataclass(frozen=True)
class DiscoveredService:
    namespace: str
    name: str
    ports: tuple[Port, ...]
    subsets: tuple[Subset, ...] = ()


@dataclass(frozen=True)
class Discovery:
    """One agent's latest report: its east-west gateway and its services."""

    gateway_address: str
    gateway_port: int
    services: Mapping[tuple[str, str], DiscoveredService] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteTarget:
    cluster: str
    weight: int


@dataclass(frozen=True)
class TrafficPolicy:
    namespace: str
    name: str
    service: str  # in `namespace`
    route: tuple[RouteTarget, ...]
    clients: tuple[str, ...] | None = None  # None: every cluster
    source: str = ""  # "file:line" for messages

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Snapshot:
    """Immutable input of a translation; `memo` holds what translate derives from it once for all clusters."""

    clusters: Mapping[str, ClusterRef]
    discovery: Mapping[str, Discovery]
    policies: tuple[TrafficPolicy, ...]
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


class DiscoveryError(ValueError):
    """A discovery report the hub refuses (the previous one is kept)."""


def discovery_from_json(doc: Mapping[str, Any]) -> Discovery:
    """Validate a report (as stored, or converted from the wire) into a Discovery."""
    try:
        gateway = doc.get("gateway") or {}
        address, port = str(gateway.get("address", "")), int(gateway.get("port", 0))
        if address and not 0 < port < 65536:
            raise DiscoveryError(f"gateway port {port} out of range 1-65535")
        if address and (err := address_error(address)):
            raise DiscoveryError(f"gateway address {err}")
        services: dict[tuple[str, str], DiscoveredService] = {}
        for s in doc.get("services", []):
            ns, name = s["namespace"], s["name"]
            for what, value in (("namespace", ns), ("name", name)):
                if err := dns1123_label_error(value):
                    raise DiscoveryError(f"service {what} {err}")
            if (ns, name) in services:
                raise DiscoveryError(f"service {ns}/{name} reported twice")
            ports = []
            for p in s.get("ports", []):
                number, protocol = int(p["number"]), str(p.get("protocol") or "TCP").upper()
                if not 0 < number < 65536:
                    raise DiscoveryError(f"service {ns}/{name}: port {number} out of range 1-65535")
                if protocol not in PROTOCOLS:
                    raise DiscoveryError(f"service {ns}/{name}: unknown protocol {protocol!r}")
                if err := dns1123_label_error(p["name"]):
                    raise DiscoveryError(f"service {ns}/{name}: port name {err}")
                ports.append(Port(p["name"], number, protocol))
            if not ports:
                raise DiscoveryError(f"service {ns}/{name} has no ports")
            subsets = tuple(Subset(x["name"], dict(x.get("labels", {}))) for x in s.get("subsets", []))
            for x in subsets:
                if err := dns1123_label_error(x.name) or labels_error(dict(x.labels)):
                    raise DiscoveryError(f"service {ns}/{name}: subset {x.name!r}: {err}")
            if len({x.name for x in subsets}) != len(subsets):
                raise DiscoveryError(f"service {ns}/{name}: subset names repeat")
            services[(ns, name)] = DiscoveredService(ns, name, tuple(sorted(ports, key=lambda p: p.number)),
                                                     tuple(sorted(subsets, key=lambda x: x.name)))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DiscoveryError):
            raise
        raise DiscoveryError(f"malformed discovery report: {exc!r}") from exc
    return Discovery(address, port, services)
