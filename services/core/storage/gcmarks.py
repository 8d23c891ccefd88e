"""GC marks: the handshake between the garbage collector and the push path (two-phase deletion).

Collection `gc_marks`, one document per thing the collector means to delete:
  `b:<digest>`             a blob: its bytes and every repository's link to it
  `m:<repository>@<digest>` a manifest

States, each change a compare-and-set on the one document:
  seen      the collector saw unlinked bytes for the first time (`since`: their age starts there); no effect
  marked    the collector means to delete it (phase one, written by run `run`)
  rescued   a push touched it while it was marked: the collector leaves it (and drops the mark later)
  deleting  the collector passed its point of no return (it holds the mark until `until`)
  deleted   a tombstone, kept TOMBSTONE_SECONDS: a replica that still believes the thing stored (the
            metadata store's short-lived hints) learns otherwise from it
A mark the collector let go (rescued, or kept after all) is removed.

While a run goes (and for TOMBSTONE_SECONDS after), the push path pays one metadata read per blob link
(and one per manifest push, for all its references); outside, one read of COLLECTING per NOTICE_SECONDS:
- a blob link is written first and its mark read after (`after_link`), and after marking the collector reads
  the links written since its run started (the snapshot it planned from is older): whichever of the push and
  the collector writes first is seen by the other, so either the collector finds the new link and keeps the
  blob, or the push rescues a `marked` blob, or it finds `deleting`, waits for the collector to finish and
  then checks the bytes itself (gone: the caller unlinks and the client uploads the blob again);
- a manifest push first writes a hold naming what it references (`gc_holds`), then reads the marks of those
  (`storing_manifest`), and removes the hold once the manifest is stored: a marked blob or child manifest is
  rescued; one being deleted, or deleted and not stored again since, is refused (MANIFEST_BLOB_UNKNOWN, push
  it again). A child manifest still there after the push waited out a claim gets a new generation: the
  collector deletes a manifest only as read, so one that stalled past its claim's lease loses. A push that
  skips reading the manifest because it believes it stored passes the manifest itself too. The collector reads
  the holds (`held`) after marking and before its point of no return, then the manifests stored since it
  started: whichever of the push and the collector writes first is seen by the other, however long the push
  takes between its read and its commit (the hold stays until the manifest is stored, after which the
  collector's read of recent manifests sees it). Only a push that read "no run" before the run announced
  itself writes no hold: if it stores within NOTICE_SECONDS of that read, the run's snapshot sees the
  manifest; if it took longer, it reads the marks after storing (the late store), which rescues what is still
  marked, and reports what a run deleted meanwhile (CollectedWhileStoringError: the client is told to push
  those again, as when they were gone before, and the registry rolls the push's tags and manifest back,
  `Registry._unstore`, so none is left pointing at what is gone).

Blob marks use verdicts (a mark with `verdict: true`), so that a deleted blob costs the collector inserts,
not compare-and-sets (on FerretDB 1.x an insert is one atomic command; a compare-and-set takes a lease lock,
three commands and the heaviest of them). The mark `b:<digest>` is written once and never changes state;
what happens to it is decided by documents next to it, keyed by the mark's run R:
  `x:R:b:<digest>`  the verdict, inserted once: `deleting` by the collector's claim, or `rescued` by a push
                    that read the mark. The unique `_id` lets exactly one of them in; the loser reads it.
                    Afterwards it changes only by compare-and-set, as a `deleting` mark did: a push that
                    waited past the lease takes it over (`rescued`, `took_over`), a later run's repair
                    finishes a dead run's deletion.
  `t:R:b:<digest>`  the tombstone, inserted once the bytes are gone (the verdict stays `deleting`).
So (verdict, tombstone) read in that order are the states above: none = marked, `rescued` = rescued,
`deleting` without tombstone = deleting, `deleting` with one = deleted. The collector writes mark, verdict
and tombstone in that order and removes them in that order (mark first), and the push side reads them in
that order; letting a blob go removes the mark and then the verdict. Manifest marks and marks written
before verdicts keep the compare-and-sets on the mark itself (`_settle` reads both kinds), so pushes of
this version work with collectors of the previous one; a collector of this version needs pushes of this
version (upgrade the replicas that push before the one that collects).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from services.core.events.outbox import LEASES
from services.core.oci.digest import Digest
from services.core.storage.documents import (
    Document,
    DocumentStore,
    DuplicateKeyError,
    Index,
    delete_each,
    insert_each,
    update_each,
)
from services.core.storage.meta import BLOB_LINKS, MANIFESTS

GC_MARKS = "gc_marks"
GC_HOLDS = "gc_holds"
"""One document per manifest push in flight while a run goes: what it references (a handful at any time)."""

SEEN = "seen"
MARKED = "marked"
RESCUED = "rescued"
DELETING = "deleting"
DELETED = "deleted"

TOMBSTONE_SECONDS = 300.0

COLLECTING = "gc-collecting"
"""A document in the `leases` collection: `until` is when the last run's marks stop mattering (a run sets
it a day ahead when it starts, and to its end plus TOMBSTONE_SECONDS when it finishes)."""

NOTICE_SECONDS = 0.5
"""How long the push side trusts what it read of COLLECTING. A run waits twice this after announcing
itself before it reads anything, so by then every push that links or stores content reads the marks."""

HOLD_SECONDS = 600.0
"""How long a hold counts: a push's commit is long over by then (a hold left by a push that died is ignored
after it, and removed by the collector)."""

WAIT_SECONDS = 60.0
"""The longest a push waits for one claim of a collector (a mark or verdict in `deleting`): then, or once the
claim's lease is over, it takes over (`_Wait`)."""


def verdict_key(run: str, key: str) -> str:
    return f"x:{run}:{key}"


def tombstone_key(run: str, key: str) -> str:
    return f"t:{run}:{key}"


def blob_key(digest: Digest | str) -> str:
    return f"b:{digest}"


def manifest_key(repository: str, digest: Digest | str) -> str:
    return f"m:{repository}@{digest}"


class _Wait:
    """A push's wait for a collector's claim (a `deleting` mark or verdict): over once the claim's lease
    (`until`) is, or `wait` seconds after this push first saw that claim, whichever comes first. A new claim
    (a later run finishing a dead one's deletion) starts the wait again: the collector deletes only within
    the first part of its lease (sweep.DELETE_WITHIN_SECONDS), so a push never takes over a claim whose
    collector may still delete."""

    def __init__(self, clock: Callable[[], float], wait: float) -> None:
        self._clock = clock
        self._wait = wait
        self._claim: tuple[object, object] | None = None
        self._deadline = 0.0

    def over(self, claim: Document) -> bool:
        now = self._clock()
        seen = (claim.get("run"), claim.get("until"))
        if seen != self._claim:
            self._claim, self._deadline = seen, now + self._wait
        return float(claim.get("until", 0.0)) < now or now > self._deadline


class CollectedWhileStoringError(Exception):
    """A manifest was stored while a run deleted some of what it references (`digests`): the push must send
    them again. Raised when `storing_manifest` exits after the store."""

    def __init__(self, digests: list[str]) -> None:
        super().__init__(f"collected while the manifest was stored: {', '.join(digests[:10])}")
        self.digests = digests


@runtime_checkable
class BlobGuard(Protocol):
    """What the registry's push path asks before it relies on content the collector may be deleting."""

    async def after_link(self, digest: Digest, *, exists: Callable[[], Awaitable[bool]]) -> bool:
        """Call right after linking `digest`. True: the blob stays. False: the collector deleted it meanwhile
        (`exists` said so); the caller removes its link and treats the blob as absent."""
        ...

    def storing_manifest(self, repository: str, blobs: Sequence[str], manifests: Sequence[str]
                         ) -> contextlib.AbstractAsyncContextManager[list[str]]:
        """Store a manifest that references `blobs` and child `manifests` of `repository` inside this: on entry
        rescues those marked and yields the digests being (or lately) deleted and not stored again (refuse the
        push: they are gone); until it exits, no run deletes what it names. Its exit after the store raises
        CollectedWhileStoringError if a run it did not see coming deleted some of them meanwhile."""
        ...


class GcMarks:
    """Both sides of the handshake over one DocumentStore (module docstring)."""

    def __init__(
        self,
        docs: DocumentStore,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wait_seconds: float = WAIT_SECONDS,
    ) -> None:
        self.docs = docs
        self._clock = clock
        self._sleep = sleep
        self._wait = wait_seconds
        self._checked_at = float("-inf")
        self._collecting_now = False

    async def setup(self) -> None:
        await self.docs.ensure_collection(GC_MARKS, [Index(("state",))])

    # -- the push side ---------------------------------------------------------------------------

    async def _collecting(self) -> bool:
        """Whether a run goes, or ended so lately that its marks and tombstones still count: only then does
        the push side read marks, so a push outside GC's hours costs no extra read. A push asks after it
        linked (or before it stores a manifest, which the run's check of recent manifests covers); if it
        read "no" within NOTICE_SECONDS, its link was written before the run's snapshot (the run announces
        itself and waits 2 * NOTICE_SECONDS first), so the run sees it."""
        now = self._clock()
        if now - self._checked_at < NOTICE_SECONDS:
            return self._collecting_now
        doc = await self.docs.get(LEASES, COLLECTING)
        self._collecting_now = doc is not None and float(doc.get("until") or 0.0) > now
        self._checked_at = now
        return self._collecting_now

    async def announce(self, run: str) -> None:
        """The collector's first step: from now on pushes read marks. Returns once every replica has noticed
        (a crashed run leaves it announced for a day, which costs pushes a read, never safety)."""
        await self.docs.put(LEASES, {"_id": COLLECTING, "run": run, "until": self._clock() + 86400.0})
        await self._sleep(2 * NOTICE_SECONDS)

    async def conclude(self, run: str) -> None:
        """The collector's last step: pushes keep reading marks while its tombstones count."""
        await self.docs.update(LEASES, COLLECTING, {"until": self._clock() + TOMBSTONE_SECONDS}, expect={"run": run})

    async def after_link(self, digest: Digest, *, exists: Callable[[], Awaitable[bool]]) -> bool:
        if not await self._collecting():
            return True
        key = blob_key(digest)
        if await self._settle(key, await self.docs.get(GC_MARKS, key)):
            return True
        return await exists()

    @contextlib.asynccontextmanager
    async def storing_manifest(self, repository: str, blobs: Sequence[str], manifests: Sequence[str]
                               ) -> AsyncIterator[list[str]]:
        named = bool(blobs or manifests)
        hold = None
        decided = self._clock()
        if named and await self._collecting():
            # Written before the marks are read (module docstring): a run that marked after this read sees it.
            hold = uuid.uuid4().hex
            await self.docs.insert(GC_HOLDS, {"_id": hold, "repository": repository,
                                              "refs": [*blobs, *manifests], "at": self._clock()})
        else:
            decided = self._checked_at  # when the "no run" it acted on was read
        try:
            yield await self.before_manifest(repository, blobs, manifests)
        finally:
            if hold is not None:
                with contextlib.suppress(Exception):  # it expires (HOLD_SECONDS) if the store is away now
                    await self.docs.delete(GC_HOLDS, hold)
        # Stored. A push that acted on "no run" and took longer than NOTICE_SECONDS may have stored after a run
        # announced itself and read the recent manifests: it reads the marks now, rescuing what is still only
        # marked; what went meanwhile is reported (module docstring: the late store).
        if named and hold is None and self._clock() - decided >= NOTICE_SECONDS and await self._collecting():
            gone = await self.before_manifest(repository, blobs, manifests)
            if gone:
                raise CollectedWhileStoringError(gone)

    async def before_manifest(self, repository: str, blobs: Sequence[str], manifests: Sequence[str]) -> list[str]:
        """The marks' side of `storing_manifest` alone: rescue what is marked, return what is gone."""
        keys = {blob_key(d): d for d in blobs} | {manifest_key(repository, d): d for d in manifests}
        if not keys or not await self._collecting():
            return []
        found = await self.docs.get_many(GC_MARKS, list(keys))
        refused: list[str] = []
        for key, doc in found.items():
            if not await self._settle(key, doc) and not await self._stored(key, repository, keys[key]):
                refused.append(keys[key])
        return refused

    async def _stored(self, key: str, repository: str, digest: str) -> bool:
        """Stored again since the collector deleted it, or not deleted: a blob linked (a link comes only with its
        bytes, `after_link`), or a manifest. A manifest found gets a new generation: the collector deletes one only
        as it read it (its generation), so a delete that stalled past the claim this push took over loses
        instead of leaving the push's reference to it dangling."""
        if key.startswith("b:"):
            return await self.docs.get(BLOB_LINKS, f"{repository}@{digest}") is not None
        return await self.docs.update(MANIFESTS, f"{repository}@{digest}", {"generation": uuid.uuid4().hex})

    async def _settle(self, key: str, doc: Document | None) -> bool:
        """Rescue a marked document; wait out one being deleted. True: nothing was deleted (it is rescued or
        was never marked); False: the collector was deleting it (the caller checks what is left)."""
        waiting = _Wait(self._clock, self._wait)
        while True:
            if doc is not None and doc.get("state") == MARKED and doc.get("verdict"):
                return await self._verdict(key, str(doc.get("run")))
            if doc is None or doc.get("state") in (SEEN, RESCUED):
                return True
            if doc["state"] == DELETED:
                return self._clock() - float(doc.get("at", 0.0)) > TOMBSTONE_SECONDS
            if doc["state"] == MARKED:
                if await self.docs.update(GC_MARKS, key, {"state": RESCUED}, expect=_as_read(doc)):
                    return True
            elif doc["state"] == DELETING:
                if waiting.over(doc):
                    # A collector that died (or stalls) past its lease: take over; what it deleted is gone.
                    if await self.docs.update(GC_MARKS, key, {"state": RESCUED}, expect=_as_read(doc)):
                        return False
                    # Lost: to a later run finishing the deletion (a new claim: wait for that one instead), or
                    # to another push's takeover (the caller checks what is left, as that push does).
                    doc = await self.docs.get(GC_MARKS, key)
                    if doc is None or doc.get("state") != DELETING:
                        return False
                    continue
                await self._sleep(0.05)
                if await self.docs.get(GC_MARKS, key) is None:
                    return False
            doc = await self.docs.get(GC_MARKS, key)

    async def _verdict(self, key: str, run: str) -> bool:
        """`_settle` of a mark with verdicts (module docstring): rescue it by inserting the verdict, or read
        the collector's and wait for its tombstone."""
        vkey = verdict_key(run, key)
        try:
            await self.docs.insert(GC_MARKS, {"_id": vkey, "state": RESCUED, "run": run, "at": self._clock()})
        except DuplicateKeyError:
            pass
        else:
            # First: run `run`'s claim (the same insert) fails. Unless the mark read belongs to a run that has
            # ended and a later run marked the blob again meanwhile (this push stalled that long): that run's
            # verdict is another document, so read the mark again (as the compare-and-set on it did).
            mark = await self.docs.get(GC_MARKS, key)
            if mark is None or mark.get("run") == run:
                return True
            return await self._settle(key, mark)
        waiting = _Wait(self._clock, self._wait)
        while True:
            verdict = await self.docs.get(GC_MARKS, vkey)
            if verdict is None:
                return False  # let go by the collector (it kept the bytes), or long gone: the caller checks
            if verdict.get("state") == RESCUED:
                # Taken over by a push past the lease: the collector may still have deleted the bytes.
                return not verdict.get("took_over")
            tomb = await self.docs.get(GC_MARKS, tombstone_key(run, key))
            if tomb is not None:
                return self._clock() - float(tomb.get("at", 0.0)) > TOMBSTONE_SECONDS
            if not waiting.over(verdict):
                await self._sleep(0.05)
            elif await self.docs.update(GC_MARKS, vkey, {"state": RESCUED, "took_over": True},
                                        expect=_as_read(verdict)):
                # A collector that died (or stalls) past its lease: take over; what it deleted is gone. (Lost:
                # to a later run finishing the deletion, a new claim to wait for, or to another push's takeover.)
                return False

    # -- the collector's side --------------------------------------------------------------------

    async def held(self) -> set[str]:
        """What pushes in flight reference, as `repository@digest` and bare digests: read after marking, it
        names everything a push that read no mark is about to store. Expired holds are removed."""
        out: set[str] = set()
        expired: list[str] = []
        oldest = self._clock() - HOLD_SECONDS
        for doc in await self.docs.find(GC_HOLDS):
            if float(doc.get("at", 0.0)) < oldest:
                expired.append(str(doc["_id"]))
                continue
            for ref in doc.get("refs") or ():
                out.add(str(ref))
                out.add(f"{doc['repository']}@{ref}")
        if expired:
            await self.docs.delete_many(GC_HOLDS, expired)
        return out

    async def get(self, key: str) -> Document | None:
        return await self.docs.get(GC_MARKS, key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Document]:
        return await self.docs.get_many(GC_MARKS, keys)

    async def mark(self, key: str, *, run: str, extra: Mapping[str, Any] | None = None,
                   verdict: bool = False) -> None:
        """Phase one: mark `key` for run `run` (replacing a seen, rescued or stale mark); with `verdict`, a
        mark decided by verdicts (module docstring: `claim_verdicts`, `entomb`, `let_go`)."""
        await self.mark_each([key], run=run, extra=[extra] if extra else None, verdict=verdict)

    async def mark_each(self, keys: Sequence[str], *, run: str, extra: Sequence[Mapping[str, Any]] | None = None,
                        verdict: bool = False) -> None:
        """`mark` of many keys (`extra[i]` for `keys[i]`), inserted a batch a command (documents.insert_each)."""
        docs: list[dict[str, Any]] = []
        for i, key in enumerate(keys):
            doc = {"_id": key, "state": MARKED, "run": run, "at": self._clock(), **(extra[i] if extra else {})}
            if verdict:
                doc["verdict"] = True
            docs.append(doc)
        # Most keys have no mark yet: an insert is one atomic command even on FerretDB, where a replace takes its
        # lease lock (three round trips). The few with one already (seen, rescued, a tombstone) are replaced.
        for doc, inserted in zip(docs, await insert_each(self.docs, GC_MARKS, docs), strict=True):
            if not inserted:
                await self.docs.put(GC_MARKS, doc)

    async def see(self, key: str, *, since: float) -> None:
        await self.docs.put(GC_MARKS, {"_id": key, "state": SEEN, "since": since})

    async def claim(self, key: str, *, run: str, until: float) -> bool:
        """The point of no return: marked -> deleting, unless a push rescued it first."""
        return await self.docs.update(GC_MARKS, key, {"state": DELETING, "until": until},
                                      expect={"state": MARKED, "run": run})

    async def claim_each(self, keys: Sequence[str], *, run: str, until: float, concurrency: int = 16) -> set[str]:
        """`claim` of many keys, `concurrency` at a time (documents.update_each); returns those
        claimed."""
        return await update_each(self.docs, GC_MARKS, keys, {"state": DELETING, "until": until},
                                 expect={"state": MARKED, "run": run}, concurrency=concurrency)

    async def claim_verdicts(self, keys: Sequence[str], *, run: str, until: float) -> set[str]:
        """The point of no return of marks with verdicts: insert each one's `deleting` verdict (a batch a
        command, documents.insert_each); returns the keys whose insert went in (the others a push rescued
        first)."""
        verdicts = [{"_id": verdict_key(run, k), "state": DELETING, "run": run, "until": until, "at": self._clock()}
                    for k in keys]
        won = await insert_each(self.docs, GC_MARKS, verdicts)
        return {k for k, ok in zip(keys, won, strict=True) if ok}

    async def entomb(self, keys: Sequence[str], *, run: str) -> None:
        """Deleted: the tombstones of marks with verdicts of run `run` (module docstring), a batch a command. One
        already there (a repair finishing what a dead run had finished too) is left as it is."""
        await insert_each(self.docs, GC_MARKS, [{"_id": tombstone_key(run, k), "state": DELETED, "run": run,
                                                 "at": self._clock()} for k in keys])

    async def let_go(self, keys: Sequence[str], *, run: str, concurrency: int = 16) -> None:
        """Remove marks with verdicts of run `run` and their verdicts, mark first (a push that reads the mark
        after that finds nothing; one that read it before finds the verdict, or inserts a rescue that
        `repair` removes later)."""
        if keys:
            await delete_each(self.docs, GC_MARKS, [(k, None) for k in keys], concurrency=concurrency)
            await delete_each(self.docs, GC_MARKS, [(verdict_key(run, k), None) for k in keys],
                              concurrency=concurrency)

    async def take_over(self, doc: Document, *, run: str, until: float) -> bool:
        """A dead run's `deleting` mark (its lease is over): this run finishes the deletion."""
        return await self.docs.update(GC_MARKS, doc["_id"], {"run": run, "until": until}, expect=_as_read(doc))

    async def bury(self, key: str) -> None:
        """Deleted: the mark becomes a tombstone (module docstring)."""
        await self.docs.put(GC_MARKS, {"_id": key, "state": DELETED, "at": self._clock()})

    async def bury_each(self, keys: Sequence[str], *, run: str, concurrency: int = 16) -> None:
        """`bury` of many keys this run holds in `deleting`, as `claim_each`. A key it no
        longer holds as read (a push took it over past the lease) is buried alone."""
        buried = await update_each(self.docs, GC_MARKS, keys, {"state": DELETED, "at": self._clock()},
                                   expect={"state": DELETING, "run": run}, unset=_MARK_FIELDS,
                                   concurrency=concurrency)
        for key in keys:
            if key not in buried:
                await self.bury(key)

    async def release_each(self, keys: Sequence[str], *, state: str | None = None, concurrency: int = 16
                           ) -> set[str]:
        """`release` of many keys, as `claim_each`; returns those removed."""
        return await delete_each(self.docs, GC_MARKS, [(k, {"state": state} if state else None) for k in keys],
                                 concurrency=concurrency)

    async def release(self, key: str, *, state: str | None = None) -> bool:
        """Remove the mark (only in `state` when given)."""
        return await self.docs.delete(GC_MARKS, key, expect={"state": state} if state else None)

    async def all_in_state(self, state: str) -> list[Document]:
        """Every mark in `state`, read by one walk (`DocumentStore.batches`): FerretDB 1.x reads and sorts all
        matching documents for every query, so pages of separate queries (after the last `_id`) cost a whole
        read each (up to 200 ms for 3,000 tombstones)."""
        out: list[Document] = []
        async for batch in self.docs.batches(GC_MARKS, {"state": state}, size=1000):
            out += batch
        return out

    async def release_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            await self.docs.delete(GC_MARKS, key)


_MARK_FIELDS = ("run", "until", "links", "size", "generation", "since")
"""What a mark may hold beyond `state` and `at`: a tombstone drops it."""


def _as_read(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The compare part of a compare-and-set against `doc` as it was read."""
    return {k: doc.get(k) for k in ("state", "run", "until")}
