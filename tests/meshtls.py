"""Mutual-TLS test harness: workload certificates signed as istiod signs them, and real handshakes.

A cluster's plug-in CA is the four files istiod reads (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem` =
intermediate + root, `root-cert.pem` = every trusted root); `issue_workload` turns them into a
workload's key, chain and trust bundle, and `handshake` runs Python's ssl module (OpenSSL) over
127.0.0.1 so tests see what a real peer would accept. `TestCA` makes roots and intermediates through
the same code paths as the hub (mgmt.certs) and the agent (meshfleet.pki).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import ssl
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import ClassVar, NamedTuple

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshfleet import pki
from mgmt.certs import IssuancePolicy, Root, check_intermediate_csr, new_root, sign_intermediate

DEFAULT_TRUST_DOMAIN = "cluster.local"
WORKLOAD_TTL = dt.timedelta(hours=1)
SPIFFE_WORKLOAD = re.compile(r"spiffe://[a-z0-9.\-_]+/ns/[^/]+/sa/[^/]+")


@dataclass(frozen=True)
class Workload:
    """What a sidecar holds: its key, its chain (leaf, intermediate, root) and the roots it trusts."""

    key_pem: bytes
    chain_pem: bytes
    """Leaf PEM followed by the cluster's cert-chain.pem (intermediate, then root)."""
    trust_pem: bytes
    """The root-cert.pem bundle: every root this workload accepts peers under."""
    spiffe_id: str


class Cacerts(NamedTuple):
    """A cluster's plug-in CA files as the agent writes them (root-cert.pem apart: the bundle is fleet-wide)."""

    ca_cert_pem: bytes
    ca_key_pem: bytes
    cert_chain_pem: bytes


def utcnow() -> dt.datetime:
    """The current time in UTC, to the second (X.509 times carry no fractions)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def issue_workload(ca_cert_pem: bytes, ca_key_pem: bytes, cert_chain_pem: bytes, root_cert_pem: bytes,
                   spiffe_id: str, now: dt.datetime | None = None, ttl: dt.timedelta = WORKLOAD_TTL) -> Workload:
    """A workload certificate signed with the intermediate as istiod signs one (fresh EC P-256 key).

    CA:FALSE, digitalSignature+keyEncipherment, serverAuth+clientAuth, the SPIFFE ID as the only
    (critical) SAN with an empty subject, AKI from the intermediate's SKI; valid from `now` less
    the clock skew to `now + ttl`. ValueError if the SPIFFE ID is not a workload's or the key and
    certificate do not match.
    """
    if not SPIFFE_WORKLOAD.fullmatch(spiffe_id):
        raise ValueError(f"{spiffe_id!r} is not a workload SPIFFE ID (spiffe://<td>/ns/<ns>/sa/<sa>)")
    ca_cert = pki.load_certs(ca_cert_pem, "ca-cert.pem")[0]
    ca_key = pki.load_key(ca_key_pem, "ca-key.pem")
    if not pki.same_public_key(ca_key, ca_cert):
        raise ValueError("ca-key.pem does not match ca-cert.pem")
    pki.load_certs(cert_chain_pem, "cert-chain.pem")
    pki.load_certs(root_cert_pem, "root-cert.pem")
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    now = now or utcnow()
    key = pki.generate_key("EC-P256")
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - pki.CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(aki, critical=False)
        # An empty subject makes the SAN critical (RFC 5280 4.2.1.6), as in istiod's certificates.
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
        .sign(ca_key, pki.signature_hash(ca_key))
    )
    return Workload(pki.key_pem(key), pki.cert_pem(leaf) + cert_chain_pem, root_cert_pem, spiffe_id)


def _write(path: Path, data: bytes, mode: int) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _context(workload: Workload, server: bool, directory: Path) -> ssl.SSLContext:
    """An mTLS context for one side: TLS 1.2+, peer certificate required, no host name check, strict X.509."""
    directory.mkdir(mode=0o700)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # peers are SPIFFE identities, not DNS names
    ctx.verify_mode = ssl.CERT_REQUIRED
    # RFC 5280 conformance checks on top of chain validation, so malformed CA output fails here too.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(_write(directory / "chain.pem", workload.chain_pem, 0o644),
                        _write(directory / "key.pem", workload.key_pem, 0o600))
    ctx.load_verify_locations(cafile=_write(directory / "trust.pem", workload.trust_pem, 0o644))
    return ctx


def _text(exc: BaseException) -> str:
    text = re.sub(r"^_ssl\.c:\d+: ", "", re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc)))
    return text or type(exc).__name__


def handshake(client: Workload, server: Workload, timeout: float = 5.0) -> str | None:
    """Mutual TLS from `client` to `server` on 127.0.0.1, one byte each way: None if both sides completed.

    Otherwise a short reason naming the side at fault, e.g. "server refused the client: [SSL:
    CERTIFICATE_VERIFY_FAILED] certificate verify failed: ...". Every socket operation times out after
    `timeout` seconds; the server thread is joined and all sockets closed whatever happens.
    """
    with TemporaryDirectory() as tmp:
        client_ctx = _context(client, False, Path(tmp) / "client")
        server_ctx = _context(server, True, Path(tmp) / "server")
    errors: dict[str, BaseException] = {}
    received: dict[str, bytes] = {}

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(timeout)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except BaseException as exc:  # reported by the main thread, never by threading.excepthook
                errors["server"] = exc
                return
            with conn:
                conn.settimeout(timeout)
                try:
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        received["server"] = tls.recv(1)
                        tls.sendall(b"s")
                except BaseException as exc:
                    errors["server"] = exc

        thread = threading.Thread(target=serve, name="meshtls-server", daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname()[:2], timeout=timeout) as raw, \
                    client_ctx.wrap_socket(raw, server_side=False) as tls:
                tls.sendall(b"c")
                received["client"] = tls.recv(1)
        except (OSError, ValueError) as exc:
            errors["client"] = exc
        finally:
            # The client's socket is closed by now, so the server's pending call returns at once (EOF),
            # or its accept() times out if the client never connected; the margin only guards against a bug.
            thread.join(timeout + 10.0)
        if thread.is_alive():
            raise RuntimeError("the handshake's server thread did not stop")
    return _verdict(errors, received)


def _verdict(errors: Mapping[str, BaseException], received: Mapping[str, bytes]) -> str | None:
    """Blame the side whose verification failed, else the one that timed out: the other saw only the consequence."""
    client, server = errors.get("client"), errors.get("server")
    if isinstance(client, ssl.SSLCertVerificationError):
        return f"client refused the server: {_text(client)}"
    if isinstance(server, ssl.SSLCertVerificationError):
        return f"server refused the client: {_text(server)}"
    for side, exc in (("client", client), ("server", server)):
        if isinstance(exc, TimeoutError):
            return f"{side} timed out: {_text(exc)}"
    if server is not None:
        return f"server failed: {_text(server)}" + (f" (client: {_text(client)})" if client else "")
    if client is not None:
        return f"client failed: {_text(client)}"
    if received.get("server") != b"c" or received.get("client") != b"s":
        return f"data not exchanged: server got {received.get('server')!r}, client got {received.get('client')!r}"
    return None


def handshake_matrix(workloads: Mapping[str, Workload], timeout: float = 5.0) -> dict[tuple[str, str], str]:
    """The failed handshakes among every ordered pair (client, server) of distinct names; empty if all succeeded."""
    failures: dict[tuple[str, str], str] = {}
    for client_name, client in workloads.items():
        for server_name, server in workloads.items():
            if client_name != server_name and (reason := handshake(client, server, timeout)) is not None:
                failures[client_name, server_name] = reason
    return failures


@dataclass(frozen=True)
class TestCA:
    """Roots and cluster intermediates for tests, made through the hub's and the agent's own code paths."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    now: dt.datetime = field(default_factory=utcnow)
    """The clock every certificate is issued at (real time by default, as handshakes check against it)."""

    def root(self, trust_domain: str = DEFAULT_TRUST_DOMAIN, algorithm: str = "EC-P256",
             validity: dt.timedelta = dt.timedelta(days=365), name: str | None = None) -> Root:
        """A hub root (mgmt.certs.new_root) with a fresh key; a random name keeps roots apart by subject too."""
        key = pki.generate_key(algorithm)
        name = name or f"meshfleet root CA {uuid.uuid4().hex[:8]}"
        return Root(new_root(key, trust_domain, self.now, validity, name), key)

    def intermediate(self, cluster: str, root: Root, trust_domain: str = DEFAULT_TRUST_DOMAIN, *,
                     algorithm: str = "EC-P256", ttl: dt.timedelta = dt.timedelta(days=30),
                     policy: IssuancePolicy | None = None) -> Cacerts:
        """`cluster`'s cacerts as the agent builds them: its own key and CSR, checked and signed by `root`."""
        key = pki.generate_key(algorithm)
        policy = policy or IssuancePolicy(trust_domain=trust_domain, max_ttl=ttl)
        csr = check_intermediate_csr(pki.intermediate_csr(key, cluster, trust_domain), cluster, policy)
        cert = sign_intermediate(root, csr, cluster, policy, self.now, ttl)
        return Cacerts(pki.cert_pem(cert), pki.key_pem(key), pki.cert_pem(cert) + pki.cert_pem(root.cert))

    def workload(self, cacerts: Cacerts, trusted: Sequence[Root], spiffe_id: str,
                 ttl: dt.timedelta = WORKLOAD_TTL) -> Workload:
        """A workload under `cacerts` that trusts exactly the roots `trusted` (its root-cert.pem)."""
        return issue_workload(*cacerts, bundle(*trusted), spiffe_id, now=self.now, ttl=ttl)


def bundle(*roots: Root) -> bytes:
    """A root-cert.pem trust bundle holding `roots`, in order."""
    return pki.bundle_pem([r.cert for r in roots])
