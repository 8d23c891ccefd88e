"""A writer process for the outbox crash tests: commits one change and dies at a chosen point.

Usage: python -m tests.integration.outbox_writer <settings-json> <intent-id> <die-after>
where die-after is `intent` (the intent is stored, no operation applied), `op1` (first operation
applied), `ops` (every operation applied, not yet marked ready) or `never`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from services.core.bootstrap import build_document_store, build_event_log
from services.core.events import outbox as outbox_module
from services.core.events.outbox import Insert, OutboundEvent, Outbox, Put
from services.core.settings import load_settings


def change(intent: str) -> tuple[list[outbox_module.Operation], list[OutboundEvent]]:
    ops: list[outbox_module.Operation] = [
        Put("crash_docs", {"_id": f"{intent}-a", "value": 1}),
        Insert("crash_docs", {"_id": f"{intent}-b", "value": 2}),
    ]
    events = [OutboundEvent(topic=os.environ["CRASH_TOPIC"], key="repo", value=intent.encode())]
    return ops, events


async def main(settings_json: str, intent: str, die_after: str) -> None:
    settings = load_settings(**json.loads(settings_json))
    docs = build_document_store(settings)
    events = build_event_log(settings)
    outbox = Outbox(docs)
    await outbox.setup()
    applied = 0
    real_apply = outbox_module.apply_operation
    real_insert = docs.insert

    async def insert_then_maybe_die(collection: str, doc: Mapping[str, Any]) -> None:
        await real_insert(collection, doc)
        if collection == outbox_module.OUTBOX and die_after == "intent":
            os._exit(137)

    async def apply_then_maybe_die(store: object, op: outbox_module.Operation) -> bool:
        nonlocal applied
        result = await real_apply(store, op)  # type: ignore[arg-type]
        applied += 1
        if (die_after == "op1" and applied == 1) or (die_after == "ops" and applied == 2):
            os._exit(137)
        return result

    docs.insert = insert_then_maybe_die  # type: ignore[method-assign]
    outbox_module.apply_operation = apply_then_maybe_die  # type: ignore[assignment]
    ops, outbound = change(intent)
    await outbox.commit(ops, outbound)
    await docs.close()
    await events.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
