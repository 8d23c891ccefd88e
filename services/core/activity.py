"""Requests this process is serving, so that background work yields to them while they come and runs at full
speed while none do: GC in the same process (`serve`) asks `RequestActivity`; a gc service of its own, which
shares only the metadata store with the replicas that serve requests, asks `SharedActivity`, which reads what
their `ActivityBeacon`s write."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from services.core.events.outbox import LEASES
from services.core.storage.documents import DocumentStore

log = logging.getLogger(__name__)

LINGER_SECONDS = 0.5
"""A client's next request follows its last one within milliseconds (a push is a handful of them): the
process counts as busy this long after a request ended."""
BEACON = "activity:requests"
"""The document (in the leases collection) every replica serving requests renews: `until`, a wall-clock time."""
BEACON_EVERY_SECONDS = 1.0
"""A replica renews the beacon at most this often, and only while it serves requests: one write a second."""
BEACON_HOLDS_SECONDS = 3.0
"""How long a renewal counts: a few missed renewals (a slow store) do not make a busy registry look idle."""


class RequestActivity:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, linger: float = LINGER_SECONDS) -> None:
        self._clock = clock
        self._linger = linger
        self.in_flight = 0
        self.served = 0
        """Requests started so far; with `finished`, what the beacon compares: any since it last looked."""
        self.finished = 0
        self._ended = float("-inf")

    def started(self) -> None:
        self.in_flight += 1
        self.served += 1

    def ended(self) -> None:
        self.in_flight -= 1
        self.finished += 1
        self._ended = self._clock()

    def busy(self) -> bool:
        return self.in_flight > 0 or self._clock() - self._ended < self._linger


class ActivityBeacon:
    """Renews BEACON while this replica serves requests (a loop of the distribution service, on a shared store)."""

    def __init__(self, activity: RequestActivity, docs: DocumentStore, *, clock: Callable[[], float] = time.time,
                 every: float = BEACON_EVERY_SECONDS, holds: float = BEACON_HOLDS_SECONDS) -> None:
        self.activity, self.docs = activity, docs
        self._clock, self._every, self._holds = clock, every, holds
        self._seen = (0, 0)

    async def beat(self) -> bool:
        """Renew the beacon if requests were served since the last beat or are in flight; whether it did."""
        seen = (self.activity.served, self.activity.finished)
        if seen == self._seen and self.activity.in_flight == 0:
            return False
        self._seen = seen
        try:
            await self.docs.put(LEASES, {"_id": BEACON, "until": self._clock() + self._holds})
        except Exception as exc:  # the store is away: GC then runs unpaced, which is all this costs
            log.debug("activity beacon not renewed: %s", exc)
            return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._every)


class SharedActivity:
    """Whether any replica serves requests now, from their beacons: `busy()` is a check inside GC's pacing, so it
    answers from the last read and starts the next one (at most one a `every`) in the background."""

    def __init__(self, docs: DocumentStore, *, clock: Callable[[], float] = time.time,
                 every: float = BEACON_EVERY_SECONDS) -> None:
        self.docs = docs
        self._clock, self._every = clock, every
        self._until = 0.0
        self._read_at = float("-inf")
        self._reading: asyncio.Task[None] | None = None

    def busy(self) -> bool:
        now = time.monotonic()
        if self._reading is None and now - self._read_at >= self._every:
            self._read_at = now
            self._reading = asyncio.get_running_loop().create_task(self._read())
        return self._until > self._clock()

    async def refresh(self) -> None:
        """Read the beacon now, not in the background (tests)."""
        await self._read()

    async def _read(self) -> None:
        try:
            doc = await self.docs.get(LEASES, BEACON)
            self._until = float(doc.get("until", 0.0)) if doc is not None else 0.0
        except Exception as exc:  # keep the last answer
            log.debug("activity beacon not read: %s", exc)
        finally:
            self._reading = None
