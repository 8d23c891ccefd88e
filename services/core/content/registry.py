"""The registry's content behind the OCI API: blobs, uploads, manifests, tags, referrers, over the ports.

HTTP-free: the distribution service's handlers translate requests into these calls, and the other services
call it directly; errors are typed (services.core.errors).
Write order is chosen so a crash between any two writes leaves a consistent, repairable state:
blob bytes before their link, manifest before its tag, events through the outbox with their change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from services.core.content import events
from services.core.errors import (
    BlobUnknownError,
    BlobUploadUnknownError,
    ConflictError,
    DigestInvalidError,
    ManifestBlobUnknownError,
    ManifestUnknownError,
    NameUnknownError,
    TagImmutableError,
    UnavailableError,
    UnsupportedError,
)
from services.core.events.outbox import Operation, OutboundEvent, Outbox
from services.core.oci.digest import Digest
from services.core.oci.manifest import (
    ParsedManifest,
    ReferrerDescriptor,
    build_referrers_index,
    parse_manifest,
)
from services.core.oci.names import RepositoryName, Tag
from services.core.policy.document import PolicyDocument
from services.core.policy.tags import TagDecision, policy_tag_immutability, tag_immutability
from services.core.settings import RegistrySettings, TopicSettings
from services.core.storage.blobs import BlobInfo, BlobPutter, BlobStore
from services.core.storage.gcmarks import BlobGuard, CollectedWhileStoringError, GcMarks
from services.core.storage.meta import ManifestRecord, MetadataStore, TagRecord

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class DeletedManifest:
    digest: Digest
    tags: tuple[TagRecord, ...]
    forced: bool


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: Digest
    subject: Digest | None
    tags: tuple[str, ...]
    forced_moves: tuple[tuple[str, Digest], ...] = ()
    """(tag, previous digest) of each tag moved by force."""
    moves: tuple[tuple[str, Digest | None], ...] = ()
    """(tag, previous digest or None for a new tag) of each tag this push moved to the manifest."""


class Registry:
    """The OCI registry's behaviour over BlobStore, MetadataStore and the outbox."""

    def __init__(
        self,
        *,
        blobs: BlobStore,
        meta: MetadataStore,
        outbox: Outbox,
        settings: RegistrySettings,
        topics: TopicSettings,
        clock: Callable[[], float] = time.time,
        blob_guard: BlobGuard | None = None,
        policies: Callable[[str, str], Awaitable[PolicyDocument]] | None = None,
    ) -> None:
        self.blobs = blobs
        self.blob_guard = blob_guard if blob_guard is not None else GcMarks(meta.docs)
        self.policies = policies
        """(namespace, repository) -> the effective policy, for its tag rules (cached by the caller); None:
        the registry's tag_rules alone."""
        self.meta = meta
        self.outbox = outbox
        self.settings = settings
        self.topics = topics
        self._clock = clock

    # blobs

    async def linked_blob(self, repo: RepositoryName, digest: Digest) -> BlobInfo:
        """The blob as `repo` links it (its size recorded at link time), without asking the blob
        store: for a GET, whose read fails cleanly if the bytes are gone, this saves a storage round
        trip (an S3 HEAD). BlobUnknownError unless `repo` links it."""
        size = await self.meta.blob_link(str(repo), digest)
        if size is None:
            raise BlobUnknownError(f"blob {digest} is not in repository {repo}")
        return BlobInfo(digest, size)

    async def stat_blob(self, repo: RepositoryName, digest: Digest) -> BlobInfo:
        """The blob as seen from `repo`; BlobUnknownError unless `repo` links it and it is stored.
        (A HEAD answers with this: a client skips uploading a blob the registry says it has.)"""
        await self.linked_blob(repo, digest)
        info = await self.blobs.stat(digest)
        if info is None:
            raise BlobUnknownError(f"blob {digest} is not in repository {repo}")
        return info

    async def read_blob(
        self, repo: RepositoryName, digest: Digest, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream a blob that `repo` links (a digest is reachable only where it is linked)."""
        await self.linked_blob(repo, digest)
        async for chunk in self.blobs.read(digest, offset=offset, length=length):
            yield chunk

    async def delete_blob(self, repo: RepositoryName, digest: Digest, *, actor: str) -> None:
        """Unlink the blob from `repo`; the bytes go when GC finds no link left."""
        self._check_delete_enabled()
        if await self.meta.blob_link(str(repo), digest) is None:
            raise BlobUnknownError(f"blob {digest} is not in repository {repo}")
        await self.outbox.commit(
            [self.meta.unlink_blob_op(str(repo), digest)],
            [self._event(events.blob_deleted(str(repo), digest, actor=actor))],
        )

    # uploads

    async def start_upload(self, repo: RepositoryName, *, actor: str) -> str:
        await self.meta.ensure_repository(str(repo), namespace=repo.namespace)
        upload_id = await self.blobs.start_upload()
        await self.meta.create_upload(upload_id, str(repo), actor=actor)
        return upload_id

    async def _check_upload(self, repo: RepositoryName, upload_id: str) -> None:
        record = await self.meta.upload(upload_id)
        if record is None or record.repository != str(repo):
            raise BlobUploadUnknownError(f"upload {upload_id[:64]!r} is unknown in repository {repo}")

    async def upload_size(self, repo: RepositoryName, upload_id: str) -> int:
        await self._check_upload(repo, upload_id)
        return await self.blobs.upload_size(upload_id)

    async def append(
        self, repo: RepositoryName, upload_id: str, chunks: AsyncIterable[bytes], *, offset: int | None
    ) -> int:
        """Append at `offset` (the stored size when None: a streamed PATCH). Returns the new size."""
        await self._check_upload(repo, upload_id)
        if offset is None:
            offset = await self.blobs.upload_size(upload_id)
        return await self.blobs.append(upload_id, chunks, offset=offset)

    async def put_blob(
        self, repo: RepositoryName, digest: Digest, chunks: AsyncIterable[bytes], *, actor: str
    ) -> BlobInfo:
        """A whole blob whose digest came first (`POST ?digest=` with the body): no session to resume."""
        if isinstance(self.blobs, BlobPutter):
            await self.meta.ensure_repository(str(repo), namespace=repo.namespace)
            info = await self.blobs.put(digest, chunks)
            await self.meta.link_blob(str(repo), info.digest, info.size)
            await self._guard_link(repo, info)
            return info
        # Shielded: a client hanging up cancels the request, which must not leave a session made half-way
        # (created in the store, not yet returned here) behind; one made is discarded below.
        starting = asyncio.ensure_future(self.start_upload(repo, actor=actor))
        try:
            upload_id = await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.discard_upload(await starting)
            raise
        try:
            await self.blobs.append(upload_id, chunks, offset=0)
            return await self.finish_upload(repo, upload_id, digest)
        except BaseException:
            await self.discard_upload(upload_id)
            raise

    async def finish_upload(
        self,
        repo: RepositoryName,
        upload_id: str,
        digest: Digest,
        *,
        body: AsyncIterable[bytes] | None = None,
        offset: int | None = None,
    ) -> BlobInfo:
        """Append the final chunk `body` (if any, at `offset`, or at the end when None), verify, publish."""
        await self._check_upload(repo, upload_id)
        if body is not None:
            direct = isinstance(self.blobs, BlobPutter) and offset in (None, 0)
            # Read the stored size only when it decides something: a given offset is checked by append.
            size = await self.blobs.upload_size(upload_id) if direct or offset is None else offset
            if direct and size == 0:
                assert isinstance(self.blobs, BlobPutter)
                # The whole blob in the closing PUT, digest first: straight to its address, no copy.
                try:
                    info = await self.blobs.put(digest, body)
                except DigestInvalidError:
                    await self.discard_upload(upload_id)
                    raise
                await self.meta.link_blob(str(repo), info.digest, info.size)
                await self.discard_upload(upload_id)
                await self._guard_link(repo, info)
                return info
            await self.blobs.append(upload_id, body, offset=size)
        try:
            info = await self.blobs.commit(upload_id, digest)
        except DigestInvalidError:
            # The store discarded the unverifiable bytes; the session record goes with them.
            await self.meta.delete_upload(upload_id)
            raise
        await self.meta.link_blob(str(repo), info.digest, info.size)
        await self.meta.delete_upload(upload_id)
        await self._guard_link(repo, info)
        return info

    async def discard_upload(self, upload_id: str) -> None:
        await self.blobs.abort(upload_id)
        await self.meta.delete_upload(upload_id)

    async def cancel_upload(self, repo: RepositoryName, upload_id: str) -> None:
        await self._check_upload(repo, upload_id)
        await self.discard_upload(upload_id)

    async def mount(self, repo: RepositoryName, source: RepositoryName, digest: Digest) -> BlobInfo | None:
        """Link a blob of `source` into `repo`; None when `source` does not have it.
        The caller has already checked that its principal may read `source`."""
        size = await self.meta.blob_link(str(source), digest)
        if size is None or await self.blobs.stat(digest) is None:
            return None
        await self.meta.ensure_repository(str(repo), namespace=repo.namespace)
        await self.meta.link_blob(str(repo), digest, size)
        if not await self._guard_link(repo, BlobInfo(digest, size), absent_ok=True):
            return None  # GC deleted it meanwhile: the client uploads it
        return BlobInfo(digest, size)

    async def _guard_link(self, repo: RepositoryName, info: BlobInfo, *, absent_ok: bool = False) -> bool:
        """Right after linking a blob: rescue it from a GC run, or (GC deleted it meanwhile) undo the link
        and answer UnavailableError, or False with `absent_ok` (services/core/storage/gcmarks.py)."""

        async def exists() -> bool:
            return await self.blobs.stat(info.digest) is not None

        if await self.blob_guard.after_link(info.digest, exists=exists):
            return True
        await self.meta.docs.delete("blob_links", f"{repo}@{info.digest}")
        if absent_ok:
            return False
        raise UnavailableError(f"blob {info.digest} was garbage-collected while it was pushed; push it again")

    # manifests

    async def resolve(self, repo: RepositoryName, reference: Tag | Digest) -> ManifestRecord:
        if isinstance(reference, Digest):
            record = await self.meta.manifest(str(repo), reference)
        else:
            tag = await self.meta.tag(str(repo), str(reference))
            record = None if tag is None else await self.meta.tagged_manifest(str(repo), tag.digest)
        if record is None:
            if not await self.meta.repository_exists(str(repo)):
                raise NameUnknownError(f"repository {repo} is not known to this registry")
            raise ManifestUnknownError(f"manifest {reference} is not in repository {repo}")
        return record

    async def put_manifest(
        self,
        repo: RepositoryName,
        reference: Tag | Digest,
        data: bytes,
        content_type: str | None,
        *,
        actor: str,
        extra_tags: Sequence[Tag] = (),
        force: bool = False,
    ) -> PushedManifest:
        """Store a manifest and point its tags at it: the reference when it is a tag, plus
        `extra_tags` (the `?tag=` parameters of a push by digest)."""
        parsed = parse_manifest(data, content_type, max_bytes=self.settings.max_manifest_bytes)
        if isinstance(reference, Digest) and reference != parsed.digest:
            if reference.algorithm != parsed.digest.algorithm:
                actual = Digest.of(data, reference.algorithm)
                if actual == reference:
                    parsed = _with_digest(parsed, actual)
            if reference != parsed.digest:
                raise DigestInvalidError(
                    f"manifest digest {parsed.digest} does not match the digest in the URL {reference}"
                )
        # A manifest this replica knows is stored was checked when it was stored: a push that only tags it
        # reads neither its references nor the manifest again (meta.py: a stale hint is harmless).
        known = self.meta.manifest_known(str(repo), parsed.digest)
        absent = False
        if not known:
            if await self.meta.manifest_exists(str(repo), str(parsed.digest)):
                known = True
            else:
                await self._check_references(repo, parsed)
                absent = True
        stored: PushedManifest | None = None
        try:
            async with self.blob_guard.storing_manifest(  # GC: rescue what it references, or refuse what is gone
                str(repo),
                [str(d.digest) for d in parsed.blob_references],
                [str(d.digest) for d in parsed.child_manifests] + ([str(parsed.digest)] if known else []),
            ) as going:
                if going:
                    raise CollectedWhileStoringError(going)
                stored = await self._store_manifest(repo, reference, parsed, data, actor=actor,
                                                    extra_tags=extra_tags, force=force, known=known, absent=absent)
            return stored
        except CollectedWhileStoringError as exc:
            self.meta.forget_manifest(str(repo), parsed.digest)
            if stored is not None:  # the late store (gcmarks.py): stored, and only then told what was gone
                await self._unstore(repo, parsed, stored, exc.digests, actor=actor)
            raise ManifestBlobUnknownError(
                f"manifest references {len(exc.digests)} blob(s) or manifest(s) garbage-collected in {repo}; push "
                "them again: " + ", ".join(exc.digests[:10]),
                detail={"digests": exc.digests},
            ) from None

    async def _store_manifest(self, repo: RepositoryName, reference: Tag | Digest, parsed: ParsedManifest,
                              data: bytes, *, actor: str, extra_tags: Sequence[Tag], force: bool, known: bool,
                              absent: bool) -> PushedManifest:
        await self.meta.ensure_repository(str(repo), namespace=repo.namespace)
        tags = list(
            dict.fromkeys([*([str(reference)] if isinstance(reference, Tag) else []), *(str(t) for t in extra_tags)])
        )
        record = ManifestRecord(
            repository=str(repo),
            digest=parsed.digest,
            media_type=parsed.media_type,
            size=parsed.size,
            data=data,
            subject=parsed.subject.digest if parsed.subject else None,
            artifact_type=parsed.referrer_artifact_type,
            annotations=dict(parsed.annotations),
            references=tuple(str(d.digest) for d in (*parsed.blob_references, *parsed.child_manifests)),
            created=self._clock(),
        )
        # Each attempt moves the tags that still need it, compare-and-set, in one partial commit: a tag
        # that lost its race is retried with a fresh read, and the events of those that moved go out.
        pending = tags
        moves: list[tuple[str, Digest | None]] = []  # (tag, the digest it pointed at before, if any)
        announced = False
        for _attempt in range(_CAS_ATTEMPTS):
            tag_ops: list[Operation] = []
            outbound: list[OutboundEvent] = []
            attempted: list[str] = []
            previous_of: dict[str, Digest] = {}
            for tag in pending:
                current = await self.meta.tag(str(repo), tag)
                if current is not None and current.digest == parsed.digest:
                    continue
                await self._check_tag_mutable(repo, tag, current, force=force)
                tag_ops.append(self.meta.set_tag_op(str(repo), tag, parsed.digest, current=current))
                attempted.append(tag)
                if current is not None:
                    previous_of[tag] = current.digest
                previous = current.digest if current else None
                forced = force and current is not None
                built = events.tag_updated(str(repo), tag, parsed.digest, previous, actor=actor, forced=forced)
                outbound.append(self._event(built, op=len(tag_ops) - 1))
            # The manifest first, unless it is known to be stored and tags move: then the touch after the tags
            # (a delete of this manifest that read it before now loses, meta.py) re-creates it if a delete
            # took it meanwhile, so no tag dangles either way. The manifest's event is bound to the
            # operation that always applies (the create, else the touch).
            create = not (known and attempted)
            ops: list[Operation] = [self.meta.put_manifest_op(record, absent=absent)] if create else []
            first_tag_op = len(ops)
            outbound = [dataclasses.replace(e, op=(e.op or 0) + first_tag_op) for e in outbound]
            ops += tag_ops
            if attempted:
                ops.append(self.meta.touch_manifest_op(record))
            if not announced:
                built = events.manifest_pushed(record, tags=tags, actor=actor, parsed=parsed)
                outbound.insert(0, self._event(built, op=0 if create else len(ops) - 1))
            committed = await self.outbox.commit(ops, outbound, partial=True)
            announced = True
            known, absent = True, False
            self.meta.remember_manifest(str(repo), parsed.digest)
            lost = [tag for tag, ok in zip(attempted, committed.applied[first_tag_op:], strict=False) if not ok]
            moves += [(tag, previous_of.get(tag)) for tag in attempted if tag not in lost]
            if not lost:
                break
            pending = lost
        else:
            moved = ", ".join(tag for tag, _ in moves)
            done = f"; manifest {parsed.digest} is stored" + (f" and tags {moved} moved" if moved else "")
            raise ConflictError(f"tags {', '.join(pending)} of {repo} kept changing; retry the push{done}")
        forced_moves = tuple((tag, previous) for tag, previous in moves if force and previous is not None)
        return PushedManifest(parsed.digest, record.subject, tuple(tags), forced_moves, tuple(moves))

    async def _unstore(self, repo: RepositoryName, parsed: ParsedManifest, stored: PushedManifest,
                       gone: Sequence[str], *, actor: str) -> None:
        """Roll back a push told after storing that what its manifest references was collected meanwhile (the
        client is told to push again), so no tag points at a manifest whose content is gone: each tag this push
        moved goes back to the manifest it pointed at (if that is still stored), and the manifest goes with the
        tags still on it. The manifest was not kept by the run, or it would have kept what it references: it was
        new, or garbage that this push believed stored (its touch re-created it). Only while the collected
        content is still gone (a client that pushed it again meanwhile mended the manifest) and only as read
        (compare-and-set: a later push wins). Best effort: the refusal stands either way; a failure is logged."""
        name = str(repo)
        try:
            blobs = {str(d.digest) for d in parsed.blob_references} & set(gone)
            children = set(gone) - blobs - {str(parsed.digest)}
            if await self.meta.linked_digests(name, list(blobs)) or any(
                [await self.meta.manifest_exists(name, d) for d in children]
            ):
                return
            ops: list[Operation] = []
            outbound: list[OutboundEvent] = []
            for tag, previous in stored.moves:
                current = await self.meta.tag(name, tag)
                if current is None or current.digest != parsed.digest:
                    continue
                if previous is not None and await self.meta.manifest_exists(name, str(previous)):
                    ops.append(self.meta.set_tag_op(name, tag, previous, current=current))
                    built = events.tag_updated(name, tag, previous, parsed.digest, actor=actor, forced=False)
                    outbound.append(self._event(built, op=len(ops) - 1))
            if ops:
                await self.outbox.commit(ops, outbound, partial=True)
            record = await self.meta.manifest(name, parsed.digest)
            if record is not None:
                ops, outbound = self._manifest_delete(record, await self.meta.tags_of(name, parsed.digest),
                                                      actor=actor)
                await self.outbox.commit(ops, outbound, partial=True)
        except Exception:
            log.exception("could not roll back manifest %s of %s, stored while GC collected what it references",
                          parsed.digest, name)

    async def tag_decision(self, repo: RepositoryName, tag: str) -> TagDecision:
        """The repository's effective policy's tag globs, then the registry's `tag_rules`."""
        if self.policies is None:
            return tag_immutability(self.settings.tag_rules, namespace=repo.namespace, tag=tag)
        policy = await self.policies(repo.namespace, str(repo))
        return policy_tag_immutability(policy.tags, self.settings.tag_rules, namespace=repo.namespace, tag=tag)

    async def _check_tag_mutable(self, repo: RepositoryName, tag: str, current: TagRecord | None, *, force: bool
                                 ) -> None:
        if current is None or force:
            return
        decision = await self.tag_decision(repo, tag)
        if decision.immutable:
            raise TagImmutableError(
                f"tag {tag} of {repo} is immutable (rule {decision.rule!r}): it already points to "
                f"{current.digest}; push a new tag, or force with X-Hanzo-Force: true if you may",
                detail={"tag": tag, "rule": decision.rule, "digest": str(current.digest)},
            )

    async def _check_references(self, repo: RepositoryName, parsed: ParsedManifest) -> None:
        missing: list[str] = []
        blob_digests = [str(d.digest) for d in parsed.blob_references]
        linked = await self.meta.linked_digests(str(repo), blob_digests)
        missing.extend(d for d in blob_digests if d not in linked)
        for child in parsed.child_manifests:
            if not await self.meta.manifest_exists(str(repo), str(child.digest)):
                missing.append(str(child.digest))
        if missing:
            raise ManifestBlobUnknownError(
                f"manifest references {len(missing)} blob(s) or manifest(s) not in repository {repo}: "
                + ", ".join(missing[:10]),
                detail={"digests": missing},
            )

    async def delete_manifest(
        self, repo: RepositoryName, reference: Tag | Digest, *, actor: str, force: bool = False
    ) -> DeletedManifest:
        """By tag: remove the tag. By digest: remove the manifest and every tag pointing to it.
        An immutable tag goes only with `force` (as moving it does)."""
        self._check_delete_enabled()
        if isinstance(reference, Tag):
            return await self._delete_tag(repo, reference, actor=actor, force=force)
        deleted: list[TagRecord] = []
        for _attempt in range(_CAS_ATTEMPTS):
            record = await self.meta.manifest(str(repo), reference)
            if record is None:
                if deleted:  # a concurrent delete of the same manifest finished the job
                    return DeletedManifest(reference, tuple(deleted), forced=force)
                raise ManifestUnknownError(f"manifest {reference} is not in repository {repo}")
            tags = await self.meta.tags_of(str(repo), reference)
            for tag in tags:
                await self._check_tag_deletable(repo, tag, force=force)
            ops, outbound = self._manifest_delete(record, tags, actor=actor)
            committed = await self.outbox.commit(ops, outbound, partial=True)
            deleted += [t for t, ok in zip(tags, committed.applied, strict=False) if ok]
            if committed.applied[-1]:
                self.meta.forget_manifest(str(repo), reference)
                return DeletedManifest(reference, tuple(deleted), forced=force)
        gone = f"; tags {', '.join(t.name for t in deleted)} were deleted" if deleted else ""
        raise ConflictError(f"manifest {reference} of {repo} kept being re-pushed; retry the delete{gone}")

    def _manifest_delete(self, record: ManifestRecord, tags: Sequence[TagRecord], *, actor: str
                         ) -> tuple[list[Operation], list[OutboundEvent]]:
        """The tags' deletes, then the manifest's, last and only if no push moved a tag to it since it was read
        (its generation); with their events."""
        ops: list[Operation] = [self.meta.delete_tag_op(t) for t in tags]
        outbound = [self._event(events.tag_deleted(record.repository, t.name, record.digest, actor=actor), op=i)
                    for i, t in enumerate(tags)]
        ops.append(self.meta.delete_manifest_op(record))
        outbound.append(self._event(events.manifest_deleted(record, actor=actor), op=len(ops) - 1))
        return ops, outbound

    async def _delete_tag(self, repo: RepositoryName, tag: Tag, *, actor: str, force: bool) -> DeletedManifest:
        for _attempt in range(_CAS_ATTEMPTS):
            current = await self.meta.tag(str(repo), str(tag))
            if current is None:
                raise ManifestUnknownError(f"tag {tag} is not in repository {repo}")
            await self._check_tag_deletable(repo, current, force=force)
            event = events.tag_deleted(str(repo), current.name, current.digest, actor=actor)
            committed = await self.outbox.commit([self.meta.delete_tag_op(current)], [self._event(event, op=0)],
                                                 partial=True)
            if committed.complete:
                return DeletedManifest(current.digest, (current,), forced=force)
        raise ConflictError(f"tag {tag} of {repo} kept changing; retry the delete")

    async def _check_tag_deletable(self, repo: RepositoryName, tag: TagRecord, *, force: bool) -> None:
        """Deleting an immutable tag would let it be pushed again with other content: it needs the
        same force as moving it."""
        if force:
            return
        decision = await self.tag_decision(repo, tag.name)
        if decision.immutable:
            raise TagImmutableError(
                f"tag {tag.name} of {repo} is immutable (rule {decision.rule!r}) and cannot be deleted; "
                "a registry admin may force it with X-Hanzo-Force: true",
                detail={"tag": tag.name, "rule": decision.rule, "digest": str(tag.digest)},
            )

    # discovery

    async def list_tags(self, repo: RepositoryName, *, after: str | None, limit: int | None) -> list[str]:
        name = str(repo)
        # Tag names kept for the repository prove it exists: deleting it deletes its tags first, which drops them.
        if self.meta.tag_names_kept(name):
            return await self.meta.list_tags(name, after=after, limit=limit)
        # Otherwise the existence check and the listing are independent reads: one round trip's wait, not two.
        exists, names = await asyncio.gather(self.meta.repository_exists(name),
                                             self.meta.list_tags(name, after=after, limit=limit))
        if not exists:
            raise NameUnknownError(f"repository {repo} is not known to this registry")
        return names

    async def referrer_descriptors(
        self, repo: RepositoryName, subject: Digest, *, artifact_type: str | None = None
    ) -> list[ReferrerDescriptor]:
        """The manifests of `repo` whose subject is `subject`, oldest first, filtered by `artifact_type`."""
        records = await self.meta.referrers(str(repo), subject)
        return [
            ReferrerDescriptor(
                media_type=r.media_type,
                digest=r.digest,
                size=r.size,
                artifact_type=r.artifact_type,
                annotations=r.annotations,
            )
            for r in sorted(records, key=lambda r: (r.created, str(r.digest)))
            if artifact_type is None or r.artifact_type == artifact_type
        ]

    async def referrers(self, repo: RepositoryName, subject: Digest, *, artifact_type: str | None) -> bytes:
        """The referrers API's answer: an image index of `referrer_descriptors`."""
        return build_referrers_index(await self.referrer_descriptors(repo, subject, artifact_type=artifact_type))

    # helpers

    def _check_delete_enabled(self) -> None:
        if not self.settings.delete_enabled:
            raise UnsupportedError("deletion is disabled on this registry")

    def _event(self, built: events.Built, *, op: int | None = None) -> OutboundEvent:
        return dataclasses.replace(events.outbound(built, self.topics), op=op)


def _with_digest(parsed: ParsedManifest, digest: Digest) -> ParsedManifest:
    return dataclasses.replace(parsed, digest=digest)
