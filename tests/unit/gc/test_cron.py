"""The cron parser the gc.schedule setting uses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.core.cron import CronExpression


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "fires"),
    [
        ("0 3 * * *", "2025-01-01T02:59", "2025-01-01T03:00"),
        ("0 3 * * *", "2025-01-01T03:00", "2025-01-02T03:00"),
        ("*/15 * * * *", "2025-01-01T00:16", "2025-01-01T00:30"),
        ("30 1-3/2 * * *", "2025-01-01T01:30", "2025-01-01T03:30"),
        ("0 0 * * 0", "2025-01-01T00:00", "2025-01-05T00:00"),  # Wednesday -> Sunday
        ("0 0 * * 7", "2025-01-01T00:00", "2025-01-05T00:00"),
        ("0 0 29 2 *", "2025-01-01T00:00", "2028-02-29T00:00"),
        ("0 0 1 * 1", "2025-01-01T00:00", "2025-01-06T00:00"),  # either day field matches
        ("5,10 4 * 6 *", "2025-01-01T00:00", "2025-06-01T04:05"),
    ],
)
def test_next_after(expression: str, after: str, fires: str) -> None:
    assert CronExpression.parse(expression).next_after(at(after)) == at(fires)


@pytest.mark.parametrize("bad", ["", "0 3 * *", "60 * * * *", "* 24 * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"])
def test_bad_expressions_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        CronExpression.parse(bad)
