"""Bootstrap-token decisions (pure): issue, hash, and check a presented token."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from meshfleet.jointokens import parse_credential


class TokenRejected(Exception):
    """A bootstrap token the hub refuses; the message is shown to the agent."""


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    cluster: str
    secret_sha256: str
    expires_at: float
    used_at: float | None


def new_secret() -> tuple[str, str]:
    """A fresh (token id, secret)."""
    return secrets.token_hex(8), secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_id_of(credential: str) -> str:
    """The id part of `<id>.<secret>`; raises TokenRejected if malformed."""
    try:
        return parse_credential(credential)[0]
    except ValueError as exc:
        raise TokenRejected(str(exc)) from exc


def check(record: TokenRecord | None, credential: str, cluster: str, now: float) -> None:
    """Raise TokenRejected unless `credential` is the unused, unexpired token of `cluster`."""
    try:
        _, secret = parse_credential(credential)
    except ValueError as exc:
        raise TokenRejected(str(exc)) from exc
    if record is None or not hmac.compare_digest(record.secret_sha256, hash_secret(secret)):
        raise TokenRejected("unknown bootstrap token")
    if record.used_at is not None:
        raise TokenRejected("bootstrap token was already used; issue a new one with "
                            f"`meshfleet cluster token {record.cluster}`")
    if now >= record.expires_at:
        raise TokenRejected(f"bootstrap token expired {int(now - record.expires_at)} s ago; issue a new one "
                            f"with `meshfleet cluster token {record.cluster}`")
    if record.cluster != cluster:
        raise TokenRejected(f"bootstrap token was issued for cluster {record.cluster!r}, not {cluster!r}")
