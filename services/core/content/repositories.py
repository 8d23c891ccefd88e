"""Deleting a whole repository: every manifest and tag through the outbox (with their events), its blob
links and open uploads, then the repository record, so it leaves `_catalog`. The bytes are GC's to reclaim.

An immutable tag stops the deletion unless it is forced (as deleting the tag alone would). There are no
multi-document transactions: each step is one of the registry's own conditional changes, so a crash
leaves a repository that is partly deleted but consistent (no tag dangles), and deleting it again
finishes the job. A push racing the deletion may keep its content; the record is then restored.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from services.core.content.registry import Registry
from services.core.errors import BlobUnknownError, ManifestUnknownError, NameUnknownError, TagImmutableError
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName
from services.core.storage import meta as m
from services.core.storage.documents import scan

_PAGE = 500


@dataclass(frozen=True, slots=True)
class RepositoryDeleted:
    repository: str
    manifests: int
    tags: int
    blobs: int
    uploads: int


async def _all(registry: Registry, collection: str, repository: str) -> list[dict[str, object]]:
    return [doc async for doc in scan(registry.meta.docs, collection, {"repository": repository}, page=_PAGE)]


async def delete_repository(registry: Registry, repo: RepositoryName, *, actor: str, force: bool = False
                            ) -> RepositoryDeleted:
    name = str(repo)
    if not await registry.meta.repository_exists(name):
        raise NameUnknownError(f"repository {repo} is not known to this registry")
    tags = await _all(registry, m.TAGS, name)
    if not force:
        immutable = [str(t["name"]) for t in tags if (await registry.tag_decision(repo, str(t["name"]))).immutable]
        if immutable:
            raise TagImmutableError(
                f"repository {repo} has immutable tags ({', '.join(immutable[:10])}); a registry admin may "
                "force its deletion with X-Hanzo-Force: true",
                detail={"tags": immutable[:100]},
            )
    manifests = tags_deleted = blobs = uploads = 0
    # Referrers and indexes first, so that no manifest is ever left referring to a deleted one for long.
    records = sorted(await _all(registry, m.MANIFESTS, name),
                     key=lambda d: (d.get("subject") is None, not d.get("references")))
    for doc in records:
        with contextlib.suppress(ManifestUnknownError):
            deleted = await registry.delete_manifest(repo, Digest.parse(str(doc["digest"])), actor=actor, force=True)
            manifests += 1
            tags_deleted += len(deleted.tags)
    for link in await _all(registry, m.BLOB_LINKS, name):
        with contextlib.suppress(BlobUnknownError):
            await registry.delete_blob(repo, Digest.parse(str(link["digest"])), actor=actor)
            blobs += 1
    for upload in await _all(registry, m.UPLOADS, name):
        await registry.discard_upload(str(upload["_id"]))
        uploads += 1
    await registry.meta.delete_repository_record(name)
    # A push that raced the deletion keeps its content, and so the repository keeps its record.
    for collection in (m.TAGS, m.MANIFESTS, m.BLOB_LINKS):
        if await registry.meta.docs.find(collection, {"repository": name}, limit=1):
            await registry.meta.ensure_repository(name, namespace=repo.namespace)
            break
    return RepositoryDeleted(name, manifests, tags_deleted, blobs, uploads)
