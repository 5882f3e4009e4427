"""Validate Kubernetes objects against CustomResourceDefinitions the way kube-apiserver does.

`CRDSchemas.validate(obj)` answers "would a real API server serving these CRDs accept
this object, without silently changing it?".  It implements, for structural schemas
(apiextensions.k8s.io/v1):

* ObjectMeta checks that matter on create: name (or generateName) is a DNS-1123
  subdomain, namespace a DNS-1123 label (forbidden on cluster-scoped kinds), label
  keys/values and annotation keys per apimachinery's rules, annotation size.
* OpenAPI value validation as kube-openapi does it: type (with `nullable`,
  `x-kubernetes-int-or-string`, integral floats accepted for integers), enum,
  minimum/maximum (+exclusive), multipleOf, min/maxLength in code points, pattern
  (RE2, like Go), the `byte` and `date-time` formats (other formats are accepted
  unchecked, as the API server ignores unknown ones), min/maxItems, uniqueItems,
  min/maxProperties, required, allOf/anyOf/oneOf/not.
* Pruning, reported as an error: every field the API server would silently drop
  (not declared in `properties`, no `additionalProperties`, no
  `x-kubernetes-preserve-unknown-fields` on the enclosing object) gives
  "field not declared in schema".  Below preserve-unknown-fields, declared
  properties are still validated.
* `x-kubernetes-list-type` set/map uniqueness ("Duplicate value"), missing map keys.
* `x-kubernetes-validations` CEL rules, evaluated with cel-python on the pruned,
  schema-typed value (`self`), with Kubernetes' CEL extensions the Istio CRDs use
  (Go-syntax `duration()`, strings ext: substring/indexOf/split/lowerAscii/...,
  `url()`/`isURL()`/getScheme/..., regex find/findAll, lists `sum()`).  Like the API server, rules
  are not evaluated when a "blocking" error (type, required, enum, too long, too
  many) was found; a note error says so.  Failures use `message`, else
  `messageExpression`, else "failed rule: <rule>"; `fieldPath` and `reason` are honoured.

Error format: `FieldError.path` is the field path, `str(error)` is "path: message" with
the message in apimachinery's style ("Required value", "Unsupported value: ...",
"Invalid value: <v>: <detail>", "Duplicate value: ...").  List items are `[i]`; map
entries are `.key` when the key is made of `[A-Za-z0-9_-]` only, otherwise `[key]`
(so "spec.ports.http" but "metadata.labels[app.kubernetes.io/name]").
Non-string map keys (YAML `80:`) are stringified, as kubectl's YAML->JSON does.

NOT covered (out of scope or not expressible here):

* defaulting (`default:`), nulls-with-defaults pruning, and therefore any rule
  relying on a defaulted value;
* `x-kubernetes-embedded-resource` (apiVersion/kind/metadata checks inside
  embedded objects) - treated as a plain object;
* transition rules (rules referencing `oldSelf`), ratcheting, update-only checks,
  `optionalOldSelf`; they are listed in `skipped_rules`;
* the CEL cost budget / estimated-cost limits, CEL compile-time type checking
  (a rule that is ill-typed for its schema fails at evaluation instead), and CEL
  library functions not listed above (quantity, ip/cidr, semver, format, sets,
  the rest of the lists library...) - rules using them are listed in `skipped_rules`, never guessed;
* sub-microsecond precision of CEL durations (cel-python stores microseconds);
* CEL typing of preserve-unknown-fields objects: their undeclared fields are visible
  to rules here, while the API server's CEL type hides them;
* constraints a CRD puts on metadata.name/generateName in its own schema (the
  API server's ObjectMeta rules are applied instead);
* status subresource semantics (status is validated like any field, although an
  API server drops it on create), scale subresources, admission webhooks,
  the CRD's own validity, managedFields/ownerReferences/finalizers details,
  unknown fields inside metadata (dropped by the API server, not reported here);
* exact apimachinery wording in every corner (composite oneOf/anyOf errors carry
  the node path instead of "<nil>").
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import lark
import re2  # type: ignore[import-untyped]
import yaml
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError, base_functions

from meshfleet.names import dns1123_label_errors, dns1123_subdomain_errors, label_value_errors, qualified_name_errors

__all__ = ["CRDSchemas", "FieldError", "parse_go_duration"]

_Schema = Mapping[str, Any]


@dataclass(frozen=True)
class FieldError:
    """One reason the API server would reject (or silently alter) an object."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


# --------------------------------------------------------------------------- rendering


def _go_float(x: float) -> str:
    """Format like Go's %v for float64 (shortest digits, exponent from 1e+06 on)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    d = Decimal(repr(x)).normalize()
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    ds = "".join(map(str, digits))
    x10 = len(ds) + exp - 1
    if x10 < -4 or x10 >= 6:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{'-' if sign else ''}{mant}e{'-' if x10 < 0 else '+'}{abs(x10):02d}"
    return format(d, "f")


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {_key_str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, datetime.date):
        return v.isoformat()
    return v


def _render(v: Any) -> str:
    """Render a bad value the way apimachinery's field.Error does."""
    if v is None:
        return '"null"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return json.dumps(_jsonable(v), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _bound(limit: float, value: Any) -> str:
    # kube-openapi compares ints natively (limit printed as int64) and floats as float64.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(limit))
    return _go_float(float(limit))


def _key_str(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bool):
        return "true" if k else "false"
    if k is None:
        return "null"
    return str(k)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _key_path(path: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return _child(path, key)
    return f"{path}[{key}]"


# --------------------------------------------------------------------------- JSON typing


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str | datetime.date):
        return "string"
    if isinstance(v, Mapping):
        return "object"
    if isinstance(v, list | tuple):
        return "array"
    return type(v).__name__


def _has_type(v: Any, typ: str) -> bool:
    actual = _json_type(v)
    if actual == typ:
        return True
    if typ == "number":
        return actual == "integer"
    if typ == "integer":
        # kube-openapi accepts a JSON float that is integral (1.0) for an integer.
        return actual == "number" and math.isfinite(v) and float(v).is_integer()
    return False


def _json_equal(a: Any, b: Any) -> bool:
    """Go reflect.DeepEqual after JSON decoding: 1 == 1.0, but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _identity(v: Any) -> str:
    """Identity for set/map-key uniqueness: the API server compares JSON encodings, where 1.0 is 1."""

    def canonical(x: Any) -> Any:
        if isinstance(x, float) and x.is_integer():
            return int(x)
        if isinstance(x, Mapping):
            return {_key_str(k): canonical(y) for k, y in x.items()}
        if isinstance(x, list | tuple):
            return [canonical(y) for y in x]
        return x.isoformat() if isinstance(x, datetime.date) else x

    return json.dumps(canonical(v), sort_keys=True, default=str)


@cache
def _regex(pattern: str) -> Any:
    try:
        return re2.compile(pattern)
    except re2.error:
        return None


_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?", re.ASCII
)


def _is_date_time(s: str) -> bool:
    m = _DATE_TIME.fullmatch(s)
    if not m:
        return False
    try:
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        datetime.datetime(year, month, day, hour, minute, second)
    except ValueError:
        return False
    return True


def _is_base64(s: str) -> bool:
    try:
        base64.b64decode(s.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


_FORMATS: dict[str, Callable[[str], bool]] = {"byte": _is_base64, "date-time": _is_date_time, "datetime": _is_date_time}


# --------------------------------------------------------------------------- metadata

_ANNOTATIONS_MAX_BYTES = 256 * 1024


def _string_map(meta: Mapping[str, Any], key: str, errors: list[FieldError]) -> Mapping[str, str]:
    value = meta.get(key)
    path = f"metadata.{key}"
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errors.append(FieldError(path, f"Invalid value: {_render(value)}: must be a map of string to string"))
        return {}
    good: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            errors.append(FieldError(_key_path(path, _key_str(k)), f"Invalid value: {_render(v)}: must be a string"))
        else:
            good[k] = v
    return good


def _validate_metadata(meta: Any, namespaced: bool) -> list[FieldError]:
    errors: list[FieldError] = []
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        return [FieldError("metadata", f"Invalid value: {_render(meta)}: must be of type object")]
    for key in ("name", "generateName", "namespace"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            errors.append(FieldError(f"metadata.{key}", f"Invalid value: {_render(meta[key])}: must be a string"))
            return errors
    name, generate_name, namespace = meta.get("name") or "", meta.get("generateName") or "", meta.get("namespace")
    if generate_name:
        # A generateName prefix may end in '-'; the API server masks it before checking.
        masked = generate_name[:-1] + "a" if len(generate_name) > 1 and generate_name.endswith("-") else generate_name
        errors.extend(
            FieldError("metadata.generateName", f"Invalid value: {_render(generate_name)}: {m}")
            for m in dns1123_subdomain_errors(masked)
        )
    if name:
        errors.extend(
            FieldError("metadata.name", f"Invalid value: {_render(name)}: {m}") for m in dns1123_subdomain_errors(name)
        )
    elif not generate_name:
        errors.append(FieldError("metadata.name", "Required value: name or generateName is required"))
    if namespace:
        if not namespaced:
            errors.append(FieldError("metadata.namespace", "Forbidden: not allowed on this type"))
        else:
            errors.extend(
                FieldError("metadata.namespace", f"Invalid value: {_render(namespace)}: {m}")
                for m in dns1123_label_errors(namespace)
            )
    for k, v in _string_map(meta, "labels", errors).items():
        for bad, msgs in ((k, qualified_name_errors(k)), (v, label_value_errors(v))):
            errors.extend(FieldError("metadata.labels", f"Invalid value: {_render(bad)}: {m}") for m in msgs)
    annotations = _string_map(meta, "annotations", errors)
    for k in annotations:
        errors.extend(
            FieldError("metadata.annotations", f"Invalid value: {_render(k)}: {m}")
            for m in qualified_name_errors(k.lower())
        )
    if sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items()) > _ANNOTATIONS_MAX_BYTES:
        too_long = f"Too long: may not be more than {_ANNOTATIONS_MAX_BYTES} bytes"
        errors.append(FieldError("metadata.annotations", too_long))
    return errors


# --------------------------------------------------------------------------- CEL library

_NANOS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
_NANOS["h"] = 60 * _NANOS["m"]
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_INT64_MAX = 2**63 - 1


def parse_go_duration(text: str) -> int | None:
    """Nanoseconds of a Go `time.ParseDuration` string ("1.5s", "1h2m", "10ms"), None if Go rejects it."""
    s, negative = text, False
    if s[:1] in ("+", "-") and s:
        negative, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        return None
    total = Fraction(0)
    while s:
        m = _DURATION_PART.match(s)
        if m is None or m.end() == 0:
            return None
        whole, frac, unit = m.groups()
        if (not whole and not frac) or unit not in _NANOS:
            return None
        amount = Fraction(int(whole or "0")) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
        total += amount * _NANOS[unit]
        s = s[m.end() :]
    nanos = int(total)  # Go truncates fractions of a nanosecond
    if nanos > _INT64_MAX + (1 if negative else 0):
        return None
    return -nanos if negative else nanos


def _need(value: Any, *types: type) -> Any:
    # A TypeError becomes CEL's "no such overload" in cel-python's function dispatch.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise TypeError(f"no such overload for {type(value).__name__}")
    return value


def _cel_and(x: Any, y: Any) -> Any:
    # cel-python raises for error && error; CEL yields the (first) error, which carries the real cause.
    if isinstance(x, CELEvalError) and isinstance(y, CELEvalError):
        return x
    return celtypes.logical_and(x, y)


def _cel_or(x: Any, y: Any) -> Any:
    if isinstance(x, CELEvalError) and isinstance(y, CELEvalError):
        return x
    return celtypes.logical_or(x, y)


def _cel_int(value: Any) -> Any:
    if isinstance(value, str):
        if re.fullmatch(r"[+-]?[0-9]+", value) and -(2**63) <= int(value) <= _INT64_MAX:
            return celtypes.IntType(int(value))
        return CELEvalError("type conversion error from 'string' to 'int'")
    return celtypes.IntType(value)


def _cel_duration(value: Any) -> Any:
    if isinstance(value, datetime.timedelta):
        return celtypes.DurationType(value)
    nanos = parse_go_duration(_need(value, str))
    if nanos is None:
        return CELEvalError("type conversion error from 'string' to 'google.protobuf.Duration'")
    micros = nanos // 1000 if nanos >= 0 else -(-nanos // 1000)
    try:
        return celtypes.DurationType(datetime.timedelta(microseconds=micros))
    except (ValueError, OverflowError):
        return CELEvalError("duration out of range")


class _CELIndexError(ValueError):
    pass


def _index(s: Any, i: Any) -> int:
    n = int(_need(i, int))
    if n < 0 or n > len(s):
        raise _CELIndexError(f"index out of range: {n}")
    return n


def _string_fn(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any) -> Any:
        try:
            return fn(*args)
        except _CELIndexError as e:
            return CELEvalError(str(e))

    wrapped.__name__ = fn.__name__
    return wrapped


@_string_fn
def _substring(s: Any, start: Any, end: Any = None) -> Any:
    s = _need(s, str)
    a = _index(s, start)
    b = len(s) if end is None else _index(s, end)
    if a > b:
        return CELEvalError(f"invalid substring range. start: {a}, end: {b}")
    return celtypes.StringType(s[a:b])


@_string_fn
def _char_at(s: Any, i: Any) -> Any:
    s = _need(s, str)
    n = _index(s, i)
    return celtypes.StringType(s[n : n + 1])


@_string_fn
def _index_of(target: Any, item: Any, offset: Any = 0) -> Any:
    if isinstance(target, list):
        return celtypes.IntType(next((i for i, x in enumerate(target) if x == item), -1))
    s, sub = _need(target, str), _need(item, str)
    return celtypes.IntType(s.find(sub, _index(s, offset)))


@_string_fn
def _last_index_of(target: Any, item: Any, offset: Any = None) -> Any:
    if isinstance(target, list):
        return celtypes.IntType(max((i for i, x in enumerate(target) if x == item), default=-1))
    s, sub = _need(target, str), _need(item, str)
    end = len(s) if offset is None else _index(s, offset)
    return celtypes.IntType(s.rfind(sub, 0, end + len(sub)))


def _split(s: Any, sep: Any, limit: Any = -1) -> Any:
    s, sep, n = _need(s, str), _need(sep, str), int(_need(limit, int))
    if n == 0:
        return celtypes.ListType([])
    if sep == "":
        parts = list(s) if n < 0 or n >= len(s) else [*list(s[: n - 1]), s[n - 1 :]]
    else:
        parts = s.split(sep, n - 1 if n > 0 else -1)
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _join(items: Any, sep: Any = "") -> Any:
    return celtypes.StringType(_need(sep, str).join(_need(x, str) for x in _need(items, list)))


def _find(s: Any, pattern: Any) -> Any:
    m = _regex(_need(pattern, str))
    if m is None:
        return CELEvalError(f"invalid regex: {pattern}")
    found = m.search(_need(s, str))
    return celtypes.StringType(found.group(0) if found else "")


def _find_all(s: Any, pattern: Any, limit: Any = -1) -> Any:
    m = _regex(_need(pattern, str))
    if m is None:
        return CELEvalError(f"invalid regex: {pattern}")
    found = [celtypes.StringType(x.group(0)) for x in m.finditer(_need(s, str))]
    n = int(_need(limit, int))
    return celtypes.ListType(found if n < 0 else found[:n])


@dataclass(frozen=True)
class _URL:
    """What Kubernetes' CEL url() exposes of Go's url.URL."""

    scheme: str
    host: str
    path: str
    opaque: str


_USERINFO_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:~!$&'()*+,;=%@")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!$&'()*+,;=:[]<>\"-_.~")


def _check_escapes(s: str, host: bool) -> None:
    i = 0
    while i < len(s):
        c = s[i]
        if c == "%":
            esc = s[i : i + 3]
            if len(esc) < 3 or not all(x in "0123456789abcdefABCDEF" for x in esc[1:]):
                raise ValueError(f"invalid URL escape {esc!r}")
            if host and int(esc[1], 16) < 8 and esc != "%25":
                raise ValueError(f"invalid URL escape {esc!r}")
            i += 3
            continue
        if host and ord(c) < 0x80 and c not in _HOST_CHARS:
            raise ValueError(f"invalid character {c!r} in host name")
        i += 1


def _parse_host(host: str) -> str:
    if host.startswith("["):
        end = host.rfind("]")
        if end < 0:
            raise ValueError("missing ']' in host")
        port = host[end + 1 :]
    else:
        colon = host.rfind(":")
        port = host[colon:] if colon >= 0 else ""
    if port and not (port[0] == ":" and port[1:].isascii() and (port[1:].isdigit() or port == ":")):
        raise ValueError(f"invalid port {port!r} after host")
    _check_escapes(host, host=True)
    return host


def _parse_request_uri(raw: str) -> _URL:
    """Port of Go's url.ParseRequestURI, which backs Kubernetes' CEL url() and isURL()."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise ValueError("net/url: invalid control character in URL")
    if raw == "":
        raise ValueError("empty url")
    if raw == "*":
        return _URL("", "", "*", "")
    scheme, rest = "", raw
    for i, c in enumerate(raw):
        if c.isascii() and c.isalpha():
            continue
        if c.isascii() and (c.isdigit() or c in "+-."):
            if i == 0:
                break
            continue
        if c == ":":
            if i == 0:
                raise ValueError("missing protocol scheme")
            scheme, rest = raw[:i].lower(), raw[i + 1 :]
        break
    # The query is irrelevant to every accessor we offer; a lone trailing "?" is ForceQuery.
    rest = rest[:-1] if rest.endswith("?") and rest.count("?") == 1 else rest.partition("?")[0]
    if not rest.startswith("/"):
        if scheme:
            return _URL(scheme, "", "", rest)
        raise ValueError("invalid URI for request")
    host = ""
    if scheme and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        userinfo, at, hostport = authority.rpartition("@")
        host = _parse_host(hostport)
        if at and not set(userinfo) <= _USERINFO_CHARS:
            raise ValueError("net/url: invalid userinfo")
        if at:
            _check_escapes(userinfo, host=False)
    _check_escapes(rest, host=False)
    return _URL(scheme, host, rest, "")


def _is_url(s: Any) -> Any:
    try:
        _parse_request_uri(_need(s, str))
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _url(s: Any) -> Any:
    try:
        return _parse_request_uri(_need(s, str))
    except ValueError as e:
        return CELEvalError(f"URL parse error during conversion from string: {e}")


def _split_host_port(u: _URL) -> tuple[str, str]:
    host = u.host
    if host.startswith("["):
        end = host.rfind("]")
        return host[1:end], host[end + 2 :]
    name, colon, port = host.rpartition(":")
    return (name, port) if colon else (host, "")


def _sum(items: Any) -> Any:
    """Kubernetes' lists library `sum()`, for lists of int or double (0 for an empty list)."""
    values = list(_need(items, list))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return celtypes.IntType(sum(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return celtypes.DoubleType(sum(values))
    return CELEvalError("sum() needs a list of numbers")


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "_&&_": _cel_and,
    "sum": _sum,
    "_||_": _cel_or,
    "int": _cel_int,
    "duration": _cel_duration,
    "substring": _substring,
    "charAt": _char_at,
    "indexOf": _index_of,
    "lastIndexOf": _last_index_of,
    "split": _split,
    "lowerAscii": lambda s: celtypes.StringType(_need(s, str).translate(_LOWER)),
    "upperAscii": lambda s: celtypes.StringType(_need(s, str).translate(_UPPER)),
    "trim": lambda s: celtypes.StringType(_need(s, str).strip()),
    "replace": lambda s, old, new, n=-1: celtypes.StringType(
        _need(s, str).replace(_need(old, str), _need(new, str), int(_need(n, int)))
    ),
    "join": _join,
    "find": _find,
    "findAll": _find_all,
    "isURL": _is_url,
    "url": _url,
    "getScheme": lambda u: celtypes.StringType(_need(u, _URL).scheme),
    "getHost": lambda u: celtypes.StringType(_need(u, _URL).host),
    "getHostname": lambda u: celtypes.StringType(_split_host_port(_need(u, _URL))[0]),
    "getPort": lambda u: celtypes.StringType(_split_host_port(_need(u, _URL))[1]),
    "getEscapedPath": lambda u: celtypes.StringType(_need(u, _URL).path),
}

_MACROS = frozenset({"has", "all", "exists", "exists_one", "map", "filter", "dyn"})
_KNOWN_FUNCTIONS = frozenset(base_functions) | frozenset(_FUNCTIONS) | _MACROS
_ENV = celpy.Environment()


@dataclass(frozen=True)
class _Compiled:
    program: celpy.Runner | None
    skip_reason: str


def _referenced_names(ast: lark.Tree[Any]) -> tuple[set[str], set[str]]:
    """(called function/method names, plain identifiers) of a parsed CEL expression."""
    called: set[str] = set()
    idents: set[str] = set()
    for node in ast.iter_subtrees():
        if node.data == "ident_arg":
            called.add(str(node.children[0]))
        elif node.data == "member_dot_arg":
            called.add(str(node.children[1]))
        elif node.data == "ident":
            idents.add(str(node.children[0]))
    return called, idents


@cache
def _compile(expression: str) -> _Compiled:
    try:
        ast = _ENV.compile(expression)
    except Exception as e:  # cel-python raises several parse error types
        return _Compiled(None, f"cel-python cannot parse it: {e}")
    called, idents = _referenced_names(ast)
    if "oldSelf" in idents:
        return _Compiled(None, "transition rule (references oldSelf)")
    unknown = called - _KNOWN_FUNCTIONS
    if unknown:
        return _Compiled(None, f"uses CEL functions not implemented here: {', '.join(sorted(unknown))}")
    return _Compiled(_ENV.program(ast, functions=_FUNCTIONS), "")


def _cel_message(e: BaseException) -> str:
    msg = str(e.args[0]) if e.args else str(e)
    m = re.fullmatch(r"no such member in mapping: '(.*)'", msg)
    return f"no such key: {m.group(1)}" if m else msg


def _to_cel(value: Any, s: _Schema) -> Any:
    """Schema-typed CEL value of `value`, with the fields the API server would prune left out."""
    if value is None:
        return None
    if s.get("x-kubernetes-int-or-string"):
        if isinstance(value, str):
            return celtypes.StringType(value)
        return celtypes.IntType(int(value))
    typ = s.get("type")
    if typ == "object" and isinstance(value, Mapping):
        props: _Schema = s.get("properties") or {}
        extra = s.get("additionalProperties")
        keep_unknown = extra is True or s.get("x-kubernetes-preserve-unknown-fields") is True
        out = celtypes.MapType()
        for k, v in value.items():
            key = _key_str(k)
            sub = props.get(key)
            if sub is None and isinstance(extra, Mapping):
                sub = extra
            if sub is not None:
                out[celtypes.StringType(key)] = _to_cel(v, sub)
            elif keep_unknown:
                out[celtypes.StringType(key)] = json_to_cel(_jsonable(v))
        return out
    if typ == "array" and isinstance(value, list | tuple):
        items = s.get("items")
        if isinstance(items, Mapping):
            return celtypes.ListType([_to_cel(v, items) for v in value])
        return json_to_cel(_jsonable(value))
    if typ == "string":
        text = value.isoformat() if isinstance(value, datetime.date) else str(value)
        fmt = s.get("format")
        if fmt == "byte" and _is_base64(text):
            return celtypes.BytesType(base64.b64decode(text.replace("\n", "").replace("\r", "")))
        if fmt in ("date-time", "datetime") and _is_date_time(text):
            try:
                return celtypes.TimestampType(text)
            except (ValueError, TypeError):
                pass
        return celtypes.StringType(text)
    if typ == "integer":
        return celtypes.IntType(int(value))
    if typ == "number":
        return celtypes.DoubleType(float(value))
    if typ == "boolean":
        return celtypes.BoolType(bool(value))
    return json_to_cel(_jsonable(value))


def _join_field_path(path: str, field_path: str) -> str:
    """Append a rule's fieldPath (".a.b", "['x.y']") to the node path."""
    for dotted, quoted in re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)|\['((?:[^'\\]|\\.)*)'\]", field_path):
        path = _child(path, dotted) if dotted else _key_path(path, quoted)
    return path


# --------------------------------------------------------------------------- schema walk

_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")


class _Walk:
    """One pass of OpenAPI validation + pruning check over a value, collecting CEL work."""

    def __init__(self, top: bool) -> None:
        self.top = top  # False inside allOf/anyOf/oneOf/not: value validations only
        self.errors: list[FieldError] = []
        self.blocking = False
        self.cel_nodes: list[tuple[Any, _Schema, str]] = []

    def add(self, path: str, message: str, blocking: bool = False) -> None:
        self.errors.append(FieldError(path, message))
        self.blocking = self.blocking or blocking

    def detail(self, path: str, value: Any, detail: str, blocking: bool = False) -> None:
        self.add(path, f"Invalid value: {_render(value)}: {detail}", blocking)

    def check(self, value: Any, s: _Schema, path: str) -> None:
        if value is None:
            if not s.get("nullable") and ("type" in s or s.get("x-kubernetes-int-or-string")):
                self.detail(
                    path, "null", f'{path} in body must be of type {s.get("type", "integer,string")}: "null"', True
                )
            return
        typ = s.get("type")
        if s.get("x-kubernetes-int-or-string"):
            if not (_has_type(value, "integer") or isinstance(value, str)):
                kind = _json_type(value)
                self.detail(path, kind, f'{path} in body must be of type integer,string: "{kind}"', True)
                return
        elif typ and not _has_type(value, typ):
            kind = _json_type(value)
            self.detail(path, kind, f'{path} in body must be of type {typ}: "{kind}"', True)
            return
        for junctor in _JUNCTORS:
            if junctor in s:
                self.check_junctor(value, s, junctor, path)
        if "enum" in s and not any(_json_equal(value, e) for e in s["enum"]):
            allowed = ", ".join(json.dumps(e) if isinstance(e, str) else json.dumps(_jsonable(e)) for e in s["enum"])
            self.add(path, f"Unsupported value: {_render(value)}: supported values: {allowed}", True)
        if isinstance(value, str | datetime.date):
            self.check_string(value if isinstance(value, str) else value.isoformat(), s, path)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self.check_number(value, s, path)
        elif isinstance(value, list | tuple):
            self.check_array(value, s, path)
        elif isinstance(value, Mapping):
            self.check_object(value, s, path)
        if self.top and s.get("x-kubernetes-validations"):
            self.cel_nodes.append((value, s, path))

    def check_junctor(self, value: Any, s: _Schema, junctor: str, path: str) -> None:
        def attempt(sub: _Schema) -> _Walk:
            walk = _Walk(top=False)
            walk.check(value, sub, path)
            return walk

        if junctor == "not":
            if not attempt(s["not"]).errors:
                self.detail(path, "", f'"{path}" must not validate the schema (not)')
            return
        walks = [attempt(sub) for sub in s[junctor]]
        failed = [w for w in walks if w.errors]
        passed = len(walks) - len(failed)
        if junctor == "oneOf" and passed != 1:
            found = "Found none valid" if passed == 0 else f"Found {passed} valid alternatives"
            self.detail(path, "", f'"{path}" must validate one and only one schema (oneOf). {found}')
        elif junctor == "anyOf" and passed == 0:
            self.detail(path, "", f'"{path}" must validate at least one schema (anyOf)')
        elif junctor == "allOf" and failed:
            self.detail(path, "", f'"{path}" must validate all the schemas (allOf){". None validated" * (passed == 0)}')
        else:
            return
        # Like kube-openapi: explain with every failed allOf branch, or the closest anyOf/oneOf alternative.
        explain = failed
        if junctor != "allOf":
            explain = [min(failed, key=lambda w: len(w.errors))] if not passed else []
        for walk in explain:
            self.errors.extend(walk.errors)
            self.blocking = self.blocking or walk.blocking

    def check_string(self, value: str, s: _Schema, path: str) -> None:
        # kube-openapi stops at the first failing length/pattern check of a string.
        if "maxLength" in s and len(value) > s["maxLength"]:
            self.add(path, f"Too long: may not be more than {s['maxLength']} bytes", True)
        elif "minLength" in s and len(value) < s["minLength"]:
            self.detail(path, value, f"{path} in body should be at least {s['minLength']} chars long")
        elif "pattern" in s:
            compiled = _regex(s["pattern"])
            if compiled is None:
                self.detail(path, value, f"{path} in body should match '{s['pattern']}', but pattern is invalid")
            elif compiled.search(value) is None:
                self.detail(path, value, f"{path} in body should match '{s['pattern']}'")
        fmt = s.get("format")
        if fmt in _FORMATS and not _FORMATS[fmt](value):
            self.detail(path, value, f"{path} in body must be of type {fmt}: {_render(value)}", True)

    def check_number(self, value: float, s: _Schema, path: str) -> None:
        if "maximum" in s:
            limit, exclusive = s["maximum"], bool(s.get("exclusiveMaximum"))
            if value > limit or (exclusive and value == limit):
                rel = "less than" if exclusive else "less than or equal to"
                self.detail(path, value, f"{path} in body should be {rel} {_bound(limit, value)}")
        if "minimum" in s:
            limit, exclusive = s["minimum"], bool(s.get("exclusiveMinimum"))
            if value < limit or (exclusive and value == limit):
                rel = "greater than" if exclusive else "greater than or equal to"
                self.detail(path, value, f"{path} in body should be {rel} {_bound(limit, value)}")
        factor = s.get("multipleOf")
        if factor and (Fraction(str(value)) / Fraction(str(factor))).denominator != 1:
            self.detail(path, value, f"{path} in body should be a multiple of {_bound(factor, value)}")

    def check_array(self, value: list[Any] | tuple[Any, ...], s: _Schema, path: str) -> None:
        if "maxItems" in s and len(value) > s["maxItems"]:
            self.add(path, f"Too many: {len(value)}: must have at most {s['maxItems']} items", True)
        if "minItems" in s and len(value) < s["minItems"]:
            self.detail(path, len(value), f"{path} in body should have at least {s['minItems']} items")
        if s.get("uniqueItems") and len({_identity(v) for v in value}) != len(value):
            self.detail(path, "", f"{path} in body shouldn't contain duplicates")
        items = s.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                self.check(item, items, f"{path}[{i}]")
        if self.top:
            self.check_list_type(value, s, path)

    def check_list_type(self, value: list[Any] | tuple[Any, ...], s: _Schema, path: str) -> None:
        list_type = s.get("x-kubernetes-list-type")
        if list_type == "set":
            for i in _first_repeats(_identity(v) for v in value):
                self.add(f"{path}[{i}]", f"Duplicate value: {_render(value[i])}")
        elif list_type == "map":
            key_names: list[str] = list(s.get("x-kubernetes-list-map-keys") or [])
            if any(v is not None and not isinstance(v, Mapping) for v in value):
                bad = next(i for i, v in enumerate(value) if v is not None and not isinstance(v, Mapping))
                self.detail(f"{path}[{bad}]", value[bad], "must be an object for an array of list-type map")
                return
            declared_required = set((s.get("items") or {}).get("required") or ())
            keys: list[dict[str, Any]] = []
            for i, item in enumerate(value):
                item = item or {}
                for name in key_names:
                    if name not in item and name not in declared_required:
                        self.add(f"{path}[{i}].{name}", "Required value")
                keys.append({n: item[n] for n in key_names if n in item})
            for i in _first_repeats(_identity(k) for k in keys):
                self.add(f"{path}[{i}]", f"Duplicate value: {_render(keys[i])}")

    def check_object(self, value: Mapping[Any, Any], s: _Schema, path: str) -> None:
        if "maxProperties" in s and len(value) > s["maxProperties"]:
            self.add(path, f"Too many: {len(value)}: must have at most {s['maxProperties']} items", True)
        if "minProperties" in s and len(value) < s["minProperties"]:
            limit = s["minProperties"]
            self.detail(path, limit, f"{path} in body should have at least {limit} properties")
        keys = {_key_str(k): k for k in value}
        for name in s.get("required") or ():
            if name not in keys:
                self.add(_child(path, name), "Required value", True)
        props: _Schema = s.get("properties") or {}
        extra = s.get("additionalProperties")
        keep_unknown = extra is True or s.get("x-kubernetes-preserve-unknown-fields") is True
        for key, original in keys.items():
            sub = props.get(key)
            if sub is not None:
                self.check(value[original], sub, _child(path, key))
            elif isinstance(extra, Mapping):
                self.check(value[original], extra, _key_path(path, key))
            elif self.top and not keep_unknown:
                self.add(_key_path(path, key), "field not declared in schema")


def _first_repeats(identities: Iterable[str]) -> Iterator[int]:
    """Index of the second occurrence of each repeated identity (what the API server reports)."""
    seen: dict[str, int] = {}
    for i, ident in enumerate(identities):
        seen[ident] = seen.get(ident, 0) + 1
        if seen[ident] == 2:
            yield i


def _rules_in(s: Any) -> Iterator[Mapping[str, Any]]:
    """Every x-kubernetes-validations entry in a structural schema (not inside junctors)."""
    if not isinstance(s, Mapping):
        return
    yield from s.get("x-kubernetes-validations") or ()
    for sub in (s.get("properties") or {}).values():
        yield from _rules_in(sub)
    yield from _rules_in(s.get("items"))
    yield from _rules_in(s.get("additionalProperties"))


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class _Served:
    schema: _Schema
    namespaced: bool


_ENVELOPE: _Schema = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    # ObjectMeta is fixed by the API server and validated separately.
    "metadata": {"x-kubernetes-preserve-unknown-fields": True},
}


class CRDSchemas:
    """The served versions of a set of CRDs, able to validate objects like the API server.

    `skipped_rules` maps the text of every CEL rule that cannot be evaluated here
    (transition rules, functions not implemented, cel-python limitations) to the
    reason.  It is filled when the CRDs are loaded and, should cel-python fail on a
    rule at run time for a reason other than a CEL evaluation error (an undeclared
    function or variable, an internal exception), during `validate()`.
    Such rules are never reported as passing or failing an object; callers that must
    prove acceptance should assert the rules they depend on are not in it.
    """

    def __init__(self, served: Mapping[tuple[str, str], _Served]) -> None:
        self._served = dict(served)
        self.skipped_rules: dict[str, str] = {}
        for entry in self._served.values():
            for rule in _rules_in(entry.schema):
                compiled = _compile(rule["rule"])
                if compiled.program is None:
                    self.skipped_rules[rule["rule"]] = compiled.skip_reason

    @classmethod
    def from_file(cls, path: str | Path) -> CRDSchemas:
        """Load every CustomResourceDefinition document of a (multi-document) YAML file."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_documents(d for d in yaml.safe_load_all(fh) if isinstance(d, Mapping))

    @classmethod
    def from_documents(cls, docs: Iterable[Mapping[str, Any]]) -> CRDSchemas:
        served: dict[tuple[str, str], _Served] = {}
        for doc in docs:
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            namespaced = spec.get("scope", "Namespaced") == "Namespaced"
            for version in spec.get("versions") or ():
                if not version.get("served"):
                    continue
                declared = (version.get("schema") or {}).get("openAPIV3Schema")
                schema = dict(declared or {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
                schema["properties"] = {**(schema.get("properties") or {}), **_ENVELOPE}
                served[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = _Served(schema, namespaced)
        return cls(served)

    def kinds(self) -> set[tuple[str, str]]:
        """(apiVersion, kind) of every served version."""
        return set(self._served)

    def validate(self, obj: Mapping[str, Any]) -> list[FieldError]:
        """Every reason the API server would reject or prune `obj`; empty means accepted unchanged."""
        if not isinstance(obj, Mapping):
            return [FieldError("", f"Invalid value: {_render(obj)}: object must be a mapping")]
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        entry = self._served.get((str(api_version), str(kind)))
        if entry is None:
            return [FieldError("", f"no CRD serves {api_version} {kind}")]
        errors = _validate_metadata(obj.get("metadata"), entry.namespaced)
        # The API server skips CEL when any required/enum/type/too-long/too-many error exists.
        blocking = any(e.message.startswith(("Required value", "Too long")) for e in errors)
        walk = _Walk(top=True)
        walk.check(obj, entry.schema, "")
        errors.extend(walk.errors)
        if walk.cel_nodes and (blocking or walk.blocking):
            errors.append(
                FieldError(
                    "",
                    'Invalid value: "null": some validation rules were not checked because the object was invalid; '
                    "correct the existing errors to complete validation",
                )
            )
        elif walk.cel_nodes:
            for value, s, path in walk.cel_nodes:
                errors.extend(self._run_rules(value, s, path))
        return errors

    def _run_rules(self, value: Any, s: _Schema, path: str) -> list[FieldError]:
        errors: list[FieldError] = []
        self_value = _to_cel(value, s)
        shown_type = json.dumps(s.get("type", ""))
        for rule in s["x-kubernetes-validations"]:
            text = rule["rule"]
            program = _compile(text).program
            if program is None or text in self.skipped_rules:
                continue
            message = str(rule.get("message") or "").strip()
            try:
                result = program.evaluate({"self": self_value})
            except CELEvalError as e:
                detail = _cel_message(e)
                if detail.startswith("undeclared reference"):
                    self.skipped_rules[text] = f"cel-python: {detail.split(' (in activation')[0]}"
                    continue
                detail = f"{detail} evaluating rule: {message or text.strip()}"
                errors.append(FieldError(path, f"Invalid value: {shown_type}: {detail}"))
                continue
            except Exception as e:  # cel-python gaps surface as assorted exception types
                self.skipped_rules[text] = f"cel-python failed: {type(e).__name__}: {e}"
                continue
            if isinstance(result, celtypes.BoolType) and bool(result):
                continue
            detail = self._message_expression(rule, self_value) or message or f"failed rule: {text.strip()}"
            where = _join_field_path(path, rule.get("fieldPath") or "")
            reason = rule.get("reason")
            if reason == "FieldValueForbidden":
                errors.append(FieldError(where, f"Forbidden: {detail}"))
            elif reason == "FieldValueRequired":
                errors.append(FieldError(where, f"Required value: {detail}"))
            elif reason == "FieldValueDuplicate":
                errors.append(FieldError(where, f"Duplicate value: {shown_type}"))
            else:
                errors.append(FieldError(where, f"Invalid value: {shown_type}: {detail}"))
        return errors

    @staticmethod
    def _message_expression(rule: Mapping[str, Any], self_value: Any) -> str:
        # Like the API server: fall back to message when messageExpression fails or is blank.
        expression = rule.get("messageExpression")
        if not expression:
            return ""
        program = _compile(expression).program
        if program is None:
            return ""
        try:
            result = program.evaluate({"self": self_value})
        except Exception:
            return ""
        text = str(result).strip() if isinstance(result, str) else ""
        return "" if "\n" in text else text
