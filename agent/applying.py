"""The Kubernetes sink: server-side apply of rendered objects, ownership, inventory, pruning.

* Applies with server-side apply (field manager `meshfleet-agent`, force: the
  objects are ours, so fields someone edited by hand are taken back).
* Owns an object only if it carries the ownership labels; an object of the same
  name without them is never modified or deleted, and the apply is NACKed.
* Keeps an inventory of what it applied in a ConfigMap, widened before any write
  and narrowed after pruning, so a crash never leaves an applied object untracked.
  An owned object no longer rendered is pruned unless the caller holds it (see
  agent.retention): then it is left as it is and stays in the inventory.
* Writes nothing when the live object already holds every rendered field (a
  resync costs reads, never writes).
* Retries 409/429/5xx with capped exponential backoff (honouring Retry-After);
  any other refusal (e.g. 422 from validation or admission) becomes a SinkError
  carrying the API server's message, which the agent NACKs with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from agent.kubeapi import Rest
from agent.render.context import CLUSTER_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from agent.writing import ApplyResult, SinkError
from meshfleet.kubeclients import api_message

log = logging.getLogger(__name__)

FIELD_MANAGER = "meshfleet-agent"
INVENTORY_NAMESPACE = "istio-system"


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str

    def collection(self, namespace: str) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{base}/namespaces/{namespace}/{self.plural}"


KINDS = {(k.api_version, k.kind): k for k in (
    Kind("networking.istio.io/v1", "ServiceEntry", "serviceentries"),
    Kind("networking.istio.io/v1", "DestinationRule", "destinationrules"),
    Kind("networking.istio.io/v1", "VirtualService", "virtualservices"),
    Kind("networking.istio.io/v1", "Gateway", "gateways"),
    Kind("security.istio.io/v1", "AuthorizationPolicy", "authorizationpolicies"),
    Kind("security.istio.io/v1", "PeerAuthentication", "peerauthentications"),
    Kind("v1", "Secret", "secrets"),
    Kind("v1", "ConfigMap", "configmaps"),
)}


@dataclass(frozen=True)
class Ref:
    """An object's identity, as recorded in the inventory."""

    api_version: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Ref:
        return cls(obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])

    def path(self) -> str:
        kind = KINDS.get((self.api_version, self.kind))
        if kind is None:
            raise SinkError(f"{self}: the agent does not know how to apply {self.api_version} {self.kind}")
        return f"{kind.collection(self.namespace)}/{self.name}"


def contains(live: Any, wanted: Any) -> bool:
    """True if every field of `wanted` is in `live` with the same value (lists compared whole)."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in wanted.items())
    return bool(live == wanted)


def owned_by(obj: Mapping[str, Any], cluster: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(CLUSTER_LABEL) == cluster


class KubernetesSink:
    def __init__(self, rest: Rest, cluster: str, inventory_namespace: str = INVENTORY_NAMESPACE) -> None:
        self.rest = rest
        self.cluster = cluster
        self.inventory_ref = Ref("v1", "ConfigMap", inventory_namespace, f"meshfleet-inventory-{cluster}")

    def _get(self, ref: Ref) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.rest.call("GET", ref.path())
        return found

    def _apply(self, obj: Mapping[str, Any]) -> None:
        self.rest.call("PATCH", Ref.of(obj).path(), body=dict(obj), content_type="application/apply-patch+yaml",
                   query=[("fieldManager", FIELD_MANAGER), ("force", "true")])

    # inventory --------------------------------------------------------------------------------
    def inventory(self) -> set[Ref]:
        cm = self._get(self.inventory_ref)
        if cm is None:
            return set()
        try:
            return {Ref(*item) for item in json.loads((cm.get("data") or {}).get("objects", "[]"))}
        except (TypeError, ValueError) as exc:
            raise SinkError(f"inventory {self.inventory_ref} is corrupt ({exc}); refusing to apply or prune "
                            "until it is fixed or deleted") from exc

    def _save_inventory(self, refs: Iterable[Ref]) -> None:
        items = sorted([r.api_version, r.kind, r.namespace, r.name] for r in refs)
        self._apply({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": self.inventory_ref.name, "namespace": self.inventory_ref.namespace,
                         "labels": {MANAGED_BY_LABEL: MANAGED_BY, CLUSTER_LABEL: self.cluster}},
            "data": {"objects": json.dumps(items)},
        })

    def key(self, obj: Mapping[str, Any]) -> str:
        return str(Ref.of(obj))

    def holds(self, objects: Iterable[Mapping[str, Any]], extra: Iterable[str] = ()) -> bool:
        """True if the cluster holds these objects, owned, and the inventory lists nothing else but keys in
        `extra` (objects kept after they stopped being rendered; their content is not checked)."""
        rendered = {Ref.of(o): o for o in objects}
        try:
            owned = self.inventory()
            if not set(rendered) <= owned or not {str(r) for r in owned - set(rendered)} <= set(extra):
                return False
            for ref, obj in rendered.items():
                found = self._get(ref)
                if found is None or not owned_by(found, self.cluster) or not contains(found, obj):
                    return False
        except ApiException:
            return False
        return True

    # apply ------------------------------------------------------------------------------------
    @contextmanager
    def _step(self, what: object) -> Iterator[None]:
        """Turn an API refusal into a SinkError naming the object and quoting the server."""
        try:
            yield
        except ApiException as exc:
            raise SinkError(f"{what}: the API server refused: {api_message(exc)}") from exc

    def apply(self, objects: Iterable[Mapping[str, Any]], hold: Callable[[str], bool] | None = None) -> ApplyResult:
        """Make the cluster hold exactly `objects` among what this agent owns, but leave alone (and still own)
        the objects no longer rendered for which `hold(str(ref))` is True."""
        rendered = {Ref.of(o): o for o in objects}
        with self._step(self.inventory_ref):
            owned = self.inventory()
        live = {}
        for ref in rendered:
            with self._step(ref):
                live[ref] = self._get(ref)
        foreign = sorted(str(ref) for ref, obj in live.items() if obj is not None and not owned_by(obj, self.cluster))
        if foreign:
            raise SinkError(f"refusing to modify {foreign[0]}: it exists and is not managed by meshfleet "
                            f"({len(foreign)} such object(s))")
        if set(rendered) - owned:
            with self._step(self.inventory_ref):
                self._save_inventory(owned | set(rendered))
        written = unchanged = pruned = 0
        for ref, obj in rendered.items():
            if live[ref] is not None and contains(live[ref], obj):
                unchanged += 1
                continue
            with self._step(ref):
                self._apply(obj)
            written += 1
        held: list[Ref] = []
        for ref in sorted(owned - set(rendered), key=str):
            if hold is not None and hold(str(ref)):
                held.append(ref)  # not even read: keeping costs no request
                continue
            with self._step(ref):
                current = self._get(ref)
                if current is None:
                    continue
                if not owned_by(current, self.cluster):
                    log.warning("not pruning %s: its ownership labels were removed", ref)
                    continue
                self.rest.call("DELETE", ref.path())
            pruned += 1
        if owned != set(rendered) | set(held):
            with self._step(self.inventory_ref):
                self._save_inventory(set(rendered) | set(held))
        return ApplyResult(written, unchanged, pruned, tuple(str(r) for r in held))
