"""Backend outages as clients and operators should see them: a request that needs an unreachable backend
gets 503 UNAVAILABLE with Retry-After (never a 500 and a traceback), and the log gets one WARNING when a
backend goes away and one INFO when it is back, not one error per request.

`outage_of` recognises the drivers' connection failures (pymongo, aiokafka, urllib3 under minio, plain
socket errors); `OutageTracker` remembers which backend is down and watches its probe until it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from services.core.errors import UnavailableError

log = logging.getLogger(__name__)

METADATA, BLOBS, EVENTS = "metadata", "blob storage", "event log"
RETRY_AFTER_SECONDS = 5
_CONNECTION_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH,
                                errno.ETIMEDOUT, errno.EPIPE, errno.ECONNABORTED})


def _types(module: str, *names: str) -> tuple[type[BaseException], ...]:
    try:
        mod = __import__(module, fromlist=list(names))
    except ImportError:
        return ()
    return tuple(t for n in names if isinstance(t := getattr(mod, n, None), type))


_BY_DEPENDENCY: tuple[tuple[str, tuple[type[BaseException], ...]], ...] = (
    (METADATA, _types("pymongo.errors", "ConnectionFailure", "ExecutionTimeout", "WTimeoutError")),
    (EVENTS, _types("aiokafka.errors", "KafkaConnectionError", "KafkaTimeoutError", "NoBrokersAvailable",
                    "RequestTimedOutError", "NotLeaderForPartitionError", "LeaderNotAvailableError")),
    (BLOBS, _types("urllib3.exceptions", "MaxRetryError", "NewConnectionError", "ProtocolError",
                   "ReadTimeoutError", "ConnectTimeoutError")),
)


def outage_of(exc: BaseException) -> str | None:
    """The backend whose outage `exc` reports (following its causes), or None if it reports none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for dependency, types in _BY_DEPENDENCY:
            if types and isinstance(current, types):
                return dependency
        if isinstance(current, ConnectionError) or (
            isinstance(current, OSError) and current.errno in _CONNECTION_ERRNOS
        ):
            return "a backend"
        current = current.__cause__ or current.__context__
    return None


Probe = Callable[[], Awaitable[None]]


class OutageTracker:
    """Which backends are down, logged once per transition; a down backend's probe is retried every
    `probe_interval` seconds until it answers."""

    def __init__(self, probes: Mapping[str, Probe], *, probe_interval: float = 1.0) -> None:
        self._probes = dict(probes)
        self._interval = probe_interval
        self._down: dict[str, float] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}

    @property
    def down(self) -> dict[str, float]:
        """Backends now down, with the time each went away."""
        return dict(self._down)

    def unavailable(self, dependency: str, exc: BaseException) -> UnavailableError:
        """Record the outage (logging it if it is new) and the error to answer with."""
        if dependency not in self._down:
            self._down[dependency] = time.time()
            log.warning("%s is unavailable: %s: %s; answering 503 until it is back", dependency,
                        type(exc).__name__, str(exc)[:300])
            probe = self._probes.get(dependency)
            if probe is not None:
                with contextlib.suppress(RuntimeError):  # no running loop: nothing to watch with
                    self._watchers[dependency] = asyncio.get_running_loop().create_task(
                        self._watch(dependency, probe))
        else:
            log.debug("%s still unavailable: %s", dependency, type(exc).__name__)
        return UnavailableError(f"the {dependency} is unavailable; retry in a few seconds",
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    async def _watch(self, dependency: str, probe: Probe) -> None:
        while dependency in self._down:
            await asyncio.sleep(self._interval)
            try:
                async with asyncio.timeout(max(self._interval * 2, 2.0)):
                    await probe()
            except Exception as exc:
                log.debug("%s still down: %s", dependency, type(exc).__name__)
                continue
            since = self._down.pop(dependency, time.time())
            log.info("%s is back after %.1fs", dependency, time.time() - since)
        self._watchers.pop(dependency, None)

    async def close(self) -> None:
        for task in list(self._watchers.values()):
            task.cancel()
        self._watchers.clear()
