"""The intent contract: what the hub tells one cluster, and how it is versioned.

The hub produces a `ClusterIntent` per cluster; the agent decides how to express it
in Istio. On the wire the intent is canonical JSON and its version is the SHA-256
of those bytes, so both sides agree on "changed" without any other bookkeeping and
the agent can detect a corrupted push.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MEDIA_TYPE = "application/vnd.meshfleet.intent.v1+json"
SCHEMA = "meshfleet.io/intent/v1"
PROTOCOL_VERSION = "1.0"
EAST_WEST_PORT = 15443
# Istio protocol names a service port may carry (in discovery reports and intents)
PROTOCOLS = ("HTTP", "HTTP2", "HTTPS", "GRPC", "TCP", "TLS", "MONGO", "REDIS", "MYSQL", "UDP")


class IntentError(ValueError):
    """An intent that cannot be decoded: corrupt, wrong media type or malformed."""


@dataclass(frozen=True)
class ClusterRef:
    name: str
    region: str
    zone: str
    network: str

    @property
    def locality(self) -> str:
        """Istio locality string `region/zone` (zone omitted when unknown)."""
        return f"{self.region}/{self.zone}" if self.zone else self.region


@dataclass(frozen=True)
class Port:
    name: str
    number: int
    protocol: str


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    """One cluster that runs the service, reached through its east-west gateway `address:port`.

    The receiving cluster recognises its own copy by name and reaches it directly,
    so the same backend list serves every client and is encoded once.
    """

    cluster: ClusterRef
    address: str = ""
    port: int = 0
    subsets: tuple[Subset, ...] = ()


@dataclass(frozen=True)
class ServiceIntent:
    """A service the receiving cluster may call, with every cluster backing it."""

    namespace: str
    name: str
    ports: tuple[Port, ...]
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class WeightedTarget:
    cluster: str
    weight: int


@dataclass(frozen=True)
class TrafficSplit:
    """Weighted routing of one service's traffic across the clusters backing it."""

    policy: str  # "<namespace>/<name>" of the TrafficPolicy it comes from
    namespace: str
    service: str
    targets: tuple[WeightedTarget, ...]


@dataclass(frozen=True)
class ClusterIntent:
    cluster: ClusterRef
    services: tuple[ServiceIntent, ...] = ()
    traffic: tuple[TrafficSplit, ...] = ()


def canonical_json(obj: Any) -> bytes:
    """The one serialization every version is computed from."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def version_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class Encoder:
    """Encodes many intents, serializing each shared service or split object only once.

    translate() hands every client of a service the same ServiceIntent object, so
    encoding a fleet costs one serialization per service, not one per cluster.
    The output is byte-identical to canonical_json(to_json(intent)).
    """

    def __init__(self) -> None:
        self._fragments: dict[int, tuple[object, bytes]] = {}

    def _fragment(self, obj: Any, to_obj: Any) -> bytes:
        hit = self._fragments.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        data = canonical_json(to_obj(obj))
        self._fragments[id(obj)] = (obj, data)  # holding obj keeps its id from being reused
        return data

    def encode(self, intent: ClusterIntent) -> tuple[str, bytes]:
        """Return (version, canonical bytes) of an intent."""
        content = b"".join([
            b'{"cluster":', canonical_json(_cluster_json(intent.cluster)),
            b',"schema":', canonical_json(SCHEMA),
            b',"services":[', b",".join(self._fragment(s, _service_json) for s in intent.services),
            b'],"traffic":[', b",".join(self._fragment(t, _traffic_json) for t in intent.traffic),
            b"]}",
        ])
        return version_of(content), content


def encode(intent: ClusterIntent) -> tuple[str, bytes]:
    """Return (version, canonical bytes) of an intent."""
    return Encoder().encode(intent)


def decode(version: str, content: bytes, media_type: str = MEDIA_TYPE) -> ClusterIntent:
    """Check and parse a pushed intent; raises IntentError with a precise reason."""
    if media_type != MEDIA_TYPE:
        raise IntentError(f"unsupported intent media type {media_type!r} (expected {MEDIA_TYPE})")
    actual = version_of(content)
    if actual != version:
        raise IntentError(f"corrupt intent: content hashes to {actual[:12]}, push says {version[:12]}")
    try:
        doc = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntentError(f"corrupt intent: not JSON ({exc})") from exc
    return from_json(doc)


def to_json(intent: ClusterIntent) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "cluster": _cluster_json(intent.cluster),
        "services": [_service_json(s) for s in intent.services],
        "traffic": [_traffic_json(t) for t in intent.traffic],
    }


def _service_json(s: ServiceIntent) -> dict[str, Any]:
    return {
        "namespace": s.namespace,
        "name": s.name,
        "ports": [{"name": p.name, "number": p.number, "protocol": p.protocol} for p in s.ports],
        "backends": [
            {
                "cluster": _cluster_json(b.cluster),
                "address": b.address,
                "port": b.port,
                "subsets": [{"name": x.name, "labels": dict(x.labels)} for x in b.subsets],
            }
            for b in s.backends
        ],
    }


def _traffic_json(t: TrafficSplit) -> dict[str, Any]:
    return {
        "policy": t.policy,
        "namespace": t.namespace,
        "service": t.service,
        "targets": [{"cluster": w.cluster, "weight": w.weight} for w in t.targets],
    }


def _cluster_json(c: ClusterRef) -> dict[str, str]:
    return {"name": c.name, "region": c.region, "zone": c.zone, "network": c.network}


class _Reader:
    """Typed access to a JSON document that reports the path of what is wrong."""

    def __init__(self, doc: Any, path: str = "") -> None:
        self.doc = doc
        self.path = path

    def _fail(self, key: str, what: str) -> IntentError:
        return IntentError(f"malformed intent: {self.path}{key}: {what}")

    def get(self, key: str, kind: type) -> Any:
        if not isinstance(self.doc, dict) or key not in self.doc:
            raise self._fail(key, "missing")
        value = self.doc[key]
        # bool is an int subclass; an intent never uses one where the other is expected
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._fail(key, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def text(self, key: str) -> str:
        return str(self.get(key, str))

    def integer(self, key: str) -> int:
        return int(self.get(key, int))

    def obj(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict), f"{self.path}{key}.")

    def items(self, key: str) -> list[_Reader]:
        values: Sequence[Any] = self.get(key, list)
        return [_Reader(v, f"{self.path}{key}[{i}].") for i, v in enumerate(values)]

    def labels(self, key: str) -> dict[str, str]:
        value: dict[str, Any] = self.get(key, dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise self._fail(key, "labels must map strings to strings")
        return dict(value)


def _cluster(r: _Reader) -> ClusterRef:
    return ClusterRef(r.text("name"), r.text("region"), r.text("zone"), r.text("network"))


def from_json(doc: Any) -> ClusterIntent:
    r = _Reader(doc)
    if r.text("schema") != SCHEMA:
        raise IntentError(f"unsupported intent schema {doc['schema']!r} (expected {SCHEMA})")
    services = tuple(
        ServiceIntent(
            namespace=s.text("namespace"),
            name=s.text("name"),
            ports=tuple(Port(p.text("name"), p.integer("number"), p.text("protocol")) for p in s.items("ports")),
            backends=tuple(
                Backend(
                    cluster=_cluster(b.obj("cluster")),
                    address=b.text("address"),
                    port=b.integer("port"),
                    subsets=tuple(Subset(x.text("name"), x.labels("labels")) for x in b.items("subsets")),
                )
                for b in s.items("backends")
            ),
        )
        for s in r.items("services")
    )
    traffic = tuple(
        TrafficSplit(
            policy=t.text("policy"),
            namespace=t.text("namespace"),
            service=t.text("service"),
            targets=tuple(WeightedTarget(w.text("cluster"), w.integer("weight")) for w in t.items("targets")),
        )
        for t in r.items("traffic")
    )
    return ClusterIntent(cluster=_cluster(r.obj("cluster")), services=services, traffic=traffic)
