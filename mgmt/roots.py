"""Where the hub keeps root CA material: generated roots in a RootStore, supplied roots read where the user put them.

A generated root's key never leaves the hub: a `FileRootStore` keeps it in the hub's state
directory (embedded mode), a `SecretRootStore` in a Secret of the hub's own namespace
(Kubernetes mode). A supplied root (TrustPolicy `root.secretRef` or `root.files`) is only
read, by `load_supplied`, and never copied anywhere: its owner keeps it where it is.
Every refusal names the Secret or file and what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import os
import re
from pathlib import Path
from typing import Any, Protocol

import urllib3
from kubernetes.client import ApiClient, CoreV1Api, V1ObjectMeta, V1Secret
from kubernetes.client.exceptions import ApiException

from meshfleet.files import atomic_write, ensure_private_dir, write_private
from meshfleet.kubeclients import api_message
from meshfleet.pki import CLOCK_SKEW, PkiError, cert_pem, fingerprint, key_pem, load_certs, load_key, same_public_key
from mgmt.certs import Root, check_root
from mgmt.model import TrustPolicy

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
FINGERPRINT_LABEL = "meshfleet.io/root-fingerprint"  # a label value holds 63 characters: the first 63 of the 64
FINGERPRINT_ANNOTATION = "meshfleet.io/fingerprint"  # the full fingerprint
SECRET_PREFIX = "meshfleet-root-"
# the key pairs a supplied root's Secret may hold, in order of preference: kubernetes.io/tls Secrets (cert-manager's
# CA Secrets among them) use tls.*, Istio's plugged-in CA docs and many hand-made Secrets ca.*
SECRET_KEY_PAIRS = (("tls.crt", "tls.key"), ("ca.crt", "ca.key"))

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


API_TIMEOUT = 10.0
"""Seconds a request to the hub's API server may take: these calls run on the hub's event loop, so a hung
API server must fail them (reported as a problem) rather than freeze every agent stream."""

class RootStoreError(Exception):
    """Root material that cannot be stored, read or used; the message names the Secret or file and the problem."""


class RootStore(Protocol):
    """Where the hub persists the roots it generates (certificate and key)."""

    def save(self, root: Root) -> None:
        """Persist a generated root, key included; saving the same root again is a no-op. Raises RootStoreError."""

    def load(self, fingerprint: str) -> Root | None:
        """The root with this certificate fingerprint, None if absent; PkiError/RootStoreError if unusable."""

    def fingerprints(self) -> list[str]:
        """Fingerprints of every stored root, sorted."""


def _check_fingerprint(fp: str) -> str:
    # it becomes a file or Secret name: refuse anything else before it can name something else
    if not _FINGERPRINT.fullmatch(fp):
        raise RootStoreError(f"{fp!r} is not a root fingerprint (64 lower-case hex digits)")
    return fp


def _pair(cert_data: bytes, key_data: bytes, fp: str, cert_where: str, key_where: str) -> Root:
    """The root stored as (certificate PEM, key PEM), checked to be the root named `fp` with its own key."""
    certs = load_certs(cert_data, f"root certificate {cert_where}")
    if len(certs) != 1:
        raise PkiError(f"root certificate {cert_where} holds {len(certs)} certificates, not one")
    if (actual := fingerprint(certs[0])) != fp:
        raise PkiError(f"root certificate {cert_where} is root {actual}, not {fp}")
    key = load_key(key_data, f"root key {key_where}")
    if not same_public_key(key, certs[0]):
        raise PkiError(f"root key {key_where} does not match the root certificate {cert_where}")
    return Root(certs[0], key)


def _key_of(root: Root) -> bytes:
    if root.key is None:
        raise RootStoreError(f"root {fingerprint(root.cert)[:12]} has no key: only generated roots are stored, "
                             "and with their key")
    return key_pem(root.key)


# ---------------------------------------------------------------------------------------------
# Embedded mode: files in the hub's state directory


class FileRootStore:
    """Roots as `<fingerprint>.crt` (0644) and `<fingerprint>.key` (0600) in one directory (0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _paths(self, fp: str) -> tuple[Path, Path]:
        return self.directory / f"{fp}.crt", self.directory / f"{fp}.key"

    def save(self, root: Root) -> None:
        fp = fingerprint(root.cert)
        crt, key = self._paths(fp)
        data = _key_of(root)
        try:
            ensure_private_dir(self.directory)
            os.chmod(self.directory, 0o700)  # mkdir's mode is masked and ignored for an existing directory
            # the key first: a certificate in the directory is a root the hub can sign with
            write_private(key, data)
            atomic_write(crt, cert_pem(root.cert), 0o644)
        except OSError as exc:
            raise RootStoreError(f"cannot store root {fp[:12]} in {self.directory}: {exc}") from exc

    def load(self, fingerprint: str) -> Root | None:
        crt, key = self._paths(_check_fingerprint(fingerprint))
        try:
            cert_data = crt.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RootStoreError(f"cannot read root certificate {crt}: {exc}") from exc
        try:
            key_data = key.read_bytes()
        except FileNotFoundError:
            raise PkiError(f"root key {key} is missing (its certificate {crt} is there)") from None
        except OSError as exc:
            raise RootStoreError(f"cannot read root key {key}: {exc}") from exc
        return _pair(cert_data, key_data, fingerprint, str(crt), str(key))

    def fingerprints(self) -> list[str]:
        try:
            names = [p.stem for p in self.directory.glob("*.crt")]
        except OSError as exc:
            raise RootStoreError(f"cannot list roots in {self.directory}: {exc}") from exc
        return sorted(n for n in names if _FINGERPRINT.fullmatch(n))


# ---------------------------------------------------------------------------------------------
# Kubernetes mode: Secrets in the hub's namespace


def secret_name(fp: str) -> str:
    """The Secret holding root `fp`: 16 hex digits (64 bits) tell a fleet's few roots apart; load checks them all."""
    return SECRET_PREFIX + fp[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret_data(secret: Any, where: str) -> dict[str, bytes]:
    """A Secret's data, decoded (V1Secret from CoreV1Api)."""
    out: dict[str, bytes] = {}
    for k, v in (getattr(secret, "data", None) or {}).items():
        try:
            out[k] = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise RootStoreError(f"{where}: {k} is not base64 ({exc})") from exc
    return out


class SecretRootStore:
    """Roots as kubernetes.io/tls Secrets `meshfleet-root-<fingerprint[:16]>` in the hub's namespace."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self.core = CoreV1Api(api)
        self.namespace = namespace

    def _where(self, name: str) -> str:
        return f"Secret {self.namespace}/{name}"

    def _read(self, name: str) -> Any | None:
        """The V1Secret, None if absent."""
        try:
            return self.core.read_namespaced_secret(name, self.namespace, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise RootStoreError(f"cannot read {self._where(name)}: {api_message(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RootStoreError(f"cannot read {self._where(name)}: {exc}") from exc

    def save(self, root: Root) -> None:
        fp = fingerprint(root.cert)
        name = secret_name(fp)
        body = V1Secret(
            api_version="v1", kind="Secret", type="kubernetes.io/tls",
            metadata=V1ObjectMeta(name=name, namespace=self.namespace,
                                  labels={MANAGED_BY: "meshfleet", FINGERPRINT_LABEL: fp[:63]},
                                  annotations={FINGERPRINT_ANNOTATION: fp}),
            data={"tls.crt": _b64(cert_pem(root.cert)), "tls.key": _b64(_key_of(root))},
        )
        try:
            self.core.create_namespaced_secret(self.namespace, body, _request_timeout=API_TIMEOUT)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise RootStoreError(f"cannot create {self._where(name)}: {api_message(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RootStoreError(f"cannot create {self._where(name)}: {exc}") from exc
        # it exists: fine if it is this root (a save retried after its answer was lost), never overwritten otherwise
        existing = self._read(name)
        if existing is None:  # deleted in between: the next save creates it
            raise RootStoreError(f"{self._where(name)} existed, then vanished; saving again creates it")
        data = _secret_data(existing, self._where(name))
        try:
            _pair(data.get("tls.crt", b""), data.get("tls.key", b""), fp, f"tls.crt of {self._where(name)}",
                  f"tls.key of {self._where(name)}")
        except PkiError as exc:
            raise RootStoreError(f"{self._where(name)} already exists with other content ({exc}); it is not "
                                 "overwritten") from exc

    def load(self, fingerprint: str) -> Root | None:
        name = secret_name(_check_fingerprint(fingerprint))
        secret = self._read(name)
        if secret is None:
            return None
        where = self._where(name)
        data = _secret_data(secret, where)
        for k in ("tls.crt", "tls.key"):
            if k not in data:
                raise PkiError(f"{where} has no {k}")
        return _pair(data["tls.crt"], data["tls.key"], fingerprint, f"tls.crt of {where}", f"tls.key of {where}")

    def fingerprints(self) -> list[str]:
        try:
            listed = self.core.list_namespaced_secret(
                self.namespace, label_selector=f"{MANAGED_BY}=meshfleet,{FINGERPRINT_LABEL}",
                _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            raise RootStoreError(f"cannot list root Secrets in {self.namespace}: {api_message(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RootStoreError(f"cannot list root Secrets in {self.namespace}: {exc}") from exc
        found = []
        for s in listed.items or []:
            meta = s.metadata or V1ObjectMeta()
            fp = (meta.annotations or {}).get(FINGERPRINT_ANNOTATION, "")
            if _FINGERPRINT.fullmatch(fp):
                found.append(fp)
            else:
                log.warning("Secret %s/%s is labelled as a root but its %s annotation is %r; ignored",
                            self.namespace, meta.name, FINGERPRINT_ANNOTATION, fp)
        return sorted(found)


# ---------------------------------------------------------------------------------------------
# Supplied roots


def _usable(cert_data: bytes, key_data: bytes, cert_where: str, key_where: str, now: dt.datetime) -> Root:
    """A supplied (certificate PEM, key PEM) checked to serve as the mesh's root; RootStoreError says why not."""
    try:
        certs = load_certs(cert_data, cert_where)
        key = load_key(key_data, key_where)
    except PkiError as exc:
        raise RootStoreError(str(exc)) from exc
    if len(certs) != 1:
        # which one would be the root? the trust bundle carries exactly the root, so ask for it alone
        raise RootStoreError(f"{cert_where} holds {len(certs)} certificates; give the root certificate alone")
    cert = certs[0]
    if now + CLOCK_SKEW < cert.not_valid_before_utc:
        raise RootStoreError(f"{cert_where}: the root certificate is not valid before "
                             f"{cert.not_valid_before_utc.isoformat()}")
    if (reason := check_root(cert, None, now)) is not None:
        raise RootStoreError(f"{cert_where}: {reason}")
    if not same_public_key(key, cert):
        raise RootStoreError(f"{key_where} does not match the root certificate {cert_where}")
    return Root(cert, key)


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RootStoreError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from exc


def _from_secret(api: ApiClient, namespace: str, name: str, now: dt.datetime) -> Root:
    where = f"Secret {namespace}/{name}"
    try:
        secret = CoreV1Api(api).read_namespaced_secret(name, namespace, _request_timeout=API_TIMEOUT)
    except ApiException as exc:
        what = "not found" if exc.status == 404 else api_message(exc)
        raise RootStoreError(f"root {where}: {what}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise RootStoreError(f"root {where}: cannot read it ({exc})") from exc
    data = _secret_data(secret, f"root {where}")
    for crt, key in SECRET_KEY_PAIRS:
        if crt in data and key in data:
            return _usable(data[crt], data[key], f"{crt} of root {where}", f"{key} of root {where}", now)
    held = ", ".join(sorted(data)) or "no data"
    wanted = " or ".join(f"{crt} with {key}" for crt, key in SECRET_KEY_PAIRS)
    raise RootStoreError(f"root {where} holds {held}; a root needs {wanted}")


def load_supplied(policy: TrustPolicy, api: ApiClient | None, now: dt.datetime) -> Root:
    """The root a TrustPolicy supplies (root.secretRef or root.files), checked usable at `now`.

    Raises RootStoreError naming the Secret or file and what is wrong with it.
    """
    if policy.secret_ref is not None:
        if api is None:
            raise RootStoreError("secretRef needs the hub in Kubernetes mode; use root.files in embedded mode")
        return _from_secret(api, *policy.secret_ref, now)
    if policy.files is not None:
        cert_path, key_path = policy.files
        return _usable(_read_file(cert_path, "root certificate file"), _read_file(key_path, "root key file"),
                       f"root certificate file {cert_path}", f"root key file {key_path}", now)
    raise RootStoreError(f"{policy.meta.ref} generates its root; there is no supplied root to load")

