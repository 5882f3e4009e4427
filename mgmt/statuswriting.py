"""Writes each policy resource's status through the status subresource, only when it changed.

Runs in the hub's event loop; the API calls go to a worker thread (the client is
synchronous). The desired status is recomputed from the hub's facts every
`interval` seconds, so ACKs, NACKs and liveness changes reach the resources
without a write per event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from meshfleet.kubeclients import api_message
from mgmt.kubewatching import GROUP, PLURALS, VERSION, KubePolicySource
from mgmt.model import cr_ref
from mgmt.serving import Hub
from mgmt.statuses import cluster_states, failover_status, policy_status, same_status, trust_status

log = logging.getLogger(__name__)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PolicyStatusWriter:
    def __init__(self, hub: Hub, source: KubePolicySource, api: ApiClient, interval: float = 1.0,
                 now: Callable[[], str] = utc_now) -> None:
        self.hub, self.source = hub, source
        self.custom = CustomObjectsApi(api)
        self.interval = interval
        self.now = now
        # (status written, resourceVersion it was written over): skip rewriting until the watch catches up
        self._written: dict[tuple[str, str, str], tuple[dict[str, Any], str]] = {}
        self._settled: Any = None  # what the last round that wrote every status it had to was computed from
        self.writes = 0
        self.rounds = 0  # rounds that computed statuses (not skipped)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:  # a failed round must not end the writer; the next one retries
                log.exception("writing policy status failed")

    def desired(self, objects: dict[tuple[str, str, str], dict[str, Any]] | None = None
                ) -> dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, Any]]]:
        """(live object, desired status) of every watched resource by (kind, namespace, name)."""
        resources = {r.meta.key: r for r in self.source.resources.all()}
        errors: dict[str, list[str]] = {}
        for e in self.source.errors:
            errors.setdefault(e.file, []).append(e.message)  # e.file is the resource's ref (cr_ref)
        facts, now = self.hub.facts(), self.now()
        trust = self.hub.trust.status()
        failover = self.hub.evictions.document()
        out = {}
        for (kind, ns, name), obj in (self.source.objects() if objects is None else objects).items():
            key, ref = f"{kind}/{ns}/{name}", cr_ref(kind, ns, name)
            generation = int(obj["metadata"].get("generation") or 0)
            if kind == "TrustPolicy":
                out[(kind, ns, name)] = (obj, trust_status(obj.get("status"), generation, ref, errors.get(ref, []),
                                                           trust, now))
                continue
            resource = resources.get(key)
            if resource is None and ref not in errors:
                continue  # the source has not taken this version of the resource in yet
            states = [] if resource is None else cluster_states(
                key, self.hub.digest(resource), self.hub.concerned.get(key, ()), facts)
            status = policy_status(obj.get("status"), generation, errors.get(ref, []), states, now,
                                   self.hub.resource_problems.get(key, []))
            if kind == "FailoverPolicy":
                status.update(failover_status(key, failover))
            out[(kind, ns, name)] = (obj, status)
        return out

    async def flush(self) -> None:
        objects = self.source.objects()
        # statuses depend on the hub's facts (status_epoch moves with them) and on the live objects: when
        # neither moved since a round that wrote all it had to, this round would compute the same and write
        # nothing, so it is skipped (a fleet at rest costs no recomputation of every resource each second)
        inputs = (self.hub.status_epoch, sorted((k, o["metadata"].get("resourceVersion")) for k, o in objects.items()))
        if inputs == self._settled:
            return
        self.rounds += 1
        settled = True
        self._written = {k: v for k, v in self._written.items() if k in objects}
        for (kind, ns, name), (obj, status) in self.desired(objects).items():
            live_rv = obj["metadata"].get("resourceVersion", "")
            written = self._written.get((kind, ns, name))
            if same_status(obj.get("status"), status):
                continue
            if written is not None and same_status(written[0], status) and written[1] == live_rv:
                continue  # our write is not in the watch cache yet
            try:
                if ns:
                    await asyncio.to_thread(
                        self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, ns, PLURALS[kind], name,
                        {"status": status}, _content_type="application/merge-patch+json")
                else:  # a cluster-scoped kind (TrustPolicy)
                    await asyncio.to_thread(
                        self.custom.patch_cluster_custom_object_status, GROUP, VERSION, PLURALS[kind], name,
                        {"status": status}, _content_type="application/merge-patch+json")
            except ApiException as exc:
                if exc.status != 404:  # deleted meanwhile: nothing to report on
                    log.warning("status of %s %s/%s not written: %s", kind, ns, name, api_message(exc))
                    settled = False
                continue
            self._written[(kind, ns, name)] = (status, live_rv)
            self.writes += 1
        self._settled = inputs if settled else None

