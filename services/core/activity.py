"""Requests this process is serving, so that background work in the same process (GC in `serve`) yields to
them while they come and runs at full speed while none do."""

from __future__ import annotations

import time
from collections.abc import Callable

LINGER_SECONDS = 0.5
"""A client's next request follows its last one within milliseconds (a push is a handful of them): the
process counts as busy this long after a request ended."""


class RequestActivity:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, linger: float = LINGER_SECONDS) -> None:
        self._clock = clock
        self._linger = linger
        self.in_flight = 0
        self._ended = float("-inf")

    def started(self) -> None:
        self.in_flight += 1

    def ended(self) -> None:
        self.in_flight -= 1
        self._ended = self._clock()

    def busy(self) -> bool:
        return self.in_flight > 0 or self._clock() - self._ended < self._linger
