"""Registry events as webhook events (pure): the envelope payload -> event type, and the facts a webhook
filters on (repository, tags, digest) plus the JSON `data` of the delivery body.

Mapping (proto/hanzo/registry/v1/events.proto):
  ManifestPushed -> manifest.pushed      ManifestDeleted -> manifest.deleted
  TagUpdated -> tag.updated              TagDeleted -> tag.deleted
  ScanCompleted -> scan.completed        SignatureVerified -> signature.verified
  ReplicationCompleted -> replication.completed                GcRunCompleted -> gc.completed
BlobDeleted, AuditEntry and PolicyChanged are not webhook events. A payload added to the proto later is
mapped by adding it to PAYLOAD_EVENTS (and its topic to the service's consumers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from google.protobuf.json_format import MessageToDict

from services.core.events.envelope import payload_field, payload_of
from services.core.proto.hanzo.registry.v1 import events_pb2

PAYLOAD_EVENTS: dict[str, str] = {
    "manifest_pushed": "manifest.pushed",
    "manifest_deleted": "manifest.deleted",
    "tag_updated": "tag.updated",
    "tag_deleted": "tag.deleted",
    "scan_completed": "scan.completed",
    "signature_verified": "signature.verified",
    "replication_completed": "replication.completed",
    "gc_run_completed": "gc.completed",
}

TOPIC_SETTINGS = ("manifests", "tags", "scans", "signatures", "replication", "gc")
"""The TopicSettings attributes whose topics carry the events above."""


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    type: str
    event_id: str
    time: str
    repository: str
    actor: str
    digest: str = ""
    tags: tuple[str, ...] = ()
    tags_known: bool = True
    """False for facts about a digest (scan, signature): the tags are looked up in metadata."""
    data: dict[str, Any] = field(default_factory=dict)


def webhook_event(envelope: events_pb2.Envelope) -> WebhookEvent | None:
    """The webhook event an envelope stands for, or None when it is not one."""
    kind = payload_field(envelope)
    name = PAYLOAD_EVENTS.get(kind)
    if name is None:
        return None
    payload = payload_of(envelope)
    data = MessageToDict(payload, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    digest = str(getattr(payload, "digest", ""))
    tags: tuple[str, ...] = ()
    known = True
    if isinstance(payload, events_pb2.ManifestPushed):
        tags = tuple(payload.tags)
    elif isinstance(payload, events_pb2.TagUpdated | events_pb2.TagDeleted):
        tags = (payload.tag,)
    elif isinstance(payload, events_pb2.ReplicationCompleted):
        tags = (payload.tag,) if payload.tag else ()
    elif isinstance(payload, events_pb2.ScanCompleted | events_pb2.SignatureVerified):
        known = False
    repository = envelope.repository or str(getattr(payload, "repository", ""))
    when = envelope.time.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    return WebhookEvent(type=name, event_id=envelope.id, time=when, repository=repository, actor=envelope.actor,
                        digest=digest, tags=tags, tags_known=known, data=data)
