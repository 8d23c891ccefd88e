"""Cron expressions (minute hour day-of-month month day-of-week, UTC): parse, and the next time one fires.

Each field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a comma-separated list of those.
Day-of-week is 0-6 from Sunday (7 is Sunday too). As in cron, when both day fields are restricted a day
matches if either does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES = ("minute", "hour", "day of month", "month", "day of week")


def _field(text: str, index: int) -> frozenset[int]:
    low, high = _BOUNDS[index]
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                start, end = low, high
            elif "-" in body:
                a, b = body.split("-", 1)
                start, end = int(a), int(b)
            else:
                start = end = int(body)
                if step_text:
                    end = high
        except ValueError:
            raise ValueError(f"cron {_NAMES[index]} field {text!r}: not a number, range or step") from None
        if step < 1 or not low <= start <= end <= high:
            raise ValueError(f"cron {_NAMES[index]} field {text!r}: outside {low}-{high}")
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class CronExpression:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(f"cron expression {text!r}: five fields (minute hour day month weekday), e.g. 0 3 * * *")
        m, h, d, mo, w = (_field(p, i) for i, p in enumerate(parts))
        return cls(m, h, d, mo, w, any_day=parts[2] == "*", any_weekday=parts[4] == "*")

    def _day_matches(self, t: datetime) -> bool:
        day = t.day in self.days
        weekday = (t.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day and weekday
        return day or weekday

    def next_after(self, when: datetime) -> datetime:
        """The first minute strictly after `when` (UTC) at which the expression fires."""
        t = when.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t + timedelta(days=366 * 5)
        while t < limit:
            if t.month not in self.months or not self._day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0)
            elif t.hour not in self.hours:
                t = (t + timedelta(hours=1)).replace(minute=0)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        raise ValueError("the cron expression never fires")
