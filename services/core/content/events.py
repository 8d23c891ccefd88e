"""The events of content changes (manifests, tags, blobs), built as protobuf envelopes for the outbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.core.events.envelope import encode, new_envelope, topic_for
from services.core.events.outbox import OutboundEvent
from services.core.oci.digest import Digest
from services.core.oci.manifest import ParsedManifest
from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.core.settings import TopicSettings
from services.core.storage.meta import ManifestRecord
from services.core.telemetry import inject_headers


@dataclass(frozen=True, slots=True)
class Built:
    envelope: pb.Envelope


def _built(payload: object, repository: str, actor: str) -> Built:
    return Built(new_envelope(payload, repository=repository, actor=actor, trace_headers=inject_headers()))


def manifest_pushed(record: ManifestRecord, *, tags: Sequence[str], actor: str, parsed: ParsedManifest) -> Built:
    return _built(
        pb.ManifestPushed(
            repository=record.repository,
            digest=str(record.digest),
            media_type=record.media_type,
            size=record.size,
            tags=list(tags),
            subject_digest=str(record.subject) if record.subject else "",
            artifact_type=record.artifact_type or "",
            actor=actor,
            config_media_type=parsed.config.media_type if parsed.config else "",
        ),
        record.repository,
        actor,
    )


def manifest_deleted(record: ManifestRecord, *, actor: str) -> Built:
    return _built(
        pb.ManifestDeleted(
            repository=record.repository,
            digest=str(record.digest),
            subject_digest=str(record.subject) if record.subject else "",
            actor=actor,
        ),
        record.repository,
        actor,
    )


def tag_updated(
    repository: str, tag: str, digest: Digest, previous: Digest | None, *, actor: str, forced: bool
) -> Built:
    return _built(
        pb.TagUpdated(
            repository=repository,
            tag=tag,
            digest=str(digest),
            previous_digest=str(previous) if previous else "",
            actor=actor,
            forced=forced,
        ),
        repository,
        actor,
    )


def tag_deleted(repository: str, tag: str, digest: Digest, *, actor: str) -> Built:
    return _built(pb.TagDeleted(repository=repository, tag=tag, digest=str(digest), actor=actor), repository, actor)


def blob_deleted(repository: str, digest: Digest, *, actor: str) -> Built:
    return _built(pb.BlobDeleted(repository=repository, digest=str(digest), actor=actor), repository, actor)


def outbound(built: Built, topics: TopicSettings) -> OutboundEvent:
    env = built.envelope
    headers = (
        *tuple((k, v.encode()) for k, v in (("traceparent", env.traceparent), ("tracestate", env.tracestate)) if v),
        ("event-type", env.type.encode()),
        ("event-id", env.id.encode()),
    )
    return OutboundEvent(topic=topic_for(env, topics), key=env.repository, value=encode(env), headers=headers)
