"""Copy a manifest graph from this registry's storage to a target registry with the core OCI client.

Children first: blobs (a HEAD first, then a cross-repository mount from a repository of the same rule that
has the blob, else a streamed upload, chunked above a size), then platform manifests, then the index, then
the referrers (OCI 1.1 `subject` referrers and cosign's `sha256-<hex>.sig|.att|.sbom` tags), then the tags.
Manifests go byte for byte (pushed by digest with their media type), so digests are equal at the target.
Every step checks or overwrites idempotently: a copy that died half way and runs again converges.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from services.core.client import OciClient, OciNotFoundError, RemoteRepository
from services.core.oci.digest import Digest
from services.core.oci.manifest import Descriptor, parse_manifest
from services.core.oci.names import RepositoryName
from services.core.storage.blobs import BlobReader
from services.core.storage.meta import ManifestRecord, MetadataStore

log = logging.getLogger(__name__)

MAX_REFERRER_DEPTH = 3
"""A signature of an SBOM of an image is as deep as referrers go in practice."""
COSIGN_SUFFIXES = ("sig", "att", "sbom")


class SourceGoneError(Exception):
    """What was to be copied is no longer at the source (deleted meanwhile): nothing to do."""


@dataclass
class CopyResult:
    manifests: list[ManifestRecord] = field(default_factory=list)
    """Manifests pushed to the target (not those it had)."""
    bytes_uploaded: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0


@dataclass
class GraphCopier:
    """Copies one source repository's content to one target repository."""

    meta: MetadataStore
    blobs: BlobReader
    client: OciClient
    source: str
    target: RemoteRepository
    include_referrers: bool = True
    mount_candidates: Callable[[Digest], AsyncIterator[str]] | None = None
    """Target repositories (same registry) that may hold a blob, to mount from."""
    blob_concurrency: int = 4
    chunked_above: int = 64 * 1024 * 1024
    chunk_size: int = 16 * 1024 * 1024
    max_manifest_bytes: int = 4 * 1024 * 1024
    result: CopyResult = field(default_factory=CopyResult)
    _done: set[Digest] = field(default_factory=set)

    async def copy_tag(self, tag: str, record: ManifestRecord) -> None:
        """The graph of `record`, its referrers, then `tag` pointing at it."""
        await self.copy_manifest(record)
        await self.client.push_manifest(self.target, record.data, reference=tag, media_type=record.media_type,
                                        update_referrers_tag=False)

    async def copy_manifest(self, record: ManifestRecord, *, depth: int = 0) -> None:
        """The graph of `record` (children first), then its referrers and theirs."""
        await self._ensure(record)
        if self.include_referrers and depth < MAX_REFERRER_DEPTH:
            for digest in self._graph_digests(record):
                await self._referrers_of(digest, depth)

    async def _ensure(self, record: ManifestRecord) -> None:
        if record.digest in self._done:
            return
        # A manifest with a subject is pushed again even when present: on a target without the referrers API
        # the push also repairs the subject's referrers tag (a copy that died between the two writes).
        if record.subject is None and await self._target_has(record.digest):
            self._done.add(record.digest)
            return
        parsed = parse_manifest(record.data, record.media_type, max_bytes=max(self.max_manifest_bytes, record.size))
        for child in parsed.child_manifests:
            child_record = await self.meta.manifest(self.source, child.digest)
            if child_record is None:
                continue  # an index may name platforms the repository does not hold
            await self._ensure(child_record)
        limit = asyncio.Semaphore(self.blob_concurrency)

        async def one(blob: Descriptor) -> None:
            async with limit:
                await self._ensure_blob(blob)

        await asyncio.gather(*(one(b) for b in parsed.blob_references))
        await self.client.push_manifest(self.target, record.data, media_type=record.media_type)
        self._done.add(record.digest)
        self.result.manifests.append(record)

    async def _target_has(self, digest: Digest) -> bool:
        try:
            await self.client.resolve(self.target, digest)
        except OciNotFoundError:
            return False
        return True

    def _graph_digests(self, record: ManifestRecord) -> list[Digest]:
        """The manifest and its children (signatures may refer to a platform manifest)."""
        parsed = parse_manifest(record.data, record.media_type, max_bytes=max(self.max_manifest_bytes, record.size))
        return [record.digest, *(c.digest for c in parsed.child_manifests)]

    async def _referrers_of(self, subject: Digest, depth: int) -> None:
        for referrer in await self.meta.referrers(self.source, subject):
            await self.copy_manifest(referrer, depth=depth + 1)
        for suffix in COSIGN_SUFFIXES:
            tag = f"{subject.algorithm}-{subject.hex}.{suffix}"
            tag_record = await self.meta.tag(self.source, tag)
            if tag_record is None:
                continue
            record = await self.meta.manifest(self.source, tag_record.digest)
            if record is None:
                continue
            await self.copy_manifest(record, depth=depth + 1)
            await self.client.push_manifest(self.target, record.data, reference=tag, media_type=record.media_type,
                                            update_referrers_tag=False)

    async def _ensure_blob(self, blob: Descriptor) -> None:
        if await self.client.blob_size(self.target, blob.digest) is not None:
            self.result.blobs_present += 1
            return
        if self.mount_candidates is not None:
            async for other in self.mount_candidates(blob.digest):
                if other == str(self.target.name):
                    continue
                if await self.client.mount_blob(self.target, blob.digest, from_repo=other):
                    self.result.blobs_mounted += 1
                    return
        size = blob.size
        chunked = size > self.chunked_above
        await self.client.push_blob(
            self.target, self._read(blob.digest), digest=blob.digest, size=size,
            method="chunked" if chunked else "post-put", chunk_size=self.chunk_size if chunked else None,
            skip_existing=False,
        )
        self.result.blobs_uploaded += 1
        self.result.bytes_uploaded += size

    async def _read(self, digest: Digest) -> AsyncIterator[bytes]:
        async for chunk in self.blobs.read(digest):
            yield chunk


def repository_name(name: str) -> RepositoryName:
    return RepositoryName(name)
