"""Audit entries: who did what to which resource, when, from where, with what outcome.

Each entry is stored (collection `auth_audit`, listable by admins) and published as an AuditEntry
event; both go through the outbox in one commit, so an entry is published iff it is stored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from services.core.events.envelope import encode, new_envelope, topic_for
from services.core.events.outbox import Insert, OutboundEvent
from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.core.settings import TopicSettings
from services.core.telemetry import inject_headers

AUDIT = "auth_audit"
MAX_DETAIL_VALUE = 500


class Outcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"


_PB_OUTCOME = {
    Outcome.SUCCESS: pb.AUDIT_OUTCOME_SUCCESS,
    Outcome.DENIED: pb.AUDIT_OUTCOME_DENIED,
    Outcome.FAILURE: pb.AUDIT_OUTCOME_FAILURE,
}


def _audit_id(now: float) -> str:
    # Sortable by time across processes: the listing pages by _id.
    return f"{int(now * 1e9):020d}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    actor: str
    action: str
    resource: str
    outcome: Outcome
    source: str
    detail: Mapping[str, str] = field(default_factory=dict)
    time: float = field(default_factory=time.time)
    id: str = ""

    def with_id(self) -> AuditRecord:
        if self.id:
            return self
        return AuditRecord(
            self.actor, self.action, self.resource, self.outcome, self.source, self.detail, self.time,
            _audit_id(self.time),
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "resource": self.resource,
            "outcome": self.outcome.value,
            "source": self.source,
            "detail": [{"k": k, "v": v} for k, v in self.detail.items()],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> AuditRecord:
        return cls(
            actor=doc["actor"],
            action=doc["action"],
            resource=doc["resource"],
            outcome=Outcome(doc["outcome"]),
            source=doc.get("source", ""),
            detail={d["k"]: d["v"] for d in doc.get("detail") or ()},
            time=doc["time"],
            id=doc["_id"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": datetime.fromtimestamp(self.time, UTC).isoformat().replace("+00:00", "Z"),
            "actor": self.actor,
            "action": self.action,
            "resource": self.resource,
            "outcome": self.outcome.value,
            "source_address": self.source,
            "detail": dict(self.detail),
        }


def repository_of(resource: str) -> str:
    kind, _, name = resource.partition(":")
    return name if kind == "repository" else ""


def audit_writes(record: AuditRecord, topics: TopicSettings) -> tuple[Insert, OutboundEvent]:
    """The outbox operation storing `record` (which must have an id) and the AuditEntry event."""
    detail = {k: v[:MAX_DETAIL_VALUE] for k, v in record.detail.items()}
    payload = pb.AuditEntry(
        actor=record.actor,
        action=record.action,
        resource=record.resource,
        outcome=_PB_OUTCOME[record.outcome],
        source_address=record.source,
        detail=detail,
    )
    env = new_envelope(
        payload,
        repository=repository_of(record.resource),
        actor=record.actor,
        trace_headers=inject_headers(),
        time=datetime.fromtimestamp(record.time, UTC),
    )
    headers = (
        *tuple((k, v.encode()) for k, v in (("traceparent", env.traceparent), ("tracestate", env.tracestate)) if v),
        ("event-type", env.type.encode()),
        ("event-id", env.id.encode()),
    )
    event = OutboundEvent(topic=topic_for(env, topics), key=env.repository or record.resource, value=encode(env),
                          headers=headers)
    return Insert(AUDIT, record.to_doc()), event
