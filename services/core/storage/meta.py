"""MetadataStore: the registry's records and queries, written once over the DocumentStore port.

The SQLite and MongoDB adapters live below the DocumentStore port (sqlite.py, mongo.py), so every
query here runs unchanged on both. Changes that must emit events are not written here directly:
this module builds the operations, and the caller commits them through the outbox.

Collections and keys:
  repositories  _id = name
  blob_links    _id = "<repo>@<digest>"    a digest is reachable only in repositories that link it
  manifests     _id = "<repo>@<digest>"    exact pushed bytes in `data`
  manifests.generation                     changes whenever a tag is moved to the manifest, so a delete
                                           conditional on it loses to a concurrent push (no dangling tag)
  tags          _id = "<repo>:<tag>"       `version` changes on each change (compare-and-set); a new tag
                                           starts at a clock-derived value, so no later incarnation of a
                                           deleted tag repeats a version an old intent may still expect
  uploads       _id = upload id            the repository an upload session belongs to
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.core.events.outbox import Create, Delete, Insert, Operation, Touch, Update
from services.core.oci.digest import Digest
from services.core.storage.documents import DocumentStore, DuplicateKeyError, Index

REPOSITORIES = "repositories"
BLOB_LINKS = "blob_links"
MANIFESTS = "manifests"
TAGS = "tags"
UPLOADS = "uploads"


def _key(repository: str, sep: str, rest: str) -> str:
    return f"{repository}{sep}{rest}"


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    repository: str
    digest: Digest
    media_type: str
    size: int
    data: bytes
    subject: Digest | None = None
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    references: tuple[str, ...] = ()
    created: float = 0.0
    generation: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": _key(self.repository, "@", str(self.digest)),
            "repository": self.repository,
            "digest": str(self.digest),
            "media_type": self.media_type,
            "size": self.size,
            "data": self.data,
            "subject": str(self.subject) if self.subject else None,
            "artifact_type": self.artifact_type,
            # Annotation keys are dotted (org.opencontainers...), which MongoDB field names may not be.
            "annotations": [{"k": k, "v": v} for k, v in self.annotations.items()],
            "references": list(self.references),
            "created": self.created,
            "generation": self.generation,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ManifestRecord:
        return cls(
            repository=doc["repository"],
            digest=Digest.parse(doc["digest"]),
            media_type=doc["media_type"],
            size=doc["size"],
            data=doc["data"],
            subject=Digest.parse(doc["subject"]) if doc.get("subject") else None,
            artifact_type=doc.get("artifact_type"),
            annotations={a["k"]: a["v"] for a in doc.get("annotations") or ()},
            references=tuple(doc.get("references") or ()),
            created=doc.get("created", 0.0),
            generation=doc.get("generation"),
        )


@dataclass(frozen=True, slots=True)
class TagRecord:
    repository: str
    name: str
    digest: Digest
    version: int
    updated: float


@dataclass(frozen=True, slots=True)
class UploadRecord:
    id: str
    repository: str
    actor: str
    created: float


class MetadataStore:
    """Reads, and operation builders for writes, over one DocumentStore."""

    def __init__(self, docs: DocumentStore) -> None:
        self.docs = docs

    async def setup(self) -> None:
        await self.docs.ensure_collection(REPOSITORIES)
        await self.docs.ensure_collection(BLOB_LINKS, [Index(("repository",)), Index(("digest",))])
        await self.docs.ensure_collection(MANIFESTS, [Index(("repository",)), Index(("subject",)), Index(("digest",))])
        await self.docs.ensure_collection(TAGS, [Index(("repository", "name")), Index(("digest",))])
        await self.docs.ensure_collection(UPLOADS, [Index(("repository",))])

    # repositories

    async def ensure_repository(self, name: str, *, namespace: str) -> None:
        """Create the repository record if missing. Idempotent; an empty repository is harmless."""
        if await self.docs.get(REPOSITORIES, name) is not None:
            return  # the common case, and a read: an insert refused as a duplicate is still a write
        with contextlib.suppress(DuplicateKeyError):
            await self.docs.insert(REPOSITORIES, {"_id": name, "namespace": namespace, "created": time.time()})

    async def repository_exists(self, name: str) -> bool:
        return await self.docs.get(REPOSITORIES, name) is not None

    async def list_repositories(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        docs = await self.docs.find(REPOSITORIES, after=after, limit=limit)
        return [d["_id"] for d in docs]

    # blob links

    async def link_blob(self, repository: str, digest: Digest, size: int) -> None:
        """Make a committed blob reachable from `repository`. Idempotent."""
        await self.docs.put(
            BLOB_LINKS,
            {
                "_id": _key(repository, "@", str(digest)),
                "repository": repository,
                "digest": str(digest),
                "size": size,
                "created": time.time(),
            },
        )

    async def blob_link(self, repository: str, digest: Digest) -> int | None:
        """Size of the blob if `repository` links it, else None."""
        doc = await self.docs.get(BLOB_LINKS, _key(repository, "@", str(digest)))
        return None if doc is None else int(doc["size"])

    def unlink_blob_op(self, repository: str, digest: Digest) -> Operation:
        return Delete(BLOB_LINKS, _key(repository, "@", str(digest)))

    async def repositories_linking(self, digest: Digest, *, limit: int) -> list[str]:
        """Repositories that link `digest` (for mounts that do not name their source)."""
        docs = await self.docs.find(BLOB_LINKS, {"digest": str(digest)}, limit=limit)
        return [d["repository"] for d in docs]

    async def linked_digests(self, repository: str, digests: Sequence[str]) -> set[str]:
        keys = {_key(repository, "@", d): d for d in digests}
        found = await self.docs.get_many(BLOB_LINKS, list(keys))
        return {keys[k] for k in found}

    # manifests

    async def manifest(self, repository: str, digest: Digest) -> ManifestRecord | None:
        doc = await self.docs.get(MANIFESTS, _key(repository, "@", str(digest)))
        return None if doc is None else ManifestRecord.from_doc(doc)

    async def manifest_exists(self, repository: str, digest: str) -> bool:
        return await self.docs.get(MANIFESTS, _key(repository, "@", digest)) is not None

    def put_manifest_op(self, record: ManifestRecord) -> Operation:
        # Content-addressed: a stored manifest with this digest already has these bytes.
        return Create(MANIFESTS, record.to_doc())

    def touch_manifest_op(self, record: ManifestRecord) -> Operation:
        """After tags moved to the manifest: a new generation, and the manifest again if it was deleted."""
        return Touch(MANIFESTS, record.to_doc(), {"generation": uuid.uuid4().hex})

    def delete_manifest_op(self, record: ManifestRecord) -> Operation:
        """Delete the manifest as read: only if no push has moved a tag to it since (its generation)."""
        return Delete(MANIFESTS, _key(record.repository, "@", str(record.digest)),
                      expect={"generation": record.generation})

    async def referrers(self, repository: str, subject: Digest) -> list[ManifestRecord]:
        docs = await self.docs.find(MANIFESTS, {"repository": repository, "subject": str(subject)})
        return [ManifestRecord.from_doc(d) for d in docs]

    # tags

    async def tag(self, repository: str, name: str) -> TagRecord | None:
        doc = await self.docs.get(TAGS, _key(repository, ":", name))
        if doc is None:
            return None
        return TagRecord(repository, name, Digest.parse(doc["digest"]), doc["version"], doc["updated"])

    async def list_tags(self, repository: str, *, after: str | None = None, limit: int | None = None) -> list[str]:
        docs = await self.docs.find(TAGS, {"repository": repository}, order_by="name", after=after, limit=limit)
        return [d["name"] for d in docs]

    async def tags_of(self, repository: str, digest: Digest) -> list[TagRecord]:
        docs = await self.docs.find(TAGS, {"repository": repository, "digest": str(digest)})
        return [TagRecord(repository, d["name"], digest, d["version"], d["updated"]) for d in docs]

    def set_tag_op(self, repository: str, name: str, digest: Digest, *, current: TagRecord | None) -> Operation:
        """Compare-and-set: point the tag at `digest` only if it is still as read in `current`."""
        now = time.time()
        if current is None:
            return Insert(
                TAGS,
                {
                    "_id": _key(repository, ":", name),
                    "repository": repository,
                    "name": name,
                    "digest": str(digest),
                    "version": time.time_ns(),
                    "updated": now,
                },
            )
        return Update(
            TAGS,
            _key(repository, ":", name),
            {"digest": str(digest), "version": current.version + 1, "updated": now},
            expect={"version": current.version},
        )

    def delete_tag_op(self, current: TagRecord) -> Operation:
        return Delete(TAGS, _key(current.repository, ":", current.name), expect={"version": current.version})

    # uploads

    async def create_upload(self, upload_id: str, repository: str, *, actor: str) -> None:
        await self.docs.insert(
            UPLOADS,
            {
                "_id": upload_id,
                "repository": repository,
                "actor": actor,
                "created": time.time(),
            },
        )

    async def upload(self, upload_id: str) -> UploadRecord | None:
        doc = await self.docs.get(UPLOADS, upload_id)
        if doc is None:
            return None
        return UploadRecord(doc["_id"], doc["repository"], doc.get("actor", ""), doc["created"])

    async def delete_upload(self, upload_id: str) -> None:
        await self.docs.delete(UPLOADS, upload_id)
