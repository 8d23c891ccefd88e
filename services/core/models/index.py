"""Model views stored per manifest (`model_views`, keyed `repository@digest`), the indexer that builds them
from the content model (headers read with `read_blob(offset, length)`), and its manifest-event handler.

A view is claimed before it is built (`status: indexing`), so one replica builds it while the others answer
`pending`; a claim older than `CLAIM_SECONDS` (its builder died) is taken over. Views are stored as JSON text:
model metadata keys are dotted (`general.architecture`), which MongoDB field names may not be.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

from services.core.content.registry import Registry
from services.core.errors import ManifestUnknownError, RegistryError
from services.core.events.envelope import payload_field, payload_of
from services.core.models.source import RangeSource, StreamSource
from services.core.models.view import ModelView, build_view, manifest_is_model
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName
from services.core.proto.hanzo.registry.v1 import events_pb2
from services.core.storage.documents import DocumentStore, DuplicateKeyError, Index
from services.core.storage.meta import ManifestRecord

log = logging.getLogger(__name__)

MODEL_VIEWS: Final = "model_views"
CLAIM_SECONDS: Final = 600.0
MAX_ANCESTORS: Final = 8
SUMMARY_FIELDS: Final = ("architecture", "format", "quantization", "parameters", "context_length", "name")


def view_id(repository: str, digest: str) -> str:
    return f"{repository}@{digest}"


class ModelIndex:
    """The stored views. Written by the indexer only."""

    def __init__(self, docs: DocumentStore, *, clock: Callable[[], float] = time.time) -> None:
        self.docs = docs
        self.clock = clock

    async def setup(self) -> None:
        await self.docs.ensure_collection(
            MODEL_VIEWS, [Index(("architecture",)), Index(("format",)), Index(("quantization",))])

    async def get(self, repository: str, digest: str) -> dict[str, Any] | None:
        return await self.docs.get(MODEL_VIEWS, view_id(repository, digest))

    async def claim(self, repository: str, digest: str) -> bool:
        """True when the caller should build the view: nobody has, or its builder's claim went stale."""
        key, now = view_id(repository, digest), self.clock()
        doc = {"_id": key, "repository": repository, "digest": digest, "status": "indexing", "claimed_at": now}
        try:
            await self.docs.insert(MODEL_VIEWS, doc)
            return True
        except DuplicateKeyError:
            pass
        current = await self.docs.get(MODEL_VIEWS, key)
        if current is None or current.get("status") != "indexing":
            return False
        claimed = float(current.get("claimed_at") or 0)
        if now - claimed < CLAIM_SECONDS:
            return False
        return await self.docs.update(MODEL_VIEWS, key, {"claimed_at": now},
                                      expect={"status": "indexing", "claimed_at": current.get("claimed_at")})

    async def store(self, repository: str, view: ModelView) -> dict[str, Any]:
        data = view.to_json()
        doc: dict[str, Any] = {
            "_id": view_id(repository, view.digest), "repository": repository, "digest": view.digest,
            "namespace": repository.partition("/")[0], "status": "indexed", "indexed_at": self.clock(),
            **{k: data.get(k) for k in SUMMARY_FIELDS}, "view": json.dumps(data, separators=(",", ":")),
        }
        await self.docs.put(MODEL_VIEWS, doc)
        return doc

    async def forget(self, repository: str, digest: str) -> None:
        await self.docs.delete(MODEL_VIEWS, view_id(repository, digest))

    async def page(self, where: dict[str, Any], *, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Indexed views matching `where` (equality), by `_id`, after `after`."""
        return await self.docs.find(MODEL_VIEWS, {**where, "status": "indexed"}, after=after, limit=limit)


def view_of(doc: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(doc["view"])
    return view


class _BlobSource(StreamSource):
    def __init__(self, registry: Registry, repository: RepositoryName, digest: Digest, size: int) -> None:
        def open_range(offset: int, length: int) -> AsyncIterator[bytes]:
            return registry.read_blob(repository, digest, offset=offset, length=length)

        super().__init__(size, open_range)


class ModelIndexer:
    """Builds and stores the view of a manifest from the registry's content."""

    def __init__(self, registry: Registry, index: ModelIndex | None = None) -> None:
        self.registry = registry
        self.index = index or ModelIndex(registry.meta.docs)

    @staticmethod
    def manifest_json(record: ManifestRecord) -> dict[str, Any] | None:
        """The manifest as JSON when it is a model (an image manifest with model content), else None."""
        if record.media_type not in mt.IMAGE_MANIFEST_TYPES:
            return None
        try:
            doc = json.loads(record.data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) and manifest_is_model(doc) else None

    async def build(self, record: ManifestRecord, manifest: dict[str, Any]) -> ModelView:
        repository = RepositoryName(record.repository)

        async def opener(digest: str, size: int) -> RangeSource:
            parsed = Digest.parse(digest)
            if size <= 0:
                size = (await self.registry.linked_blob(repository, parsed)).size
            return _BlobSource(self.registry, repository, parsed, size)

        return await build_view(manifest, digest=str(record.digest), opener=opener)

    async def index_record(self, record: ManifestRecord) -> dict[str, Any] | None:
        """Build and store the view of `record` unless another builder holds it; the stored document, or
        None (not a model, or being built elsewhere)."""
        manifest = self.manifest_json(record)
        if manifest is None:
            return None
        await self.index.setup()
        if not await self.index.claim(record.repository, str(record.digest)):
            return await self.index.get(record.repository, str(record.digest))
        try:
            view = await self.build(record, manifest)
        except BaseException:
            await self.index.forget(record.repository, str(record.digest))  # let the next reader try again
            raise
        return await self.index.store(record.repository, view)

    async def ancestors(self, repository: str, subject: str | None) -> list[dict[str, Any]]:
        """The chain of subjects above a view (base first is last), as far as this repository holds it."""
        chain: list[dict[str, Any]] = []
        seen: set[str] = set()
        while subject and len(chain) < MAX_ANCESTORS and subject not in seen:
            seen.add(subject)
            try:
                record = await self.registry.meta.manifest(repository, Digest.parse(subject))
            except RegistryError:
                record = None
            entry: dict[str, Any] = {"digest": subject, "present": record is not None}
            stored = await self.index.get(repository, subject)
            if stored is not None and stored.get("status") == "indexed":
                lineage = view_of(stored).get("lineage") or {}
                entry.update({k: stored.get(k) for k in ("name", "architecture", "format", "parameters")},
                             relation=lineage.get("relation"))
            chain.append(entry)
            subject = str(record.subject) if record is not None and record.subject else None
        return chain


class ModelIndexHandler:
    """Consumer of the manifests topic: indexes model manifests as they are pushed, forgets deleted ones
    (an EventHandler for ServiceParts.consumes)."""

    def __init__(self, indexer: ModelIndexer) -> None:
        self.indexer = indexer

    async def __call__(self, envelope: events_pb2.Envelope) -> None:
        kind = payload_field(envelope)
        payload = payload_of(envelope)
        repository, digest = str(getattr(payload, "repository", "")), str(getattr(payload, "digest", ""))
        if not repository or not digest:
            return
        if kind == "manifest_deleted":
            await self.indexer.index.setup()
            await self.indexer.index.forget(repository, digest)
            return
        if kind != "manifest_pushed":
            return
        try:
            record = await self.indexer.registry.resolve(RepositoryName(repository), Digest.parse(digest))
        except ManifestUnknownError:
            return  # deleted since
        await self.indexer.index_record(record)


def matches(doc: dict[str, Any], *, min_parameters: int | None, max_parameters: int | None,
            q: str | None) -> bool:
    """The listing's filters that are not equalities (pure)."""
    params = doc.get("parameters")
    if min_parameters is not None and (not isinstance(params, int) or params < min_parameters):
        return False
    if max_parameters is not None and (not isinstance(params, int) or params > max_parameters):
        return False
    if q:
        text = " ".join(str(doc.get(k) or "") for k in ("repository", "name", "architecture", "format"))
        return q.lower() in text.lower()
    return True


__all__: Sequence[str] = ["MODEL_VIEWS", "ModelIndex", "ModelIndexHandler", "ModelIndexer", "matches", "view_of"]
