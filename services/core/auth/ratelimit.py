"""Failed-login limiting per source address: after `limit` failures within `window` seconds a source
is refused (429) until its oldest failure leaves the window. Other sources are unaffected.

In memory, per process: each replica limits on its own (an attacker spreading over N replicas gets N
times the budget, still bounded). Memory is bounded by `max_sources` (least recently failing evicted).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class FailureLimiter:
    def __init__(
        self,
        *,
        limit: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = 100_000,
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._clock = clock
        self._max_sources = max_sources
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, source: str) -> deque[float] | None:
        times = self._failures.get(source)
        if times is None:
            return None
        horizon = self._clock() - self._window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[source]
            return None
        return times

    def retry_after(self, source: str) -> float:
        """Seconds until `source` may try again; 0 when it may now."""
        times = self._recent(source)
        if times is None or len(times) < self._limit:
            return 0.0
        return max(times[0] + self._window - self._clock(), 0.001)

    def failed(self, source: str) -> bool:
        """Record a failure; True when the source has now reached its limit."""
        times = self._recent(source)
        if times is None:
            times = deque(maxlen=self._limit)
            self._failures[source] = times
        times.append(self._clock())
        self._failures.move_to_end(source)
        while len(self._failures) > self._max_sources:
            self._failures.popitem(last=False)
        return len(times) >= self._limit
