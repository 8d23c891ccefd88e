"""Models over the management API (the model view itself is built in services/core/models):

- `GET /v1/registry/{repository}/{reference}/model` (reader): the model view of a manifest; 404 MODEL_UNKNOWN
  for a manifest that is not a model; `{"status": "pending"}` while it is being indexed. A view not indexed yet
  (its push event not consumed) is built here, from headers only, within `INLINE_SECONDS`; past that the
  build goes on and the answer is pending.
- `GET /v1/registry/models` (any user): indexed models, filtered by architecture, format, quantization,
  parameter range and a text query, paginated, only in repositories the caller may pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from pydantic import ConfigDict, Field

from services.core.auth.errors import InvalidRequestError
from services.core.errors import RegistryError
from services.core.models.index import ModelIndex, ModelIndexer, matches, view_of
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.storage.meta import ManifestRecord
from services.distribution.keys import REGISTRY
from services.distribution.management_api import Call, Requirement, Route
from services.distribution.management_models import MAX_PAGE, Query, Response, maybe_timestamp

log = logging.getLogger(__name__)

INLINE_SECONDS: Final = 10.0
LIST_SCAN_LIMIT: Final = 5000
_BUILDS: set[asyncio.Task[Any]] = set()
"""Builds that outlived their request (kept referenced until they finish)."""


class ModelUnknownError(RegistryError):
    code, status = "MODEL_UNKNOWN", 404


class ModelViewResponse(Response):
    """The normalised model view (the fields below, and `name`, `hidden_size`, `layers`, `vocab_size`,
    `artifact_type`), or only `status` and `digest` while pending."""

    model_config = ConfigDict(extra="allow")
    status: str = Field(description="indexed, or pending (being indexed: ask again)")
    repository: str
    digest: str
    format: str | None = Field(None, description="Format of the main weights: safetensors, gguf, onnx, pytorch")
    parameters: int | None = Field(None, description="Parameters of the main weights (from their headers)")
    architecture: str | None = None
    quantization: str | None = Field(None, description="GGUF file type (Q4_K_M, F16...) or the quantization method")
    context_length: int | None = None
    dtypes: list[str] | None = None
    files: list[dict[str, Any]] | None = Field(
        None, description="name, media_type, digest, size, format, role, parameters, dtypes, tensors, details")
    lineage: dict[str, Any] | None = Field(
        None, description="relation (base, fine-tune, quantization, adapter), subject, base_model, ancestors")
    findings: list[dict[str, Any]] | None = Field(None, description="Headers that are invalid: file, severity, message")


class ModelQuery(Query):
    architecture: str | None = Field(None, max_length=200)
    format: str | None = Field(None, max_length=50)
    quantization: str | None = Field(None, max_length=50)
    min_parameters: int | None = Field(None, ge=0)
    max_parameters: int | None = Field(None, ge=0)
    q: str | None = Field(None, max_length=200, description="Text in the repository, name, architecture or format")
    limit: int = Field(100, ge=1, le=MAX_PAGE)
    after: str | None = Field(None, max_length=600, description="The `next` of the previous page")


class ModelSummary(Response):
    repository: str
    digest: str
    name: str | None
    architecture: str | None
    format: str | None
    quantization: str | None
    parameters: int | None
    context_length: int | None
    indexed_at: Any = None


class ModelList(Response):
    models: list[ModelSummary]
    next: str | None = Field(None, description="Pass as `after` for the next page; null on the last")


async def _resolve(call: Call) -> ManifestRecord:
    assert call.repository is not None
    reference = call.param("reference")
    try:
        ref: Tag | Digest = Digest.parse(reference) if ":" in reference else Tag(reference)
    except (ValueError, RegistryError):
        raise InvalidRequestError(f"reference {reference[:100]!r} is neither a tag nor a digest") from None
    return await call.request.app[REGISTRY].resolve(RepositoryName(call.repository), ref)


def _pending(repository: str, digest: str) -> ModelViewResponse:
    return ModelViewResponse(status="pending", repository=repository, digest=digest)


async def get_model(call: Call) -> ModelViewResponse:
    assert call.repository is not None
    record = await _resolve(call)
    digest = str(record.digest)
    indexer = ModelIndexer(call.request.app[REGISTRY])
    if indexer.manifest_json(record) is None:
        raise ModelUnknownError(f"{call.repository}@{digest} is not a model")
    await indexer.index.setup()
    doc = await indexer.index.get(call.repository, digest)
    if doc is None or doc.get("status") != "indexed":
        if doc is not None and not await indexer.index.claim(call.repository, digest):
            return _pending(call.repository, digest)
        if doc is not None:  # a stale claim, now ours: forget it so that `index` claims it again
            await indexer.index.forget(call.repository, digest)
        task = asyncio.ensure_future(indexer.index_record(record))
        _BUILDS.add(task)
        task.add_done_callback(_BUILDS.discard)
        try:
            doc = await asyncio.wait_for(asyncio.shield(task), INLINE_SECONDS)
        except TimeoutError:
            return _pending(call.repository, digest)
        if doc is None or doc.get("status") != "indexed":
            return _pending(call.repository, digest)
    view = view_of(doc)
    lineage = view.get("lineage") or {}
    subject = (lineage.get("subject") or {}).get("digest")
    lineage["ancestors"] = await indexer.ancestors(call.repository, subject)
    view["lineage"] = lineage
    return ModelViewResponse(status="indexed", repository=call.repository, **view)


async def list_models(call: Call) -> ModelList:
    query: ModelQuery = call.query
    registry = call.request.app[REGISTRY]
    index = ModelIndex(registry.meta.docs)
    await index.setup()
    where = {k: v for k, v in (("architecture", query.architecture), ("format", query.format),
                               ("quantization", query.quantization)) if v is not None}
    found: list[ModelSummary] = []
    cursor, next_cursor, scanned = query.after, None, 0
    readable: dict[str, bool] = {}
    while True:
        batch = await index.page(where, after=cursor, limit=query.limit + 1)
        unknown = sorted({d["repository"] for d in batch} - set(readable))
        if unknown:
            allowed = set(unknown if call.who.admin else await call.access.readable(call.who.principal, unknown))
            readable.update({r: r in allowed for r in unknown})
        for doc in batch:
            if len(found) == query.limit:  # full, and there is more
                next_cursor = cursor
                break
            cursor, scanned = doc["_id"], scanned + 1
            if not readable[doc["repository"]] or not matches(doc, min_parameters=query.min_parameters,
                                                              max_parameters=query.max_parameters, q=query.q):
                continue
            if await registry.meta.manifest(doc["repository"], Digest.parse(doc["digest"])) is None:
                with contextlib.suppress(Exception):  # deleted since it was indexed
                    await index.forget(doc["repository"], doc["digest"])
                continue
            found.append(ModelSummary(
                repository=doc["repository"], digest=doc["digest"], name=doc.get("name"),
                architecture=doc.get("architecture"), format=doc.get("format"),
                quantization=doc.get("quantization"), parameters=doc.get("parameters"),
                context_length=doc.get("context_length"), indexed_at=maybe_timestamp(doc.get("indexed_at"))))
        if next_cursor is not None or len(batch) <= query.limit:
            break
        if scanned >= LIST_SCAN_LIMIT:
            # A caller who may read few of many models gets a short page and a cursor to go on.
            next_cursor = cursor
            break
    return ModelList(models=found, next=next_cursor)


def model_routes() -> list[Route]:
    """Before the namespace routes: `/models` is a fixed path, and `.../model` ends in a fixed word (the
    scanner's and signer's `/{repository}/{reference}/...` routes end in other words)."""
    R = Requirement
    return [
        Route("GET", "/models", list_models, R.USER,
              "Models the caller may pull, filtered by architecture, format, quantization, parameters and text",
              response=ModelList, query=ModelQuery),
        Route("GET", "/{repository:.+}/{reference}/model", get_model, R.REPOSITORY_READER,
              "The model view of a manifest: format, parameters, architecture, quantization, files, lineage",
              response=ModelViewResponse, errors=(404,)),
    ]


__all__ = ["ModelUnknownError", "model_routes"]
