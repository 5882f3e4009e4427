"""Discovery from a Kubernetes cluster: its Services, their pod selectors and version subsets, its east-west gateway.

`inventory_from_cluster` is pure (API objects in, `Inventory` out); `ClusterDiscovery`
lists the objects with the real client. The agent reports the result to the hub
exactly as it reports an inventory file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from agent.inventory import Inventory, InventoryError, LocalService
from agent.inventory import parse as parse_inventory
from agent.kubeapi import Rest
from meshfleet.intents import EAST_WEST_PORT, PROTOCOLS, Port, Subset
from meshfleet.kubeclients import api_message
from meshfleet.names import dns1123_label_error, labels_error

SKIPPED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "istio-system"})
# Istio's protocol selection: appProtocol, else the port name's prefix (<protocol>[-<suffix>])
_PREFIXES = {p.lower(): p for p in PROTOCOLS}


@dataclass(frozen=True)
class DiscoverySettings:
    """Where the cluster's services and east-west gateway are found."""

    gateway_namespace: str = "istio-system"
    """Namespace of the east-west gateway Service."""
    gateway_service: str = "istio-eastwestgateway"
    """Name of the east-west gateway Service (its load-balancer address is reported)."""
    version_label: str = "version"
    """Pod label whose values become a service's subsets."""
    skipped_namespaces: frozenset[str] = SKIPPED_NAMESPACES
    """Namespaces whose Services are never reported."""


def protocol_of(port: Mapping[str, Any]) -> str:
    """Istio's protocol for a Service port: appProtocol, else the name prefix, else TCP."""
    for candidate in (port.get("appProtocol") or "", (port.get("name") or "").split("-")[0]):
        found = _PREFIXES.get(candidate.lower().removeprefix("kubernetes.io/"))
        if found:
            return found
    return "TCP"


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def gateway_address(service: Mapping[str, Any] | None) -> tuple[str, int]:
    """(address, port) remote clusters reach the east-west gateway at; ("", 0) if not yet assigned."""
    if service is None:
        return "", 0
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    address = next((i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")), "")
    ports = (service.get("spec") or {}).get("ports") or []
    port = next((p["port"] for p in ports if p.get("port") == EAST_WEST_PORT or p.get("name") == "tls"),
                EAST_WEST_PORT)
    return address, int(port)


def inventory_from_cluster(services: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
                           gateway: Mapping[str, Any] | None, settings: DiscoverySettings) -> Inventory:
    """What the cluster runs, as the hub wants it reported. Services that cannot be reported are skipped."""
    pods_by_ns: dict[str, list[Mapping[str, str]]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        pods_by_ns.setdefault(meta.get("namespace", ""), []).append(meta.get("labels") or {})
    found: list[LocalService] = []
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        if ns in settings.skipped_namespaces or spec.get("type") == "ExternalName":
            continue
        if dns1123_label_error(ns) or dns1123_label_error(name):
            continue
        ports: list[Port] = []
        for i, p in enumerate(spec.get("ports") or []):
            port_name = p.get("name") or f"port-{i}"
            if dns1123_label_error(port_name) or any(q.name == port_name for q in ports):
                continue
            ports.append(Port(port_name, int(p["port"]), protocol_of(p)))
        if not ports:
            continue
        selector = spec.get("selector") or {}
        versions = sorted({labels[settings.version_label] for labels in pods_by_ns.get(ns, [])
                           if selector and _matches(selector, labels) and settings.version_label in labels
                           and not dns1123_label_error(labels[settings.version_label])})
        subsets = tuple(Subset(v, {settings.version_label: v}) for v in versions)
        # the API server has validated it; should it not be a label map anyway, report none (nothing guarded)
        reported = tuple(sorted(selector.items())) if labels_error(selector) is None else ()
        found.append(LocalService(ns, name, tuple(ports), tuple(sorted((meta.get("labels") or {}).items())), subsets,
                                  reported))
    address, port = gateway_address(gateway)
    return Inventory(address, port or EAST_WEST_PORT, tuple(sorted(found, key=lambda s: (s.namespace, s.name))))


class DiscoveryFailed(Exception):
    """What the cluster runs could not be read; the agent keeps reporting the last good answer."""


class DiscoverySource(Protocol):
    def read(self) -> Inventory:
        """What the cluster runs now; raises DiscoveryFailed."""


class InventoryFile:
    """The embedded source: a YAML inventory file, parsed again only when its bytes change.

    Bytes, not mtime/size, decide: those miss a same-size edit within one timestamp tick.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: tuple[bytes, Inventory] | None = None

    def read(self) -> Inventory:
        try:
            data = self.path.read_bytes()
            if self._last is not None and self._last[0] == data:
                return self._last[1]
            inventory = parse_inventory(data.decode(errors="replace"), str(self.path))
        except (OSError, InventoryError) as exc:
            raise DiscoveryFailed(str(exc)) from exc
        self._last = (data, inventory)
        return inventory


class ClusterDiscovery:
    """Lists Services, Pods and the gateway Service with the real client (reads only)."""

    def __init__(self, rest: Rest, settings: DiscoverySettings = DiscoverySettings()) -> None:
        self.rest = rest
        self.settings = settings

    def _items(self, plural: str) -> Sequence[Mapping[str, Any]]:
        listed = self.rest.call("GET", f"/api/v1/{plural}") or {}
        items: Sequence[Mapping[str, Any]] = listed.get("items") or []
        return items

    def read(self) -> Inventory:
        try:
            services = self._items("services")
            pods = self._items("pods")
        except ApiException as exc:
            raise DiscoveryFailed(f"listing Services and Pods failed: {api_message(exc)}") from exc
        wanted = (self.settings.gateway_namespace, self.settings.gateway_service)
        gateway = next((s for s in services
                        if ((s.get("metadata") or {}).get("namespace"), (s.get("metadata") or {}).get("name"))
                        == wanted), None)
        return inventory_from_cluster(services, pods, gateway, self.settings)
