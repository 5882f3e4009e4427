"""The agent's keeper of Istio's plug-in CA (`cacerts`): the I/O around meshfleet.pki's decisions.

* `CaKeeper.reconcile` compares what the store holds with the TrustIntent: it rewrites
  root-cert.pem alone when only the trust bundle moved and the intermediate still chains to
  it, and asks the hub for a new intermediate (one CSR outstanding at a time) when the held
  one is missing, unusable, from the wrong root or due for renewal.
* The intermediate's key is generated here, kept 0600 in the state directory until its
  certificate is installed, and never leaves the agent; nothing reported carries key material.
* Stores write the four files as one set: a directory in the kubelet's `..data` layout
  (embedded mode) or one server-side apply of the Secret `istio-system/cacerts`.
* Neither store overwrites CA material meshfleet did not write; a `cacerts` is never deleted.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import random
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from kubernetes.client.exceptions import ApiException

from agent.applying import FIELD_MANAGER, owned_by
from agent.kubeapi import Rest
from agent.render.context import CLUSTER_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from meshfleet import files, pki
from meshfleet.intents import TrustIntent
from meshfleet.kubeclients import api_message
from meshfleet.v1 import hub_pb2

log = logging.getLogger(__name__)

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CERT_CHAIN = "cert-chain.pem"
ROOT_CERT = "root-cert.pem"
FILE_NAMES = (CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT)
PENDING_KEY = "ca-pending.key"
"""File in the state directory holding the key of the intermediate asked for, until it is installed."""
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
WARNINGS_TTL = dt.timedelta(seconds=60)
"""How long report() reuses the Istio warnings before asking the store again."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CaStoreError(Exception):
    """The CA material cannot be read or written; the message names the store and says why."""


@dataclass(frozen=True)
class CaMaterial:
    """Istio's plug-in CA files, PEM bytes each."""

    ca_cert: bytes
    """ca-cert.pem: the cluster's intermediate CA certificate."""
    ca_key: bytes = field(repr=False)  # never in a log line or traceback
    """ca-key.pem: its private key."""
    cert_chain: bytes
    """cert-chain.pem: the intermediate followed by the root that issued it."""
    root_cert: bytes
    """root-cert.pem: every trusted root, the signing root first."""

    def files(self) -> dict[str, bytes]:
        return {CA_CERT: self.ca_cert, CA_KEY: self.ca_key, CERT_CHAIN: self.cert_chain, ROOT_CERT: self.root_cert}

    @classmethod
    def from_files(cls, data: Mapping[str, bytes]) -> CaMaterial:
        """From file name -> content; a missing file reads as empty (unusable, so the keeper replaces it)."""
        return cls(data.get(CA_CERT, b""), data.get(CA_KEY, b""), data.get(CERT_CHAIN, b""), data.get(ROOT_CERT, b""))


class CaStore(Protocol):
    """Where the cluster's Istio reads its plug-in CA from."""

    @property
    def describe(self) -> str:
        """The store as messages name it, e.g. `Secret istio-system/cacerts`."""
        ...

    def read(self) -> CaMaterial | None:
        """The material held, None if there is none; CaStoreError if it exists but is not usable by meshfleet."""
        ...

    def write(self, material: CaMaterial) -> None:
        """Replace the four files as one set (readers see the old set or the new one); CaStoreError on failure."""
        ...

    def istio_warnings(self) -> list[str]:
        """Istio settings found missing or wrong for a plug-in CA meshfleet rotates (never raises)."""
        ...

    def restart_istiod(self) -> None:
        """Make istiod load the new material by restarting it; CaStoreError on failure."""
        ...


# --------------------------------------------------------------------------- embedded mode: a directory


DATA_LINK = "..data"
_VERSION_DIR = re.compile(r"^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.")


class DirectoryCaStore:
    """The four files in a directory, swapped as a set the way the kubelet updates Secret volumes.

    `<dir>/..<stamp>/` holds one version (0700; ca-key.pem 0600, the rest 0644), `<dir>/..data` is a
    symlink to the current version, replaced atomically, and `<dir>/ca-cert.pem -> ..data/ca-cert.pem`
    etc. are what Istio opens, so it sees one version or the next, never a mix.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.describe = f"directory {path}"

    def _foreign(self) -> list[str]:
        """Our file names at the top level that are not our symlinks into ..data (someone else's files)."""
        if not os.path.lexists(self.path / DATA_LINK):
            return [n for n in FILE_NAMES if os.path.lexists(self.path / n)]
        return [n for n in FILE_NAMES if os.path.lexists(self.path / n)
                and not (os.path.islink(self.path / n) and os.readlink(self.path / n) == f"{DATA_LINK}/{n}")]

    def _refuse_foreign(self) -> None:
        try:
            foreign = self._foreign()
        except OSError as exc:
            raise CaStoreError(f"cannot read {self.describe}: {exc}") from exc
        if foreign:
            raise CaStoreError(f"{self.path} holds {', '.join(foreign)} that meshfleet did not write; meshfleet will "
                               "not overwrite it (move those files away to let meshfleet manage the directory)")

    def read(self) -> CaMaterial | None:
        self._refuse_foreign()
        # Read every file through one resolution of ..data, so a concurrent swap cannot mix versions; if
        # the version read from is removed halfway, read the new one.
        for _ in range(3):
            try:
                version = self.path / os.readlink(self.path / DATA_LINK)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise CaStoreError(f"cannot read {self.describe}: {exc}") from exc
            if not version.is_dir():
                continue
            data: dict[str, bytes] = {}
            try:
                for name in FILE_NAMES:
                    if (version / name).exists():
                        data[name] = (version / name).read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CaStoreError(f"cannot read {self.describe}: {exc}") from exc
            return CaMaterial.from_files(data)
        raise CaStoreError(f"cannot read {self.describe}: {DATA_LINK} keeps pointing at missing versions")

    def write(self, material: CaMaterial) -> None:
        self._refuse_foreign()
        try:
            self._write(material)
        except OSError as exc:
            raise CaStoreError(f"cannot write {self.describe}: {exc}") from exc

    def _write(self, material: CaMaterial) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        version = Path(tempfile.mkdtemp(prefix=f"..{stamp}.", dir=self.path))  # mode 0700
        for name, content in material.files().items():
            mode = files.PRIVATE_MODE if name == CA_KEY else 0o644
            fd = os.open(version / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fd, mode)  # whatever the umask
                fh.write(content)
                fh.flush()
                os.fsync(fd)
        files.fsync_dir(version)
        self._link(DATA_LINK, version.name)  # the switch to the new set: one rename
        for name in FILE_NAMES:
            target = f"{DATA_LINK}/{name}"
            if not (os.path.islink(self.path / name) and os.readlink(self.path / name) == target):
                self._link(name, target)
        files.fsync_dir(self.path)
        for entry in os.listdir(self.path):
            # The previous version, and any left by a write that crashed before its swap; only names of
            # the pattern we create, so a hand-edited ..data never makes us delete someone's directory.
            old = self.path / entry
            if entry != version.name and _VERSION_DIR.match(entry) and old.is_dir() and not old.is_symlink():
                # The new set is in place: a leftover that cannot be removed is no reason to fail the write.
                try:
                    shutil.rmtree(old)
                except OSError as exc:
                    log.warning("cannot remove the old version %s: %s", old, exc)

    def _link(self, name: str, target: str) -> None:
        """Point the symlink `name` at `target` atomically (a temporary link renamed over it)."""
        tmp = self.path / f"{name}_tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, self.path / name)

    def istio_warnings(self) -> list[str]:
        return []

    def restart_istiod(self) -> None:
        """Nothing to restart: in embedded mode no istiod runs beside the agent."""


# --------------------------------------------------------------------------- Kubernetes mode: the cacerts Secret


class SecretCaStore:
    """The Secret `<namespace>/<name>` (Opaque, the four files as data) and the istiod Deployment beside it.

    Owned like everything the agent writes (MANAGED_BY_LABEL, CLUSTER_LABEL); a Secret without
    those labels is never modified.  Written with one server-side apply, so the set changes at once.
    """

    def __init__(self, rest: Rest, cluster: str, namespace: str = "istio-system", name: str = "cacerts",
                 istiod: str = "istiod", clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.rest = rest
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.istiod = istiod
        self.clock = clock
        self.describe = f"Secret {namespace}/{name}"
        self._path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        self._istiod_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{istiod}"

    def _get(self, path: str, what: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] | None = self.rest.call("GET", path)
        except ApiException as exc:
            raise CaStoreError(f"cannot read {what}: {api_message(exc)}") from exc
        return found

    def _refuse_foreign(self, secret: Mapping[str, Any]) -> None:
        if not owned_by(secret, self.cluster):
            raise CaStoreError(
                f"{self.describe} exists and is not managed by meshfleet; meshfleet will not overwrite it: delete "
                f"it, or label it {MANAGED_BY_LABEL}={MANAGED_BY} and {CLUSTER_LABEL}={self.cluster} to let "
                "meshfleet take it over")

    def read(self) -> CaMaterial | None:
        secret = self._get(self._path, self.describe)
        if secret is None:
            return None
        self._refuse_foreign(secret)
        data = secret.get("data") or {}
        decoded: dict[str, bytes] = {}
        for name in FILE_NAMES:
            if name not in data:
                continue
            try:
                decoded[name] = base64.b64decode(data[name], validate=True)
            except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
                raise CaStoreError(f"{self.describe}: {name} is not base64 ({exc}); delete the Secret to let "
                                   "meshfleet write it again") from exc
        return CaMaterial.from_files(decoded)

    def write(self, material: CaMaterial) -> None:
        current = self._get(self._path, self.describe)  # re-checked: someone may have created it meanwhile
        if current is not None:
            self._refuse_foreign(current)
        body = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {MANAGED_BY_LABEL: MANAGED_BY, CLUSTER_LABEL: self.cluster}},
            "data": {name: base64.b64encode(content).decode() for name, content in material.files().items()},
        }
        try:
            self.rest.call("PATCH", self._path, body=body, content_type="application/apply-patch+yaml",
                           query=[("fieldManager", FIELD_MANAGER), ("force", "true")])
        except ApiException as exc:
            raise CaStoreError(f"cannot write {self.describe}: the API server refused: {api_message(exc)}") from exc

    def istio_warnings(self) -> list[str]:
        where = f"{self.namespace}/{self.istiod}"
        try:
            deployment = self._get(self._istiod_path, f"the istiod Deployment {where}")
            secret = self._get(self._path, self.describe)
        except CaStoreError as exc:
            return [f"cannot check istiod's settings: {exc}"]
        if deployment is None:
            return [f"istiod Deployment {where} not found: cannot check that istiod runs with "
                    f"ISTIO_MULTIROOT_MESH=true and has loaded {self.describe}"]
        warnings = []
        template = deployment.get("spec", {}).get("template", {})
        containers = template.get("spec", {}).get("containers") or [{}]
        container = next((c for c in containers if c.get("name") == "discovery"), containers[0])
        env = {e.get("name"): e.get("value") for e in container.get("env") or []}
        if env.get("ISTIO_MULTIROOT_MESH") != "true":
            warnings.append(f"istiod (Deployment {where}) does not set ISTIO_MULTIROOT_MESH=true: it will not accept "
                            "a root change without it, so a root rotation then needs restarts of istiod and of every "
                            "workload")
        if secret is not None:
            created = _timestamp(secret.get("metadata", {}).get("creationTimestamp"))
            starts = [t for t in (_timestamp((template.get("metadata", {}).get("annotations") or {}).get(RESTARTED_AT)),
                                  _timestamp(deployment.get("metadata", {}).get("creationTimestamp"))) if t]
            if created is not None and starts and created > max(starts):
                warnings.append(f"istiod started before {self.describe} existed and keeps its self-signed CA until "
                                "restarted (istiod reloads cacerts only if it started with a complete bundle)")
        return warnings

    def restart_istiod(self) -> None:
        """What `kubectl rollout restart` does: stamp the pod template, so the Deployment rolls its pods."""
        stamp = self.clock().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        try:
            found = self.rest.call("PATCH", self._istiod_path, body=body,
                                   content_type="application/strategic-merge-patch+json",
                                   query=[("fieldManager", FIELD_MANAGER)])
        except ApiException as exc:
            raise CaStoreError(f"cannot restart istiod: the API server refused: {api_message(exc)}") from exc
        if found is None:
            raise CaStoreError(f"cannot restart istiod: Deployment {self.namespace}/{self.istiod} not found")


def _timestamp(value: object) -> dt.datetime | None:
    """An RFC 3339 time from the API (None if absent or unreadable: the check it feeds is then skipped)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


# --------------------------------------------------------------------------- the keeper


def bundle_of(trust: TrustIntent) -> bytes:
    """The root-cert.pem a TrustIntent asks for: its roots' PEM in order."""
    return "".join(r if r.endswith("\n") else r + "\n" for r in trust.roots).encode()


@dataclass(frozen=True)
class _Sent:
    """The last CSR sent: its id (None once answered), when, and what it was built from."""

    request_id: str | None
    at: dt.datetime
    basis: tuple[object, ...]


class CaKeeper:
    """Keeps a cluster's plug-in CA as its TrustIntent asks, with intermediates the hub signs.

    Synchronous and not thread-safe (run it in one thread); reconcile, install and report never
    raise: failures become the report's `error` and a log line.
    """

    def __init__(self, store: CaStore, state_dir: Path, cluster: str, rng: Callable[[], float] = random.random,
                 clock: Callable[[], dt.datetime] = _utcnow, retry_after: float = 30.0) -> None:
        self.store = store
        self.state_dir = state_dir
        self.cluster = cluster
        self.rng = rng
        self.clock = clock
        self.retry_after = dt.timedelta(seconds=retry_after)
        self._trust: TrustIntent | None = None
        self._roots: list[x509.Certificate] = []
        self._jitter: dict[str, float] = {}
        self._sent: _Sent | None = None
        self._reconcile_error = ""  # from the last reconcile; replaced by each
        self._issue_error = ""  # from the last answer; cleared once an intermediate is installed or not needed
        # istiod has not been restarted since cacerts changed (restartIstiod): the cluster is not at its target
        # until it is, since an istiod that does not reload keeps serving the old material
        self._restart_error = ""
        self._restart_due = False
        self._parsed: tuple[tuple[bytes, bytes], tuple[x509.Certificate | None, str]] | None = None
        self._warnings: tuple[dt.datetime, list[str]] | None = None

    @property
    def pending_key_path(self) -> Path:
        return self.state_dir / PENDING_KEY

    # reconcile --------------------------------------------------------------------------------
    def reconcile(self, trust: TrustIntent | None) -> hub_pb2.IntermediateRequest | None:
        """Bring the store to `trust`; the CSR to send to the hub, or None (nothing to ask, or one outstanding)."""
        try:
            return self._reconcile(trust, self.clock())
        except (CaStoreError, pki.PkiError, OSError) as exc:
            self._reconcile_error = str(exc)
            log.warning("plug-in CA in %s: %s", self.store.describe, exc)
        except Exception as exc:  # the contract is "never raises": a bug must not kill the agent's CA thread
            self._reconcile_error = f"internal error: {exc!r}"
            log.exception("plug-in CA in %s: unexpected failure", self.store.describe)
        return None

    def _reconcile(self, trust: TrustIntent | None, now: dt.datetime) -> hub_pb2.IntermediateRequest | None:
        self._reconcile_error = ""
        if trust is None:
            # meshfleet manages no CA here (any more): leave whatever cacerts exists alone.
            self._trust, self._roots, self._sent, self._issue_error = None, [], None, ""
            return None
        bundle = bundle_of(trust)
        roots = pki.load_certs(bundle, "the trust bundle of the intent")
        if trust.signer not in {pki.fingerprint(r) for r in roots}:
            raise pki.PkiError(f"the signing root {trust.signer[:12]} is not in the intent's trust bundle")
        self._trust, self._roots = trust, roots
        material = self.store.read()
        cert, why = self._held(material)
        if cert is not None and material is not None:
            renewal = pki.intermediate_renewal(cert, roots, trust.signer, now, trust.renew_before_percent,
                                               self._jitter_of(cert))
            usable = pki.issuer_among(cert, roots) is not None and now < cert.not_valid_after_utc
            if material.root_cert != bundle and usable:
                # Trust the new bundle now, whatever happens to the intermediate: a new signing root must
                # be trusted everywhere before any intermediate it issues is used.
                self.store.write(replace(material, root_cert=bundle))
                log.info("%s: trust bundle updated to %d root(s), intermediate kept", self.store.describe, len(roots))
                self._restart_due = trust.restart_istiod
            self._restart_if_due(trust)
            why = renewal.reason if renewal.due else ""
        if not why:
            self._sent, self._issue_error = None, ""
            self.pending_key_path.unlink(missing_ok=True)
            return None
        return self._request(trust, now, why)

    def _held(self, material: CaMaterial | None) -> tuple[x509.Certificate | None, str]:
        """The held intermediate if its certificate and key parse and match, else why not."""
        if material is None:
            return None, f"{self.store.describe} holds no intermediate yet"
        # parsed once per content: loading an RSA-4096 key validates it (about 0.2 s), and this runs every tick
        if self._parsed is not None and self._parsed[0] == (material.ca_cert, material.ca_key):
            return self._parsed[1]
        try:
            cert = pki.load_certs(material.ca_cert, CA_CERT)[0]
            key = pki.load_key(material.ca_key, CA_KEY)
        except pki.PkiError as exc:
            return None, f"the held intermediate is unusable: {exc}"
        held: tuple[x509.Certificate | None, str] = (cert, "") if pki.same_public_key(key, cert) else (
            None, f"the held intermediate is unusable: {CA_KEY} does not match {CA_CERT}")
        self._parsed = ((material.ca_cert, material.ca_key), held)
        return held

    def _jitter_of(self, cert: x509.Certificate) -> float:
        """The renewal jitter of `cert`, drawn once so its renewal time does not move between reconciles."""
        fp = pki.fingerprint(cert)
        if fp not in self._jitter:
            self._jitter = {fp: self.rng()}  # only the held intermediate's is ever needed again
        return self._jitter[fp]

    def _request(self, trust: TrustIntent, now: dt.datetime, why: str) -> hub_pb2.IntermediateRequest | None:
        # A change of what the CSR or its answer depends on makes the outstanding request moot: ask at once.
        basis = (trust.signer, trust.trust_domain, trust.path_length, trust.key_algorithm, trust.ttl_seconds)
        sent = self._sent
        if sent is not None and sent.basis == basis and now - sent.at < self.retry_after:
            return None
        key = self._pending_key(trust.key_algorithm)
        csr = pki.intermediate_csr(key, self.cluster, trust.trust_domain, trust.path_length)
        request_id = secrets.token_hex(16)
        self._sent = _Sent(request_id, now, basis)
        log.info("%s: asking the hub for an intermediate CA (request %s): %s", self.store.describe, request_id, why)
        return hub_pb2.IntermediateRequest(request_id=request_id, csr_pem=csr, ttl_seconds=trust.ttl_seconds)

    def _pending_key(self, algorithm: str) -> pki.PrivateKey:
        """The key of the intermediate being asked for: generated once, kept across restarts until installed."""
        path = self.pending_key_path
        if path.exists():
            try:
                key = pki.load_key(path.read_bytes(), str(path))
            except pki.PkiError as exc:
                log.warning("%s; generating a new key", exc)
            else:
                if pki.algorithm_of(key) == algorithm:
                    return key
                log.info("%s is not %s any more; generating a new key", path, algorithm)
        key = pki.generate_key(algorithm)
        files.ensure_private_dir(self.state_dir)
        files.write_private(path, pki.key_pem(key))
        return key

    def forget_outstanding(self) -> None:
        """Drop the outstanding request (its stream is gone), so the next reconcile sends one at once."""
        self._sent = None

    # install ----------------------------------------------------------------------------------
    def install(self, issued: hub_pb2.IntermediateIssued) -> None:
        """Verify the hub's answer to the outstanding request and write it to the store (never raises)."""
        sent = self._sent
        if sent is None or sent.request_id is None or issued.request_id != sent.request_id:
            log.info("ignoring the hub's answer to request %r: not the outstanding request", issued.request_id)
            return
        now = self.clock()
        # Answered, whatever follows: a failure below re-sends the same CSR only after retry_after.
        self._sent = replace(sent, request_id=None, at=now)
        trust = self._trust
        if trust is None:
            log.info("ignoring the hub's intermediate: meshfleet manages no CA in this cluster any more")
            return
        if issued.error:
            self._issue_error = f"hub refused the CSR: {issued.error}"
            log.warning("%s", self._issue_error)
            return
        try:
            self._install(issued, trust, now)
        except (CaStoreError, pki.PkiError, OSError) as exc:
            self._issue_error = f"the intermediate issued by the hub was not installed: {exc}"
            log.warning("%s", self._issue_error)
        except Exception as exc:  # the contract is "never raises", as for reconcile
            self._issue_error = f"the intermediate issued by the hub was not installed: internal error: {exc!r}"
            log.exception("installing the hub's intermediate failed unexpectedly")

    def _install(self, issued: hub_pb2.IntermediateIssued, trust: TrustIntent, now: dt.datetime) -> None:
        key = pki.load_key(self.pending_key_path.read_bytes(), str(self.pending_key_path))
        cert = pki.load_certs(issued.certificate_pem, "the issued certificate")[0]
        if not pki.same_public_key(key, cert):
            raise pki.PkiError("the issued certificate is for another key than the one this agent asked for")
        signer = next(r for r in self._roots if pki.fingerprint(r) == trust.signer)  # reconcile checked it is there
        if not pki.issued_by(cert, signer):
            raise pki.PkiError(f"the issued certificate was not issued by the signing root {trust.signer[:12]}")
        if now >= cert.not_valid_after_utc:
            raise pki.PkiError(f"the issued certificate expired at {cert.not_valid_after_utc.isoformat()}")
        chain = pki.load_certs(issued.chain_pem, "the issued certificate chain")
        if chain[0] != cert:
            raise pki.PkiError("the issued certificate chain does not start with the issued certificate")
        self.store.write(CaMaterial(ca_cert=pki.cert_pem(cert), ca_key=pki.key_pem(key),
                                    cert_chain=pki.bundle_pem(chain), root_cert=bundle_of(trust)))
        log.info("%s: installed intermediate %s (until %s)", self.store.describe, pki.fingerprint(cert)[:12],
                 cert.not_valid_after_utc.isoformat())
        self._sent, self._issue_error, self._warnings = None, "", None  # a new Secret may change the warnings
        self.pending_key_path.unlink(missing_ok=True)
        self._restart_due = trust.restart_istiod
        self._restart_if_due(trust)

    def _restart_if_due(self, trust: TrustIntent) -> None:
        """Restart istiod after cacerts changed, if the policy asks; a failure keeps the cluster off target."""
        if not (self._restart_due and trust.restart_istiod):
            self._restart_due, self._restart_error = False, ""
            return
        try:
            self.store.restart_istiod()
        except CaStoreError as exc:
            # cacerts is written all the same; retried on every reconcile, and the cluster does not confirm the
            # target meanwhile, since an istiod that does not reload may still serve the old material
            why = f"cacerts is up to date in {self.store.describe}, but {exc}"
            if why != self._restart_error:
                log.warning("%s", why)
            self._restart_error = why
            return
        self._restart_due, self._restart_error = False, ""

    # report -----------------------------------------------------------------------------------
    def report(self) -> hub_pb2.CaReport:
        """What the store holds now, the last error and Istio's warnings; never key material (never raises)."""
        out = hub_pb2.CaReport(error=self._reconcile_error or self._issue_error or self._restart_error)
        try:
            material = self.store.read()
        except CaStoreError as exc:
            if self._trust is not None:  # a cacerts meshfleet is not asked to manage is none of its business
                out.error = out.error or str(exc)
            material = None
        except Exception as exc:  # as for reconcile: a report is always sent
            log.exception("reading %s failed unexpectedly", self.store.describe)
            out.error = out.error or f"internal error: {exc!r}"
            material = None
        if material is not None:
            self._describe(material, out)
        if self._trust is not None:
            out.warnings.extend(self._istio_warnings())
        return out

    @staticmethod
    def _describe(material: CaMaterial, out: hub_pb2.CaReport) -> None:
        try:
            roots = pki.load_certs(material.root_cert, ROOT_CERT)
        except pki.PkiError:
            roots = []
        out.bundle.extend(pki.fingerprint(r) for r in roots)
        try:
            cert = pki.load_certs(material.ca_cert, CA_CERT)[0]
        except pki.PkiError:
            return
        out.intermediate = pki.fingerprint(cert)
        issuer = pki.issuer_among(cert, roots)
        out.issuer = pki.fingerprint(issuer) if issuer is not None else ""
        out.not_after_unix = int(cert.not_valid_after_utc.timestamp())

    def _istio_warnings(self) -> list[str]:
        now = self.clock()
        if self._warnings is None or now - self._warnings[0] >= WARNINGS_TTL:
            try:
                self._warnings = (now, self.store.istio_warnings())
            except Exception as exc:  # the stores' contract is "never raises"; a broken one must not stop reports
                log.exception("checking Istio's settings failed")
                self._warnings = (now, [f"cannot check Istio's settings: {exc!r}"])
        return list(self._warnings[1])
