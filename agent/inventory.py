"""The inventory file: this cluster's services and east-west gateway (the local discovery source).

Pure parsing with precise errors; the agent keeps reporting the last good
inventory while the file is broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from meshfleet.intents import EAST_WEST_PORT, PROTOCOLS, Port, Subset
from meshfleet.names import address_error, dns1123_label_error, labels_error


class InventoryError(ValueError):
    """An inventory that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class LocalService:
    namespace: str
    name: str
    ports: tuple[Port, ...]
    labels: tuple[tuple[str, str], ...] = ()
    subsets: tuple[Subset, ...] = ()
    selector: tuple[tuple[str, str], ...] = ()  # the pods it selects: what an AccessPolicy on it guards


@dataclass(frozen=True)
class Inventory:
    gateway_address: str
    gateway_port: int
    services: tuple[LocalService, ...]


def _keys(obj: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InventoryError(f"{where}: must be a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(required) - set(optional), key=str)
    if unknown:
        raise InventoryError(f"{where}: unknown field {unknown[0]!r} (allowed: "
                             f"{', '.join(sorted(required + optional))})")
    missing = [k for k in required if k not in obj]
    if missing:
        raise InventoryError(f"{where}: missing required field {missing[0]!r}")
    return obj


def _labels(obj: Any, where: str) -> dict[str, str]:
    if obj is None:
        return {}
    if err := labels_error(obj):
        raise InventoryError(f"{where}: {err}")
    return dict(obj)


def parse(text: str, filename: str = "inventory") -> Inventory:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"{filename}: YAML error: {exc}") from exc
    root = _keys(doc, filename, ("services",), ("gateway",))
    gateway = _keys(root.get("gateway") or {}, f"{filename}: gateway", (), ("address", "port"))
    address = gateway.get("address", "")
    port = gateway.get("port", EAST_WEST_PORT)
    if not isinstance(address, str) or not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise InventoryError(f"{filename}: gateway needs a string address and a port 1-65535")
    if address and (err := address_error(address)):
        raise InventoryError(f"{filename}: gateway.address: {err}")
    if not isinstance(root["services"], list):
        raise InventoryError(f"{filename}: services must be a list")
    services: list[LocalService] = []
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(root["services"]):
        where = f"{filename}: services[{i}]"
        s = _keys(raw, where, ("namespace", "name", "ports"), ("labels", "subsets", "selector"))
        for key in ("namespace", "name"):
            if err := dns1123_label_error(s[key]):
                raise InventoryError(f"{where}.{key}: {err}")
        if (s["namespace"], s["name"]) in seen:
            raise InventoryError(f"{where}: {s['namespace']}/{s['name']} listed twice")
        seen.add((s["namespace"], s["name"]))
        ports: list[Port] = []
        if not isinstance(s["ports"], list) or not s["ports"]:
            raise InventoryError(f"{where}.ports: must be a non-empty list")
        for j, rawp in enumerate(s["ports"]):
            pw = f"{where}.ports[{j}]"
            p = _keys(rawp, pw, ("name", "number"), ("protocol",))
            if err := dns1123_label_error(p["name"]):
                raise InventoryError(f"{pw}.name: {err}")
            number, protocol = p["number"], str(p.get("protocol", "TCP")).upper()
            if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
                raise InventoryError(f"{pw}.number: must be an integer 1-65535, got {number!r}")
            if protocol not in PROTOCOLS:
                raise InventoryError(f"{pw}.protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
            if any(q.name == p["name"] or q.number == number for q in ports):
                raise InventoryError(f"{pw}: port name {p['name']!r} or number {number} used twice")
            ports.append(Port(p["name"], number, protocol))
        subsets: list[Subset] = []
        for j, rawx in enumerate(s.get("subsets") or []):
            xw = f"{where}.subsets[{j}]"
            x = _keys(rawx, xw, ("name", "labels"), ())
            if err := dns1123_label_error(x["name"]):
                raise InventoryError(f"{xw}.name: {err}")
            if any(y.name == x["name"] for y in subsets):
                raise InventoryError(f"{xw}.name: subset {x['name']!r} listed twice")
            subsets.append(Subset(x["name"], _labels(x["labels"], xw)))
        services.append(LocalService(s["namespace"], s["name"], tuple(ports),
                                     tuple(sorted(_labels(s.get("labels"), where).items())), tuple(subsets),
                                     tuple(sorted(_labels(s.get("selector"), f"{where}.selector").items()))))
    return Inventory(address, port, tuple(sorted(services, key=lambda s: (s.namespace, s.name))))
