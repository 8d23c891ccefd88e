"""Event envelopes: build, encode, decode and route the protobuf events the services exchange."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType

from google.protobuf.message import DecodeError, Message

from services.core.proto.hanzo.registry.v1.events_pb2 import Envelope
from services.core.settings import TopicSettings

__all__ = [
    "EVENT_TOPICS",
    "SCHEMA_VERSION",
    "Envelope",
    "EnvelopeDecodeError",
    "decode",
    "encode",
    "new_envelope",
    "payload_field",
    "payload_of",
    "topic_for",
]

SCHEMA_VERSION = 1
"""Envelope schema this code writes and the newest it reads."""

_ONEOF = "payload"

EVENT_TOPICS: Mapping[str, str] = MappingProxyType(
    {
        "manifest_pushed": "manifests",
        "manifest_deleted": "manifests",
        "tag_updated": "tags",
        "tag_deleted": "tags",
        "policy_changed": "manifests",
        "blob_deleted": "blobs",
        "scan_completed": "scans",
        "signature_verified": "signatures",
        "replication_completed": "replication",
        "gc_run_completed": "gc",
        "audit_entry": "audit",
    }
)
"""Envelope payload field name -> name of the TopicSettings attribute holding its topic."""


class EnvelopeDecodeError(ValueError):
    """Bytes that are not a usable Envelope: unparsable, without id or payload, or of a newer schema.
    A consumer treats this as a poison message (dead-letter it; retrying cannot help)."""


def _payload_fields_by_type() -> dict[str, str]:
    fields = Envelope.DESCRIPTOR.oneofs_by_name[_ONEOF].fields
    return {f.message_type.full_name: f.name for f in fields}


def new_envelope(
    payload: Message,
    *,
    repository: str,
    actor: str = "",
    trace_headers: Mapping[str, str] | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> Envelope:
    """Wrap `payload` (one of the Envelope's payload messages) in a new envelope.

    `trace_headers` are W3C headers (`traceparent`, `tracestate`), e.g. from
    `services.core.telemetry.inject_headers()`; None leaves the event untraced. `event_id` and `time`
    default to a fresh UUID4 and now. Raises TypeError when `payload` is not an Envelope payload type.
    """
    full_name: str = payload.DESCRIPTOR.full_name
    field = _payload_fields_by_type().get(full_name)
    if field is None:
        raise TypeError(f"{full_name} is not an Envelope payload")
    env = Envelope(
        id=event_id or str(uuid.uuid4()),
        type=full_name,
        schema_version=SCHEMA_VERSION,
        repository=repository,
        actor=actor,
    )
    env.time.FromDatetime(time or datetime.now(UTC))
    if trace_headers:
        # Header names are case-insensitive on HTTP; accept any casing.
        lowered = {k.lower(): v for k, v in trace_headers.items()}
        env.traceparent = lowered.get("traceparent", "")
        env.tracestate = lowered.get("tracestate", "")
    getattr(env, field).CopyFrom(payload)
    return env


def encode(env: Envelope) -> bytes:
    """Serialize an envelope (deterministically: map fields in key order)."""
    data: bytes = env.SerializeToString(deterministic=True)
    return data


def decode(data: bytes) -> Envelope:
    """Parse and validate an envelope. Raises EnvelopeDecodeError for anything unusable."""
    env = Envelope()
    try:
        env.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise EnvelopeDecodeError(f"not an Envelope: {exc}") from exc
    # Protobuf parses many garbage inputs (even b"") into a message; check what every event must have.
    if not env.id:
        raise EnvelopeDecodeError("envelope has no id")
    if env.schema_version > SCHEMA_VERSION:
        raise EnvelopeDecodeError(f"envelope schema {env.schema_version} is newer than {SCHEMA_VERSION}")
    field = env.WhichOneof(_ONEOF)
    if field is None:
        # A payload added after this build parses as an unknown field: we cannot handle it.
        raise EnvelopeDecodeError(f"envelope {env.id} has no known payload (type {env.type!r})")
    expected = Envelope.DESCRIPTOR.fields_by_name[field].message_type.full_name
    if env.type != expected:
        raise EnvelopeDecodeError(f"envelope {env.id} says type {env.type!r} but carries {expected}")
    return env


def payload_field(env: Envelope) -> str:
    """Name of the payload field set in `env` (a key of EVENT_TOPICS). Raises EnvelopeDecodeError if none."""
    field = env.WhichOneof(_ONEOF)
    if field is None:
        raise EnvelopeDecodeError(f"envelope {env.id} has no payload")
    return str(field)


def payload_of(env: Envelope) -> Message:
    """The payload message of `env` (e.g. a ManifestPushed; narrow with isinstance).
    Raises EnvelopeDecodeError if none."""
    payload: Message = getattr(env, payload_field(env))
    return payload


def topic_for(env: Envelope, topics: TopicSettings) -> str:
    """The topic `env` is published to, per the configured topic names."""
    return str(getattr(topics, EVENT_TOPICS[payload_field(env)]))
