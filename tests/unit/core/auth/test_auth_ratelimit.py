"""Failed-login limiting per source address."""

from __future__ import annotations

from services.core.auth.ratelimit import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limit_per_source_and_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(limit=3, window_seconds=60, clock=clock)
    assert not limiter.failed("10.0.0.1")
    assert not limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 0
    assert limiter.failed("10.0.0.1")
    assert 59 < limiter.retry_after("10.0.0.1") <= 60
    assert limiter.retry_after("10.0.0.2") == 0  # other sources are not locked out
    clock.now += 61
    assert limiter.retry_after("10.0.0.1") == 0


def test_memory_is_bounded() -> None:
    limiter = FailureLimiter(limit=2, window_seconds=60, clock=Clock(), max_sources=10)
    for i in range(100):
        limiter.failed(f"10.0.0.{i}")
    assert len(limiter._failures) == 10
