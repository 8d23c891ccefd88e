"""Reading what a test's actions published: a fresh consumer group on a topic, as a consumer would."""

from __future__ import annotations

import asyncio
import uuid

from services.core.events.log import EventLog, Record


async def read_topic(
    events: EventLog,
    topic: str,
    count: int,
    *,
    timeout: float = 60.0,
    linger: float = 0.0,
    distinct: bool = False,
) -> list[Record]:
    """Records of `topic` (acked, in delivery order) until `count` arrived (`distinct`: `count`
    different values, so a redelivery does not end the wait early), then whatever else arrives
    within `linger` seconds: duplicates show up right away if there are any. TimeoutError when
    fewer arrive within `timeout`."""
    sub = await events.subscribe(topic, f"test-{uuid.uuid4().hex[:8]}")
    records: list[Record] = []
    try:
        if count:
            async with asyncio.timeout(timeout):
                async for delivery in sub:
                    records.append(delivery.record)
                    await delivery.ack()
                    if len({r.value for r in records} if distinct else records) >= count:
                        break
        if linger:
            try:
                async with asyncio.timeout(linger):
                    async for delivery in sub:
                        records.append(delivery.record)
                        await delivery.ack()
            except TimeoutError:
                pass
    finally:
        await sub.close()
    return records
