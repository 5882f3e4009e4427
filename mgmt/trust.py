"""The hub's mesh CA: the TrustPolicy in effect, its roots, CSR signing, agents' CA reports, root rotation.

The decisions are pure (mgmt.certs signs, mgmt.rotation plans); this adapter owns what they
need: the root store (keys), the clock, and persistence in hub.db, so a hub restarted in the
middle of a rotation resumes where it stood. Everything runs on the hub's event loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from kubernetes.client import ApiClient

from meshfleet.intents import TrustIntent
from meshfleet.pki import PkiError, PrivateKey, cert_pem, fingerprint, generate_key, load_certs
from meshfleet.v1 import hub_pb2
from mgmt import rotation
from mgmt.certs import CSRRefused, IssuancePolicy, Root, check_intermediate_csr, new_root, sign_intermediate
from mgmt.model import TrustPolicy, age
from mgmt.registry import Registry
from mgmt.roots import RootStore, RootStoreError, load_supplied
from mgmt.rotation import CaFacts, RotationError, TrustState
from mgmt.statuses import rfc3339

log = logging.getLogger(__name__)

ROTATE = "rotate-root"
ROLLBACK = "rollback"
ACTIONS = (ROTATE, ROLLBACK)
REQUEST_KEY = "trust_request"
REQUEST_TTL = 600.0
"""A certs request the hub did not take within this many seconds (no hub running) is dropped, not acted on."""
RESULT_KEY = "trust_request_result"
STATUS_KEY = "trust_status"
_STATE_KEY = "trust_state"
_ROOTS_KEY = "trust_roots"
_ABANDONED_KEY = "trust_abandoned"


def facts_of(report: hub_pb2.CaReport, now: float) -> CaFacts:
    return CaFacts(bundle=tuple(report.bundle), issuer=report.issuer, intermediate=report.intermediate,
                   not_after=float(report.not_after_unix), error=report.error, warnings=tuple(report.warnings),
                   reported_at=now)


@dataclass(frozen=True)
class Signed:
    """The answer to one CSR, and what the hub logs of it."""

    message: hub_pb2.IntermediateIssued
    not_after: float = 0.0


class TrustManager:
    def __init__(self, registry: Registry, store: RootStore, api: ApiClient | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`store` keeps generated roots; `api` reads supplied roots' Secrets (Kubernetes mode)."""
        self.registry = registry
        self.store = store
        self.api = api
        self.clock = clock
        self.policy: TrustPolicy | None = None
        self.problems: tuple[str, ...] = ()
        saved = registry.get_meta(_STATE_KEY)
        self.state: TrustState | None = None if saved is None else TrustState.from_json(saved)
        self.certs: dict[str, x509.Certificate] = {}
        for fp, pem in (registry.get_meta(_ROOTS_KEY) or {}).items():
            self.certs[fp] = load_certs(pem.encode(), f"root {fp[:12]} in hub.db")[0]
        self._keys: dict[str, PrivateKey] = {}
        # roots a rollback abandoned: a supplied root still in its Secret must not be rotated to again at once
        self._abandoned: set[str] = set(registry.get_meta(_ABANDONED_KEY) or [])
        self.reports: dict[str, CaFacts] = {c: CaFacts(**(d | _tuples(d))) for c, d in registry.ca_reports().items()}
        self.waiting: Mapping[str, str] = {}
        self.next_at: float | None = None
        self.events: deque[tuple[float, str]] = deque(maxlen=20)
        self.signed = 0  # intermediates issued since start
        self._unsaved: set[str] = set()  # clusters whose report is not in hub.db yet (see flush)
        self._intent: TrustIntent | None = None

    # the policy -------------------------------------------------------------------------------
    def configure(self, policies: Iterable[TrustPolicy]) -> bool:
        """Take the TrustPolicy in effect (the oldest); True if what clusters must hold changed."""
        chosen = sorted(policies, key=age)
        problems = [f"{p.meta.ref} is ignored: one TrustPolicy per fleet, and {chosen[0].meta.ref} is older"
                    for p in chosen[1:]]
        self.policy = chosen[0] if chosen else None
        if self.policy is not None:
            try:
                self._ensure_root(self.policy)
            except (RootStoreError, PkiError, RotationError) as exc:
                problems.append(f"{self.policy.meta.ref}: {exc}")
                log.error("%s: %s", self.policy.meta.ref, exc)
        self.problems = tuple(problems)
        return self._rebuild()

    def _remember(self, root: Root) -> str:
        fp = fingerprint(root.cert)
        if fp not in self.certs:
            self.certs[fp] = root.cert
            self.registry.set_meta(_ROOTS_KEY, {f: cert_pem(c).decode() for f, c in self.certs.items()})
        return fp

    def _generate(self, policy: TrustPolicy) -> str:
        now = self.clock()
        key = generate_key(policy.algorithm)
        stamp = dt.datetime.fromtimestamp(now, dt.UTC)
        cert = new_root(key, policy.trust_domain, stamp, dt.timedelta(seconds=policy.root_validity),
                        name=f"meshfleet root CA {stamp:%Y-%m-%dT%H:%M:%SZ}")
        root = Root(cert, key)
        self.store.save(root)
        fp = self._remember(root)
        log.info("generated root %s (%s, valid until %s)", fp[:12], policy.algorithm,
                 cert.not_valid_after_utc.isoformat())
        return fp

    def _ensure_root(self, policy: TrustPolicy) -> None:
        now = self.clock()
        if policy.generate:
            if self.state is None:
                self._set_state(rotation.initial(self._generate(policy), now), "root generated")
            return
        supplied = load_supplied(policy, self.api, dt.datetime.fromtimestamp(now, dt.UTC))
        fp = self._remember(supplied)
        if supplied.key is not None and fp not in self._keys:
            # a copy in the hub's own root store (0600 file, or Secret in its namespace): a rotation away from
            # this root still needs its key after the user's Secret or file moved on to the next one
            self.store.save(supplied)
            self._keys[fp] = supplied.key
        if self.state is None:
            self._set_state(rotation.initial(fp, now), f"supplied root {fp[:12]} taken")
        elif fp not in self.state.roots:
            if fp in self._abandoned:
                raise RotationError(f"the supplied root {fp[:12]} was rolled back; the hub does not rotate to it "
                                    "again: put another root in the TrustPolicy's Secret or files to rotate")
            if self.state.phase != rotation.IDLE:
                raise RotationError(f"the supplied root changed to {fp[:12]} during a rotation; it is taken up once "
                                    f"the rotation ({self.state.phase}) ends")
            self._set_state(rotation.start_rotation(self.state, fp, now),
                            f"the supplied root changed: rotating to {fp[:12]}")

    def _root(self, fp: str) -> Root:
        key = self._keys.get(fp)
        if key is None:
            try:
                stored = self.store.load(fp)
            except (RootStoreError, PkiError) as exc:
                log.error("loading root %s: %s", fp[:12], exc)
                stored = None
            if stored is not None and stored.key is not None:
                key = self._keys[fp] = stored.key
        return Root(self.certs[fp], key)

    # what clusters hold -----------------------------------------------------------------------
    def intent(self) -> TrustIntent | None:
        """The trust section of every cluster's intent (one object, shared while unchanged)."""
        return self._intent

    def _rebuild(self) -> bool:
        p, s = self.policy, self.state
        intent = None
        if p is not None and s is not None and all(fp in self.certs for fp in s.bundle):
            intent = TrustIntent(
                trust_domain=p.trust_domain, roots=tuple(cert_pem(self.certs[fp]).decode() for fp in s.bundle),
                signer=s.active, key_algorithm=p.algorithm, ttl_seconds=int(p.intermediate_ttl),
                renew_before_percent=p.renew_before_percent, path_length=p.path_length,
                restart_istiod=p.restart_istiod)
        if intent == self._intent:
            return False
        self._intent = intent
        return True

    def _set_state(self, state: TrustState, why: str) -> None:
        if state == self.state:
            return
        phase_changed = self.state is None or state.phase != self.state.phase or state.bundle != self.state.bundle
        self.state = state
        self.registry.set_meta(_STATE_KEY, state.to_json())
        if phase_changed:
            self._event(f"{state.phase}: {why}")

    def _event(self, message: str) -> None:
        self.events.append((self.clock(), message))
        log.info("trust: %s", message)

    # agents -----------------------------------------------------------------------------------
    def sign(self, cluster: str, request: hub_pb2.IntermediateRequest) -> Signed:
        """Sign `cluster`'s intermediate CSR (the cluster is the caller's mTLS identity) or say why not."""
        def refused(why: str) -> Signed:
            log.warning("intermediate CSR of cluster %s refused: %s", cluster, why)
            return Signed(hub_pb2.IntermediateIssued(request_id=request.request_id, error=why))

        p, s = self.policy, self.state
        if p is None or s is None or self._intent is None:
            return refused("no TrustPolicy is in effect on the hub, so it runs no mesh CA" if p is None
                           else "the hub has no usable root: " + "; ".join(self.problems))
        policy = IssuancePolicy(p.trust_domain, dt.timedelta(seconds=p.intermediate_ttl), p.path_length)
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        # what is asked beyond the policy is capped by it anyway; clamping first keeps timedelta in range
        asked = min(request.ttl_seconds, int(p.intermediate_ttl))
        try:
            csr = check_intermediate_csr(request.csr_pem, cluster, policy)
            root = self._root(s.active)
            cert = sign_intermediate(root, csr, cluster, policy, now,
                                     dt.timedelta(seconds=asked) if asked > 0 else None)
        except CSRRefused as exc:
            return refused(str(exc))
        except Exception as exc:  # e.g. a key of an algorithm the library cannot load: an answer, not a dead stream
            log.exception("signing the intermediate of cluster %s failed", cluster)
            return refused(f"the CSR could not be processed: {exc!r}")
        self.signed += 1
        log.info("signed the intermediate of cluster %s under root %s (valid until %s)", cluster, s.active[:12],
                 cert.not_valid_after_utc.isoformat())
        return Signed(hub_pb2.IntermediateIssued(request_id=request.request_id, certificate_pem=cert_pem(cert),
                                                 chain_pem=cert_pem(cert) + cert_pem(root.cert)),
                      cert.not_valid_after_utc.timestamp())

    def report(self, cluster: str, report: hub_pb2.CaReport) -> bool:
        """Record a cluster's CA report; True if it differs from the last one."""
        facts = facts_of(report, self.clock())
        old = self.reports.get(cluster)
        if old is not None and (old.bundle, old.issuer, old.intermediate, old.not_after, old.error, old.warnings) \
                == (facts.bundle, facts.issuer, facts.intermediate, facts.not_after, facts.error, facts.warnings):
            return False
        if facts.error and (old is None or old.error != facts.error):
            log.error("cluster %s cannot bring its CA to the target: %s", cluster, facts.error)
        for w in set(facts.warnings) - set(old.warnings if old else ()):
            log.warning("cluster %s: %s", cluster, w)
        self.reports[cluster] = facts
        self._unsaved.add(cluster)
        return True

    def flush(self) -> None:
        """Persist the reports that changed since the last flush, in one transaction."""
        if self._unsaved:
            self.registry.save_ca_reports({c: _facts_json(self.reports[c]) for c in self._unsaved
                                           if c in self.reports})
            self._unsaved.clear()

    def forget(self, clusters: Set[str]) -> None:
        """Drop the reports of clusters that left the fleet (they no longer hold a rotation)."""
        for gone in set(self.reports) - set(clusters):
            del self.reports[gone]
            self._unsaved.discard(gone)

    # rotation ---------------------------------------------------------------------------------
    def step(self, registered: Set[str], connected: Set[str]) -> bool:
        """Advance the rotation as far as reports allow; True if what clusters must hold changed."""
        if self.state is None or self.policy is None:
            self.waiting, self.next_at = {}, None
            return False
        required = {c for c, f in self.reports.items() if c in registered and (f.intermediate or f.error)}
        plan = rotation.step(self.state, self.reports, required, required - connected, self.clock(),
                             self.policy.grace_period)
        for event in plan.events:
            self._event(event)
        self.waiting, self.next_at = plan.waiting, plan.next_at
        if plan.state != self.state:
            self.state = plan.state
            self.registry.set_meta(_STATE_KEY, plan.state.to_json())
        return self._rebuild()

    def command(self, action: str) -> str:
        """Start a root rotation or roll one back; the message for the user. Raises RotationError."""
        if action not in ACTIONS:
            raise RotationError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        try:
            return self._command(action)
        except (RootStoreError, PkiError) as exc:  # e.g. the new root's Secret cannot be created
            raise RotationError(f"{action} failed: {exc}") from exc

    def _command(self, action: str) -> str:
        p, s = self.policy, self.state
        if p is None or s is None:
            raise RotationError("no TrustPolicy is in effect on the hub")
        now = self.clock()
        if action == ROTATE:
            if not p.generate:
                raise RotationError(f"{p.meta.ref} supplies its root: put the new root in its "
                                    f"{'Secret' if p.secret_ref else 'files'} and the hub rotates to it")
            if s.phase != rotation.IDLE:
                raise RotationError(f"a root rotation is already under way (phase {s.phase})")
            fp = self._generate(p)
            self._set_state(rotation.start_rotation(s, fp, now), f"rotation to root {fp[:12]} started")
            message = f"root rotation started: new root {fp[:12]}, phase {rotation.ADDING_ROOT}"
        else:
            back = rotation.rollback(s, now)
            self._abandoned.add(back.outgoing)
            self.registry.set_meta(_ABANDONED_KEY, sorted(self._abandoned))
            self._set_state(back, f"rollback to root {back.active[:12]} started")
            message = f"rollback started: back to root {back.active[:12]}, phase {back.phase}"
        self._rebuild()
        return message

    # status -----------------------------------------------------------------------------------
    def root_states(self) -> list[tuple[str, str]]:
        """(fingerprint, Incoming|Active|Outgoing) of every root the current state involves."""
        s = self.state
        if s is None:
            return []
        return [(fp, "Active" if fp == s.active else "Incoming" if fp == s.incoming else "Outgoing")
                for fp in s.roots]

    def status(self) -> dict[str, Any]:
        """A JSON document of the mesh CA: `meshfleet certs status` and the TrustPolicy status are built from it."""
        s = self.state
        return {
            "policy": self.policy.meta.ref if self.policy else None,
            "trustDomain": self.policy.trust_domain if self.policy else None,
            "phase": s.phase if s else None,
            "since": s.since if s else None,
            "activeRoot": s.active if s else None,
            "bundle": list(s.bundle) if s else [],
            "roots": [{"fingerprint": fp, "state": st,
                       "notAfter": rfc3339(self.certs[fp].not_valid_after_utc.timestamp())}
                      for fp, st in self.root_states() if fp in self.certs],
            "waiting": dict(self.waiting),
            "nextStepAt": self.next_at,
            "gracePeriod": self.policy.grace_period if self.policy else None,
            "problems": list(self.problems),
            "events": [{"at": at, "message": m} for at, m in self.events],
            "signed": self.signed,
            "clusters": {c: _facts_json(f) | {"confirms": s is not None and rotation.confirms(s, f) is None}
                         for c, f in sorted(self.reports.items())},
        }


def _tuples(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"bundle": tuple(doc.get("bundle", ())), "warnings": tuple(doc.get("warnings", ()))}


def _facts_json(f: CaFacts) -> dict[str, Any]:
    return {"bundle": list(f.bundle), "issuer": f.issuer, "intermediate": f.intermediate, "not_after": f.not_after,
            "error": f.error, "warnings": list(f.warnings), "reported_at": f.reported_at}
