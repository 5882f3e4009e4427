"""The bootstrap contract: the join token, where Register listens, the identity it hands out.

The join token `meshfleet cluster add` prints and `meshfleet agent --token` takes is
`mft1.<id>.<secret>.<ca>`: the id names the hub's record, the secret is shown
once (the hub keeps only its SHA-256), and `ca` is the hub's identity CA
(base64url DER) so the agent can verify the hub before sending the secret.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

PREFIX = "mft1"
# the URI SAN naming a cluster in the client certificate Register issues
SPIFFE_PREFIX = "spiffe://meshfleet.hub/cluster/"
_ID = re.compile(r"^[0-9a-f]{16}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


class JoinTokenError(ValueError):
    """A token that is not of the form `mft1.<id>.<secret>.<ca>`."""


@dataclass(frozen=True)
class JoinToken:
    token_id: str
    secret: str
    ca_der: bytes

    @property
    def credential(self) -> str:
        """What the agent sends to Register: `<id>.<secret>` (never the CA part)."""
        return f"{self.token_id}.{self.secret}"

    def __str__(self) -> str:
        ca = base64.urlsafe_b64encode(self.ca_der).rstrip(b"=").decode()
        return f"{PREFIX}.{self.credential}.{ca}"


def parse_credential(credential: str) -> tuple[str, str]:
    """Split `<id>.<secret>`; raises JoinTokenError."""
    token_id, sep, secret = credential.partition(".")
    if not sep or not _ID.match(token_id) or not _SECRET.match(secret):
        raise JoinTokenError("malformed bootstrap token (expected <16 hex id>.<secret>)")
    return token_id, secret


def parse(text: str) -> JoinToken:
    parts = text.strip().split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise JoinTokenError(f"malformed join token: expected {PREFIX}.<id>.<secret>.<ca> as printed by "
                             "`meshfleet cluster add`")
    token_id, secret = parse_credential(f"{parts[1]}.{parts[2]}")
    try:
        ca_der = base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JoinTokenError(f"malformed join token: CA part is not base64url ({exc})") from exc
    return JoinToken(token_id, secret, ca_der)


def register_address(sync_address: str, explicit: str | None) -> str:
    """The Register (server-TLS) address: explicit, or the Sync address with port + 1 (port 0 stays 0)."""
    if explicit:
        return explicit
    host, _, port = sync_address.rpartition(":")
    return f"{host}:{int(port) + 1 if int(port) else 0}"
