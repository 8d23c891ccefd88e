"""tags/list from the repository's names as last read: no command for a repeated listing or a paged walk's
later pages, fresh at once after this process's tag commits, after another process's tag event, and after
the TTL; a read that raced a change is not kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.core.events.outbox import Outbox
from services.core.oci.digest import Digest
from services.core.storage import meta as m
from services.core.storage.sqlite import SqliteDocumentStore

DIGEST = Digest.parse("sha256:" + "a" * 64)


class _Counting(SqliteDocumentStore):
    finds = 0
    hold: asyncio.Event | None = None

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.limits: list[int | None] = []  # each find's `limit`

    async def find(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.limits.append(kwargs.get("limit"))
        found = await super().find(*args, **kwargs)
        self.finds += 1  # counted once it has read: a test waiting for a read then knows what it read
        if self.hold is not None:
            await self.hold.wait()
        return found


async def _tag(outbox: Outbox, store: m.MetadataStore, name: str) -> None:
    await outbox.commit([store.set_tag_op("r", name, DIGEST, current=None)], [])


async def _walk(store: m.MetadataStore, n: int) -> list[list[str]]:
    pages: list[list[str]]
    pages, last = [], None
    while True:
        page = await store.list_tags("r", after=last, limit=n)
        if not page:
            return pages
        pages.append(page)
        last = page[-1]


async def _world(tmp_path: Path, now: list[float]) -> tuple[_Counting, m.MetadataStore, Outbox]:
    docs = _Counting(tmp_path / "m.db")
    store = m.MetadataStore(docs, tag_list_seconds=m.TAG_LIST_SECONDS, clock=lambda: now[0])
    await store.setup()
    outbox = Outbox(docs)
    await outbox.setup()
    outbox.on_applied(store.applied)
    return docs, store, outbox


async def test_listings_read_once_until_a_tag_commit_an_event_or_the_ttl(tmp_path: Path) -> None:
    now = [0.0]
    docs, store, outbox = await _world(tmp_path, now)
    try:
        names = sorted([f"v{i:03d}" for i in range(250)] + ["Z", "é", "ü-1", "latest"])
        for name in names:
            await _tag(outbox, store, name)
        docs.finds = 0
        pages = await _walk(store, 100)
        assert [n for p in pages for n in p] == sorted(names) and [len(p) for p in pages] == [100, 100, 54]
        assert await store.list_tags("r") == sorted(names)
        assert await store.list_tags("r", after="v248") == ["v249", "é", "ü-1"]
        assert docs.finds == 1
        # This process's commit shows at once, mid-walk too, and changes the kept names alike (no read).
        first = await store.list_tags("r", after=None, limit=10)
        await _tag(outbox, store, "v999")
        assert "v999" in await store.list_tags("r", after=first[-1], limit=1000)
        assert await store.list_tags("r") == sorted([*names, "v999"])
        assert docs.finds == 1
        # Another process's change arrives as its event; a write that bypasses both is seen after the TTL.
        await docs.insert(m.TAGS, store.set_tag_op("r", "w", DIGEST, current=None).doc)  # type: ignore[union-attr]
        assert "w" not in await store.list_tags("r")
        store.tag_set_changed("r")
        assert "w" in await store.list_tags("r")
        await docs.insert(m.TAGS, store.set_tag_op("r", "x", DIGEST, current=None).doc)  # type: ignore[union-attr]
        now[0] += m.TAG_LIST_SECONDS + 1
        assert "x" in await store.list_tags("r")
        assert docs.finds == 3
        # A deleted tag goes at once; a tag move does not change the names and keeps them.
        current = await store.tag("r", "x")
        assert current is not None
        await outbox.commit([store.delete_tag_op(current)], [])
        assert "x" not in await store.list_tags("r")
        assert docs.finds == 3
        moved = await store.tag("r", "w")
        assert moved is not None
        other = Digest.parse("sha256:" + "b" * 64)
        await outbox.commit([store.set_tag_op("r", "w", other, current=moved)], [])
        await store.list_tags("r")
        assert docs.finds == 3
    finally:
        await docs.close()


async def test_a_read_that_raced_a_tag_commit_is_not_kept(tmp_path: Path) -> None:
    now = [0.0]
    docs, store, outbox = await _world(tmp_path, now)
    try:
        await _tag(outbox, store, "a")
        docs.hold = asyncio.Event()
        reading = asyncio.create_task(store.list_tags("r"))
        while docs.finds == 0:
            await asyncio.sleep(0)
        docs.hold.set()  # the read has its names; the commit lands before it stores them
        docs.hold = None
        await _tag(outbox, store, "b")
        assert await reading == ["a"]
        assert await store.list_tags("r") == ["a", "b"]
    finally:
        await docs.close()


async def test_a_repository_with_more_tags_than_are_kept_pages_from_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    docs, store, outbox = await _world(tmp_path, now)
    monkeypatch.setattr(m, "TAG_LIST_NAMES", 20)
    try:
        for i in range(45):
            await _tag(outbox, store, f"t{i:02d}")
        docs.finds = 0
        pages = await _walk(store, 10)
        assert [len(p) for p in pages] == [10] * 4 + [5] and docs.finds == 6
        assert len(await store.list_tags("r")) == 45 and docs.finds == 7
        assert len(await store.list_tags("r")) == 45 and docs.finds == 8
        # Entered by a continuation once its size is forgotten: one read finds the repository too big to keep,
        # one reads the page; from then on a page is one read of that page.
        now[0] += m.TAG_LIST_TOO_BIG_SECONDS + 1
        docs.finds = 0
        assert await store.list_tags("r", after="t09", limit=10) == [f"t{i}" for i in range(10, 20)]
        assert docs.finds == 2 and not store.tag_names_kept("r")
        assert await store.list_tags("r", after="t19", limit=10) == [f"t{i}" for i in range(20, 30)]
        assert await store.list_tags("r", after="t39") == [f"t{i}" for i in range(40, 45)]
        assert docs.finds == 4
    finally:
        await docs.close()


async def test_a_walk_entered_by_a_continuation_reads_once_and_keeps_the_names(tmp_path: Path) -> None:
    # Another replica served the walk's first page (a load balancer's round robin), or the names were dropped
    # mid-walk: the first continuation page here reads them all, keeps them, and the rest of the walk reads none.
    docs, store, outbox = await _world(tmp_path, [0.0])
    try:
        names = [f"v{i:03d}" for i in range(250)]
        for name in names:
            await _tag(outbox, store, name)
        docs.finds = 0
        assert await store.list_tags("r", after="v099", limit=100) == names[100:200]
        assert await store.list_tags("r", after="v199", limit=100) == names[200:]
        assert await store.list_tags("r", after="v249", limit=100) == []
        assert await store.list_tags("r", after="v009") == names[10:]
        assert docs.finds == 1 and store.tag_names_kept("r")
        store.tag_set_changed("r")  # another replica's tag event mid-walk: one read more, then none
        assert await store.list_tags("r", after="v149", limit=50) == names[150:200]
        assert await store.list_tags("r", after="v199", limit=50) == names[200:]
        assert docs.finds == 2
    finally:
        await docs.close()


async def test_by_default_names_are_never_kept(tmp_path: Path) -> None:
    docs = _Counting(tmp_path / "m.db")
    store = m.MetadataStore(docs)  # the default: a process that does not follow tag events keeps nothing
    try:
        await store.setup()
        await docs.insert(m.TAGS, store.set_tag_op("r", "a", DIGEST, current=None).doc)  # type: ignore[union-attr]
        for _ in range(3):
            assert await store.list_tags("r") == ["a"]
        assert docs.finds == 3
        # Nothing is kept, so a page reads only itself (not every name, to keep them).
        docs.limits.clear()
        assert await store.list_tags("r", limit=1) == ["a"] and await store.list_tags("r", after="a", limit=1) == []
        assert docs.limits == [1, 1]
    finally:
        await docs.close()


async def test_a_commit_that_failed_midway_drops_the_names(tmp_path: Path) -> None:
    docs, store, outbox = await _world(tmp_path, [0.0])
    try:
        await _tag(outbox, store, "a")
        assert await store.list_tags("r") == ["a"]
        op = store.set_tag_op("r", "b", DIGEST, current=None)
        await docs.insert(m.TAGS, op.doc)  # type: ignore[union-attr]
        store.applied([op], False)  # it may or may not have applied: read again
        docs.finds = 0
        assert await store.list_tags("r") == ["a", "b"] and docs.finds == 1
    finally:
        await docs.close()


async def test_keeping_turned_off_drops_names_and_turned_on_refuses_reads_begun_before(tmp_path: Path) -> None:
    # The replica's event follower turns keeping off when it loses a topic (events may be missed meanwhile)
    # and on once it follows every topic again (a read begun before then may have missed one).
    now = [0.0]
    docs, store, outbox = await _world(tmp_path, now)
    try:
        await _tag(outbox, store, "a")
        assert await store.list_tags("r") == ["a"] and await store.list_tags("r") == ["a"]
        assert docs.finds == 1
        store.keep_tag_names(0)
        assert not store.tag_names_kept("r")
        await store.list_tags("r")
        await store.list_tags("r")
        assert docs.finds == 3
        docs.hold = asyncio.Event()
        reading = asyncio.create_task(store.list_tags("r"))
        while docs.finds == 3:
            await asyncio.sleep(0)
        store.keep_tag_names(m.TAG_LIST_SECONDS)  # the follower is positioned while that read is in flight
        docs.hold.set()
        docs.hold = None
        assert await reading == ["a"]
        assert not store.tag_names_kept("r")
        assert await store.list_tags("r") == ["a"] and await store.list_tags("r") == ["a"]
        assert docs.finds == 5 and store.tag_names_kept("r")
    finally:
        await docs.close()
