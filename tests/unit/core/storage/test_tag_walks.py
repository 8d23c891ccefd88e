"""Paged tags/list: one index read a walk (its first page), a consistent view across its pages, fresh for a
new walk and after TAG_WALK_SECONDS."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.core.oci.digest import Digest
from services.core.storage import meta as m
from services.core.storage.sqlite import SqliteDocumentStore

DIGEST = Digest.parse("sha256:" + "a" * 64)


class _Counting(SqliteDocumentStore):
    finds = 0

    async def find(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.finds += 1
        return await super().find(*args, **kwargs)


async def _tag(docs: SqliteDocumentStore, store: m.MetadataStore, name: str) -> None:
    op = store.set_tag_op("r", name, DIGEST, current=None)
    await docs.insert(m.TAGS, op.doc)  # type: ignore[attr-defined]


async def _walk(store: m.MetadataStore, n: int) -> list[list[str]]:
    pages, last = [], None
    while True:
        page = await store.list_tags("r", after=last, limit=n)
        if not page:
            return pages
        pages.append(page)
        last = page[-1]


async def test_a_walk_reads_once_and_sees_one_view(tmp_path: Path) -> None:
    now = [0.0]
    docs = _Counting(tmp_path / "m.db")
    store = m.MetadataStore(docs, clock=lambda: now[0])
    try:
        await store.setup()
        names = sorted([f"v{i:03d}" for i in range(250)] + ["Z", "é", "ü-1", "latest"])
        for name in names:
            await _tag(docs, store, name)
        docs.finds = 0
        pages = await _walk(store, 100)
        assert [n for p in pages for n in p] == sorted(names) and [len(p) for p in pages] == [100, 100, 54]
        assert docs.finds == 1
        # A tag pushed mid-walk is not in the walk's later pages (one view) but is in the next walk's.
        first = await store.list_tags("r", after=None, limit=10)
        await _tag(docs, store, "v999")
        assert "v999" not in await store.list_tags("r", after=first[-1], limit=1000)
        assert "v999" in [n for p in await _walk(store, 100) for n in p]
        # A request without n always reads the store; a continuation after the TTL reads it too.
        await _tag(docs, store, "w")
        assert (await store.list_tags("r"))[-1] == "ü-1"
        now[0] += m.TAG_WALK_SECONDS + 1
        docs.finds = 0
        assert await store.list_tags("r", after="v999", limit=5) == ["w", "é", "ü-1"]
        assert docs.finds == 1
    finally:
        await docs.close()


async def test_a_repository_with_more_tags_than_a_walk_holds_pages_from_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = _Counting(tmp_path / "m.db")
    store = m.MetadataStore(docs, clock=time.monotonic)
    monkeypatch.setattr(m, "TAG_WALK_NAMES", 20)
    try:
        await store.setup()
        for i in range(45):
            await _tag(docs, store, f"t{i:02d}")
        docs.finds = 0
        pages = await _walk(store, 10)
        assert [len(p) for p in pages] == [10] * 4 + [5] and docs.finds == 6
    finally:
        await docs.close()
