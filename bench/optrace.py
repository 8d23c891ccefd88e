"""Which store calls of a process overlap the slow pushes (`python -m bench.gc --trace-ops`).

`install()` wraps the metadata and blob store adapters of the process it runs in (the collector's, in the
distributed push part) so that each call is recorded as (start, end, call, collection) in wall-clock time;
`overlap()` then ranks the kinds of call by how many slow pushes each overlapped, against the other pushes of
the same runs. A kind that overlaps most slow pushes and few of the others is where a run costs the pushes:
this is how the collector's conditional deletes of blob links were found to be its heavy part on FerretDB.
"""

from __future__ import annotations

import bisect
import functools
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

Span = tuple[float, float, str, str]
"""(start, end, call, collection): one store call, in seconds of wall-clock time (`time.time`)."""

_SPANS: list[Span] = []
_DOC_CALLS = ("get", "get_many", "insert", "put", "update", "delete", "delete_many", "find", "count", "delete_where")


def _timed(cls: type, name: str, kind: str) -> None:
    real = getattr(cls, name)

    @functools.wraps(real)
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return await real(self, *args, **kwargs)
        finally:
            collection = args[0] if args and isinstance(args[0], str) else ""
            _SPANS.append((started, time.time(), f"{kind}.{name}", collection))

    setattr(cls, name, call)


def install() -> None:
    """Record every call of this process's MongoDB document store and S3 blob store (each batch of a walk
    counts as one call). For a bench process only: it patches the adapters' classes."""
    from services.core.storage import mongo, s3

    for name in _DOC_CALLS:
        _timed(mongo.MongoDocumentStore, name, "docs")
    for name in ("delete", "delete_many"):
        _timed(s3.S3BlobStore, name, "s3")
    walk = mongo.MongoDocumentStore.batches

    def batches(self: Any, collection: str, *args: Any, **kwargs: Any) -> Any:
        async def timed() -> Any:
            inner = walk(self, collection, *args, **kwargs).__aiter__()
            while True:
                started = time.time()
                try:
                    batch = await inner.__anext__()
                except StopAsyncIteration:
                    return
                _SPANS.append((started, time.time(), "docs.batch", collection))
                yield batch

        return timed()

    mongo.MongoDocumentStore.batches = batches  # type: ignore[method-assign]


def dump(path: Path) -> None:
    path.write_text(json.dumps(_SPANS))


def load(path: Path) -> list[Span]:
    return [(float(a), float(b), str(call), str(coll)) for a, b, call, coll in json.loads(path.read_text())]


def overlap(pushes: list[tuple[float, float]], spans: list[Span], slow: Callable[[float], bool],
            top: int = 12) -> list[dict[str, Any]]:
    """For each kind of call (`call:collection`): the share of slow pushes (`slow(seconds)`) that overlapped one,
    the share of the other pushes that did, how many calls and their seconds in all; most telling first."""
    by_kind: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_kind[f"{span[2]}:{span[3]}"].append(span)
    slow_pushes = [p for p in pushes if slow(p[1] - p[0])]
    others = [p for p in pushes if not slow(p[1] - p[0])]
    rows: list[dict[str, Any]] = []
    for kind, calls in by_kind.items():
        calls.sort()
        starts = [c[0] for c in calls]
        longest = max(c[1] - c[0] for c in calls)

        def overlaps(push: tuple[float, float], calls: list[Span] = calls, starts: list[float] = starts,
                     longest: float = longest) -> bool:
            i = bisect.bisect_left(starts, push[1])  # calls that started before the push ended
            while i > 0 and starts[i - 1] >= push[0] - longest:
                i -= 1
                if calls[i][1] > push[0]:
                    return True
            return False

        rows.append({
            "call": kind,
            "slow": round(sum(map(overlaps, slow_pushes)) / max(1, len(slow_pushes)), 2),
            "others": round(sum(map(overlaps, others)) / max(1, len(others)), 2),
            "count": len(calls),
            "seconds": round(sum(c[1] - c[0] for c in calls), 2),
        })
    rows.sort(key=lambda r: (r["slow"] - r["others"], r["slow"]), reverse=True)
    return rows[:top]
