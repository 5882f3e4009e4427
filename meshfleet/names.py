"""Kubernetes name rules, shared by every place that accepts a name from a user."""

from __future__ import annotations

import ipaddress
import re

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def dns1123_label_error(value: object) -> str | None:
    """None if `value` is a valid DNS-1123 label (namespaces, cluster names), else why not."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if len(value) > 63:
        return f"{value!r} is longer than 63 characters"
    if not _DNS1123_LABEL.match(value):
        return f"{value!r} is not a DNS-1123 label (lower-case letters, digits and '-', alphanumeric at both ends)"
    return None


def dns1123_subdomain_error(value: object) -> str | None:
    """None if `value` is a valid DNS-1123 subdomain (object names), else why not."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if len(value) > 253:
        return f"{value!r} is longer than 253 characters"
    if not _DNS1123_SUBDOMAIN.match(value):
        return f"{value!r} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')"
    return None


_TOPOLOGY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def topology_name_error(value: object) -> str | None:
    """None if `value` can be a region, zone or network name (no '/', it separates locality parts)."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if len(value) > 63 or not _TOPOLOGY.match(value):
        return f"{value!r} must be 1-63 letters, digits, '-', '_' or '.', alphanumeric at both ends"
    return None


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `1h`, `2d`; raises ValueError."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    scale = units.get(text[-1:])
    number = text[:-1] if scale else text
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise ValueError(f"invalid duration {text!r} (examples: 90s, 15m, 1h)") from None
    if value <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return value


_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?)$")


def address_error(value: object) -> str | None:
    """None if `value` is an IP address or a DNS name (what an endpoint address may be), else why not."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if dns1123_subdomain_error(value.lower()) is None:
        return None
    return f"{value!r} is neither an IP address nor a DNS name"


def labels_error(labels: object) -> str | None:
    """None if `labels` is a valid Kubernetes label map ([prefix/]name: value), else why not."""
    if not isinstance(labels, dict):
        return f"labels must be a mapping, got {type(labels).__name__}"
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return "labels must map strings to strings"
        prefix, _, name = key.rpartition("/")
        if (prefix and dns1123_subdomain_error(prefix)) or len(name) > 63 or not _LABEL_NAME.match(name):
            return f"label key {key!r} is not a valid Kubernetes label key"
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            return f"label value {value!r} of {key!r} is not a valid Kubernetes label value"
    return None
