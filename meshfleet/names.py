"""Kubernetes name rules, shared by every place that accepts a name from a user or an agent.

The `*_errors` functions return apimachinery's messages (the CRD validator reports
them verbatim); the `*_error` ones return one short message for CLI and config errors.
"""

from __future__ import annotations

import ipaddress
import re

_DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = "(" + _QUALIFIED_NAME + ")?"


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    eg = "".join(f"'{e}', " if i == 0 else f"or '{e}', " for i, e in enumerate(examples))
    return f"{msg} (e.g. {eg}regex used for validation is '{fmt}')"


def dns1123_subdomain_errors(value: str) -> list[str]:
    errs = []
    if len(value) > 253:
        errs.append("must be no more than 253 characters")
    if not re.fullmatch(_DNS1123_SUBDOMAIN, value):
        errs.append(
            _regex_error(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                "and must start and end with an alphanumeric character",
                _DNS1123_SUBDOMAIN,
                "example.com",
            )
        )
    return errs


def dns1123_label_errors(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not re.fullmatch(_DNS1123_LABEL, value):
        errs.append(
            _regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                "and must start and end with an alphanumeric character",
                _DNS1123_LABEL,
                "my-name",
                "123-abc",
            )
        )
    return errs


def qualified_name_errors(value: str) -> list[str]:
    regex_msg = _regex_error(
        "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
        "character",
        _QUALIFIED_NAME,
        "MyName",
        "my.name",
        "123-abc",
    )
    parts = value.split("/")
    if len(parts) > 2:
        prefix_msg = "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        return [f"a qualified name {regex_msg} {prefix_msg}"]
    errs = []
    name = parts[-1]
    if len(parts) == 2:
        if not parts[0]:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in dns1123_subdomain_errors(parts[0]))
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part must be no more than 63 characters")
    if not re.fullmatch(_QUALIFIED_NAME, name):
        errs.append("name part " + regex_msg)
    return errs


def label_value_errors(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not re.fullmatch(_LABEL_VALUE, value):
        errs.append(
            _regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character",
                _LABEL_VALUE,
                "MyValue",
                "my_value",
                "12345",
            )
        )
    return errs


def dns1123_label_error(value: object) -> str | None:
    """None if `value` is a valid DNS-1123 label (namespaces, cluster names), else why not."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if len(value) > 63:
        return f"{value!r} is longer than 63 characters"
    if not re.fullmatch(_DNS1123_LABEL, value):
        return f"{value!r} is not a DNS-1123 label (lower-case letters, digits and '-', alphanumeric at both ends)"
    return None


def dns1123_subdomain_error(value: object) -> str | None:
    """None if `value` is a valid DNS-1123 subdomain (object names), else why not."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if len(value) > 253:
        return f"{value!r} is longer than 253 characters"
    if not re.fullmatch(_DNS1123_SUBDOMAIN, value):
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
        if errs := qualified_name_errors(key):
            return f"label key {key!r}: {errs[0]}"
        if errs := label_value_errors(value):
            return f"label value {value!r} of {key!r}: {errs[0]}"
    return None
