"""Envelope helpers: round trip, validation on decode, and topic routing of every payload."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.events.envelope import (
    EVENT_TOPICS,
    SCHEMA_VERSION,
    Envelope,
    EnvelopeDecodeError,
    decode,
    encode,
    new_envelope,
    payload_of,
    topic_for,
)
from services.core.proto.hanzo.registry.v1 import events_pb2
from services.core.settings import TopicSettings

PAYLOAD_FIELDS = list(Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _pushed() -> events_pb2.ManifestPushed:
    return events_pb2.ManifestPushed(
        repository="library/alpine",
        digest="sha256:" + "a" * 64,
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=1234,
        tags=["3.19", "latest"],
        actor="alice",
    )


def test_round_trip() -> None:
    env = new_envelope(
        _pushed(),
        repository="library/alpine",
        actor="alice",
        trace_headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
    )
    decoded = decode(encode(env))
    assert decoded == env
    assert decoded.type == "hanzo.registry.v1.ManifestPushed"
    assert decoded.schema_version == SCHEMA_VERSION == 1
    assert uuid.UUID(decoded.id).version == 4
    assert decoded.traceparent == TRACEPARENT and decoded.tracestate == "vendor=1"
    assert decoded.repository == "library/alpine" and decoded.actor == "alice"
    assert abs(decoded.time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)) < timedelta(seconds=5)
    assert payload_of(decoded) == _pushed()


def test_ids_are_unique_and_overridable() -> None:
    assert new_envelope(_pushed(), repository="r").id != new_envelope(_pushed(), repository="r").id
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    env = new_envelope(_pushed(), repository="r", event_id="e-1", time=when)
    assert env.id == "e-1" and env.time.ToDatetime(tzinfo=UTC) == when


def test_trace_headers_are_optional_and_case_insensitive() -> None:
    assert new_envelope(_pushed(), repository="r").traceparent == ""
    env = new_envelope(_pushed(), repository="r", trace_headers={"Traceparent": TRACEPARENT})
    assert env.traceparent == TRACEPARENT and env.tracestate == ""


def test_new_envelope_rejects_non_payload() -> None:
    with pytest.raises(TypeError):
        new_envelope(Envelope(), repository="r")


def test_encoding_is_deterministic_for_maps() -> None:
    a = events_pb2.ScanCompleted(severity_counts={"high": 1, "critical": 2, "low": 3})
    b = events_pb2.ScanCompleted(severity_counts={"low": 3, "critical": 2, "high": 1})
    when = datetime(2024, 1, 1, tzinfo=UTC)
    env_a = new_envelope(a, repository="r", event_id="x", time=when)
    env_b = new_envelope(b, repository="r", event_id="x", time=when)
    assert encode(env_a) == encode(env_b)


def _no_payload() -> bytes:
    return encode(Envelope(id="x", type="hanzo.registry.v1.ManifestPushed", schema_version=1))


def _wrong_type() -> bytes:
    env = new_envelope(_pushed(), repository="r")
    env.type = "hanzo.registry.v1.TagDeleted"
    return encode(env)


def _newer_schema() -> bytes:
    env = new_envelope(_pushed(), repository="r")
    env.schema_version = SCHEMA_VERSION + 1
    return encode(env)


def _without_id() -> bytes:
    env = new_envelope(_pushed(), repository="r")
    env.id = ""
    return encode(env)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xff\xff\xff",
        b"not a protobuf message at all",
        b'{"id": "1", "type": "hanzo.registry.v1.ManifestPushed"}',
        encode(new_envelope(_pushed(), repository="r"))[:-3],
        _no_payload(),
        _wrong_type(),
        _newer_schema(),
        _without_id(),
    ],
    ids=["empty", "ff", "text", "json", "truncated", "no-payload", "wrong-type", "newer-schema", "no-id"],
)
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(EnvelopeDecodeError):
        decode(data)


@given(st.binary(max_size=256))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(EnvelopeDecodeError):
        decode(data)


def test_topic_mapping_covers_every_payload() -> None:
    assert set(EVENT_TOPICS) == {f.name for f in PAYLOAD_FIELDS}
    topic_attrs = set(TopicSettings.model_fields) - {"dead_letter_suffix"}
    assert set(EVENT_TOPICS.values()) <= topic_attrs


@pytest.mark.parametrize("field", PAYLOAD_FIELDS, ids=lambda f: f.name)
def test_topic_for_every_payload(field: object) -> None:
    message_type = field.message_type  # type: ignore[attr-defined]
    payload = getattr(events_pb2, message_type.name)()
    env = decode(encode(new_envelope(payload, repository="library/alpine")))
    assert env.type == message_type.full_name
    topics = TopicSettings()
    assert topic_for(env, topics) == getattr(topics, EVENT_TOPICS[field.name])  # type: ignore[attr-defined]
    renamed = TopicSettings(**{EVENT_TOPICS[field.name]: "custom.topic"})  # type: ignore[attr-defined]
    assert topic_for(env, renamed) == "custom.topic"


def test_topic_examples() -> None:
    topics = TopicSettings()
    assert topic_for(new_envelope(_pushed(), repository="r"), topics) == "registry.manifests"
    assert topic_for(new_envelope(events_pb2.TagDeleted(), repository="r"), topics) == "registry.tags"
    assert topic_for(new_envelope(events_pb2.AuditEntry(), repository=""), topics) == "registry.audit"


@given(
    repository=st.text(max_size=50),
    actor=st.text(max_size=20),
    tags=st.lists(st.text(max_size=20), max_size=5),
    size=st.integers(min_value=0, max_value=2**62),
)
def test_round_trip_property(repository: str, actor: str, tags: list[str], size: int) -> None:
    payload = events_pb2.ManifestPushed(repository=repository, tags=tags, size=size, actor=actor)
    env = new_envelope(payload, repository=repository, actor=actor)
    assert decode(encode(env)) == env
