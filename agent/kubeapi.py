"""A thin REST adapter over the real `kubernetes` client: JSON in and out, retries on 409/429/5xx."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

RETRYABLE = frozenset({409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of 409/429/5xx answers."""

    attempts: int = 5
    """Tries per request, the first included."""
    initial: float = 0.2
    """First delay in seconds; doubles per try."""
    maximum: float = 5.0
    """Cap of one delay (and of a Retry-After the server asks for)."""


class Rest:
    """Requests by path with the client's configuration (auth, TLS, proxy); callers never see urllib3."""

    def __init__(self, api: ApiClient, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep, rng: Callable[[], float] = random.random) -> None:
        self.api = api
        self.retry = retry
        self.sleep = sleep
        self.rng = rng

    def call(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
             content_type: str | None = None) -> Any:
        """One request with retries; returns the decoded JSON, None for 404; raises ApiException."""
        for attempt in range(self.retry.attempts):
            headers = {"Accept": "application/json"}
            if content_type:
                headers["Content-Type"] = content_type
            params = self.api.param_serialize(method=method, resource_path=path, query_params=query or [],
                                              header_params=headers, body=body, auth_settings=["BearerToken"])
            try:
                try:
                    response = self.api.call_api(*params)
                    response.read()
                except urllib3.exceptions.HTTPError as exc:  # no answer at all: as retryable as a 503
                    raise ApiException(status=503, reason=f"cannot reach the API server: {exc}") from exc
                if response.status == 404:
                    return None
                if response.status >= 400:
                    raise ApiException(http_resp=response)
                return json.loads(response.data) if response.data else None
            except ApiException as exc:
                if exc.status not in RETRYABLE or attempt + 1 == self.retry.attempts:
                    raise
                delay = min(self.retry.maximum, self.retry.initial * 2**attempt) * (0.5 + self.rng() / 2)
                after = (exc.headers or {}).get("Retry-After")
                if after and after.isdigit():
                    delay = min(self.retry.maximum, max(delay, float(after)))
                log.warning("%s %s answered %s; retrying in %.2f s", method, path, exc.status, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

