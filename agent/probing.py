"""Probing the east-west gateways of remote clusters: TCP connects, run a round at a time.

The verdicts and the report are `agent.probes`; this module makes the connects and keeps the
rhythm. A probe only opens and closes a TCP connection (no TLS, no bytes sent): it shows that the
gateway's address accepts connections from this cluster, which is what a partition takes away.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from agent.probes import Attempt, Probes, Result, Target
from meshfleet.v1 import hub_pb2

log = logging.getLogger(__name__)

LOOKUP_THREADS = 4
_LOOKUP_EXECUTOR = concurrent.futures.ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="gateway-lookup")
Resolver = Callable[..., Awaitable[list[tuple[Any, ...]]]]


async def threaded_getaddrinfo(host: str, port: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
    """socket.getaddrinfo in threads of its own: a hung resolver then holds at most LOOKUP_THREADS threads,
    never the default executor the agent's applies, discovery and CA work run in."""
    return await asyncio.get_running_loop().run_in_executor(
        _LOOKUP_EXECUTOR, functools.partial(socket.getaddrinfo, host, port, **kwargs))

Connect = Callable[[Target, float], Awaitable[Attempt]]


def describe(exc: OSError) -> str:
    """A connect error as the hub shows it; the address is in the result already."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the address: {exc.strerror or exc}"
    if exc.errno:  # asyncio's own text ("Connect call failed (...)") names the address, not the cause
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


class Lookups:
    """Name lookups of gateway addresses, at most one in flight per name.

    getaddrinfo runs in a thread of the loop's default executor that no timeout can stop: with a
    hung resolver, a new lookup every round would pile up threads there, and the agent's applies
    and discovery wait for the same executor. A probe that times out leaves its lookup running for
    the next round to join.
    """

    def __init__(self, getaddrinfo: Resolver | None = None) -> None:
        self._pending: dict[str, asyncio.Future[list[str]]] = {}
        self._getaddrinfo = getaddrinfo or threaded_getaddrinfo

    async def addresses(self, host: str) -> list[str]:
        """The IP addresses `host` names (itself if it is one), in the resolver's order."""
        with contextlib.suppress(ValueError):
            return [str(ipaddress.ip_address(host))]
        pending = self._pending.get(host)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve(self._getaddrinfo, host))
            self._pending[host] = pending
            pending.add_done_callback(lambda f: self._done(host, f))
        return await asyncio.shield(pending)

    @staticmethod
    async def _resolve(getaddrinfo: Resolver, host: str) -> list[str]:
        infos = await getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def _done(self, host: str, future: asyncio.Future[list[str]]) -> None:
        if self._pending.get(host) is future:
            del self._pending[host]
        if not future.cancelled():
            future.exception()  # retrieved: a lookup every waiter gave up on is not an unhandled error


async def tcp_connect(host: str, port: int, within: float, lookups: Lookups | None = None) -> Attempt:
    """Open and close one TCP connection to host:port within `within` seconds (name lookup included).

    Each address the name resolves to is tried in turn; the latency is that of the whole attempt. Running out
    of time is a failed attempt, not an exception: it is what the probe is there to find out.
    """
    lookups = lookups or Lookups()
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def attempt() -> asyncio.StreamWriter:
        error: OSError | None = None
        for address in await lookups.addresses(host):
            try:
                _, writer = await asyncio.open_connection(address, port)
                return writer
            except OSError as exc:
                error = exc
        raise error or OSError(f"{host} resolves to no address")

    try:
        writer = await asyncio.wait_for(attempt(), within)
    except TimeoutError:
        return Attempt(False, f"no connection within {within:g} s")
    except OSError as exc:
        return Attempt(False, describe(exc))
    latency_ms = max(0, round((loop.time() - started) * 1000))
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):  # the connect is what counted; closing is housekeeping
        await asyncio.wait_for(writer.wait_closed(), within)
    return Attempt(True, "", latency_ms)


def report_of(results: Iterable[Result]) -> hub_pb2.ProbeReport:
    return hub_pb2.ProbeReport(results=[
        hub_pb2.ProbeResult(cluster=r.target.cluster, address=r.target.address, port=r.target.port,
                            reachable=r.reachable, error=r.error, latency_ms=r.latency_ms)
        for r in results])


class Prober:
    """Rounds of concurrent probes every `interval` seconds; the state outlives streams.

    `connect` replaces the TCP connect (tests); `clock` is monotonic seconds.
    """

    def __init__(self, interval: float, timeout: float, failures: int, connect: Connect | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.timeout = interval, timeout
        self.probes = Probes(failures)
        self.lookups = Lookups()
        self.rounds = 0
        self._connect = connect or self._tcp
        self._clock = clock
        self._last_round: float | None = None

    async def _tcp(self, target: Target, within: float) -> Attempt:
        return await tcp_connect(target.address, target.port, within, self.lookups)

    def due_in(self) -> float:
        """Seconds until the next round is due (0: now)."""
        if self._last_round is None:
            return 0.0
        return max(0.0, self._last_round + self.interval - self._clock())

    async def round(self, targets: Iterable[Target]) -> None:
        """Probe every target at once and account the attempts; takes about `timeout` at most."""
        self._last_round = self._clock()
        self.probes.retarget(targets)
        current = self.probes.targets
        attempts = await asyncio.gather(*(self._attempt(t) for t in current))
        for target, attempt in zip(current, attempts, strict=True):
            self.probes.record(target, attempt)
        self.rounds += 1

    async def _attempt(self, target: Target) -> Attempt:
        try:
            return await self._connect(target, self.timeout)
        except Exception as exc:  # a probe bug counts as a failed attempt, not as a lost round
            log.exception("probing %s at %s:%d failed", target.cluster, target.address, target.port)
            return Attempt(False, f"probe error: {exc!r}")

    def report(self) -> hub_pb2.ProbeReport | None:
        """The report to send, if the results changed in anything but latency since the last one sent."""
        results = self.probes.unsent()
        return None if results is None else report_of(results)

    def forget_sent(self) -> None:
        self.probes.forget_sent()
