"""GC candidates: what content events say may have become garbage, for incremental runs.

A tag that moves or goes away leaves its previous manifest possibly untagged; a deleted manifest leaves its
blobs, children and referrers possibly unreferenced; a deleted blob link may leave bytes no repository links.
The gc service's consumers record each as a candidate (`candidates_of`, pure) in `gc_candidates`, and an
incremental run (sweep.Collector with `RunOptions.incremental`) examines only those instead of the whole graph.
The periodic full mark-and-sweep stays the safety net for what no event announces (a push by digest that is
never tagged, a crash between a change and its event, a candidate dropped by a bug).

Documents (`_id` = `r:<repository>` or `b:<digest>`):
  kind   "repository" | "blob"
  name   the repository, or the digest
  due    when a run should examine it (now, or when what kept it last time stops counting: an untagged
         manifest's retention age, a link's grace period)
  stamp  new at every event: a run removes (or defers) a candidate only as it read it, so an event that
         arrives while a run examines it is not lost

A candidate is a repository, not a manifest: whether a manifest is garbage depends on its repository's tags,
indexes and referrers, and the metadata store has no reverse index of references, so a run reads the
repository's manifests (a page at a time) and plans it exactly as the full run would. Deletion then goes
through the same two-phase, race-proof path as the full run (sweep.py).

Events whose actor is the collector itself are not candidates: the run that made them has handled them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.core.storage.documents import Document, DocumentStore, Index

CANDIDATES: Final = "gc_candidates"
REPOSITORY: Final = "repository"
BLOB: Final = "blob"
GC_ACTOR: Final = "gc"


@dataclass(frozen=True, slots=True)
class Candidate:
    kind: str  # REPOSITORY | BLOB
    name: str

    @property
    def key(self) -> str:
        return f"{'r' if self.kind == REPOSITORY else 'b'}:{self.name}"


def candidates_of(envelope: pb.Envelope) -> list[Candidate]:
    """The candidates one content event makes (none for pushes, and none for the collector's own changes)."""
    which = envelope.WhichOneof("payload")
    if which == "tag_updated":
        e = envelope.tag_updated
        moved = e.previous_digest and e.previous_digest != e.digest
        return [Candidate(REPOSITORY, e.repository)] if moved and e.actor != GC_ACTOR else []
    if which == "tag_deleted":
        e2 = envelope.tag_deleted
        return [Candidate(REPOSITORY, e2.repository)] if e2.actor != GC_ACTOR else []
    if which == "manifest_deleted":
        e3 = envelope.manifest_deleted
        return [Candidate(REPOSITORY, e3.repository)] if e3.actor != GC_ACTOR else []
    if which == "blob_deleted":
        e4 = envelope.blob_deleted
        return [Candidate(BLOB, e4.digest)] if e4.actor != GC_ACTOR else []
    return []


class CandidateStore:
    """`gc_candidates` over a DocumentStore (module docstring)."""

    def __init__(self, docs: DocumentStore, *, clock: Callable[[], float] = time.time) -> None:
        self.docs = docs
        self._clock = clock

    async def setup(self) -> None:
        await self.docs.ensure_collection(CANDIDATES, [Index(("due",))])

    async def record(self, candidate: Candidate) -> None:
        """Due now, with a new stamp. Idempotent in effect (a redelivered event only makes it due again)."""
        await self.docs.put(
            CANDIDATES,
            {
                "_id": candidate.key,
                "kind": candidate.kind,
                "name": candidate.name,
                "due": self._clock(),
                "stamp": uuid.uuid4().hex,
            },
        )

    async def due(self, *, now: float, limit: int) -> list[Document]:
        """Up to `limit` candidates due by `now`, the longest due first (one query: `limit` is a run's share;
        the rest wait for the next run)."""
        page = await self.docs.find(CANDIDATES, order_by="due", limit=limit)
        return [d for d in page if float(d["due"]) <= now]

    async def any_due(self, *, now: float) -> bool:
        first = await self.docs.find(CANDIDATES, order_by="due", limit=1, fields=["due"])
        return bool(first) and float(first[0]["due"]) <= now

    async def done(self, doc: Document) -> bool:
        """Examined and nothing left to wait for: remove it, unless an event renewed it meanwhile."""
        return await self.docs.delete(CANDIDATES, str(doc["_id"]), expect={"stamp": doc["stamp"]})

    async def defer(self, doc: Document, *, due: float) -> bool:
        """Examined, and something in it may become garbage at `due`: look again then (unless renewed)."""
        return await self.docs.update(CANDIDATES, str(doc["_id"]), {"due": due}, expect={"stamp": doc["stamp"]})

    async def count(self) -> int:
        return await self.docs.count(CANDIDATES)
