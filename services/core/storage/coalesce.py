"""Coalescing of single-document commands: what arrives while a few commands of its kind are in flight goes out
together in the next one.

A remote store answers a batch of N keys (a `find` over `_id $in`, an unordered `insert_many`) in about the time
of one key, and a server that runs commands one at a time (FerretDB 1.x) is bound by commands, not documents.
Under concurrency (16 pushes, 32 pullers) the callers of `get` and `insert` then share round trips; a caller
alone is sent at once, so nothing waits for a batch to fill. Each caller gets its own result or exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Send = Callable[[str, list[T]], Awaitable[Sequence[R | Exception]]]
"""Sends one command for `items` of one collection; returns, per item in order, its result or its error. An
exception it raises is every item's error."""


@dataclass
class _Group(Generic[T, R]):
    pending: list[tuple[T, asyncio.Future[R]]] = field(default_factory=list)
    running: int = 0


class Coalescer(Generic[T, R]):
    def __init__(self, send: Send[T, R], *, in_flight: int = 4, max_batch: int = 256) -> None:
        self._send = send
        self._in_flight = in_flight
        self._max_batch = max_batch
        self._groups: dict[str, _Group[T, R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.commands = 0
        """Commands sent (tests: concurrent callers share them)."""

    async def submit(self, collection: str, item: T) -> R:
        loop = asyncio.get_running_loop()
        group = self._groups.setdefault(collection, _Group())
        future: asyncio.Future[R] = loop.create_future()
        group.pending.append((item, future))
        if group.running < self._in_flight:
            group.running += 1
            task = loop.create_task(self._drain(collection, group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, collection: str, group: _Group[T, R]) -> None:
        try:
            while group.pending:
                batch = group.pending[: self._max_batch]
                del group.pending[: self._max_batch]
                self.commands += 1
                try:
                    results = await self._send(collection, [item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:  # cancelled (shutdown): so are its callers
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            group.running -= 1
            if not group.running and not group.pending and self._groups.get(collection) is group:
                del self._groups[collection]
