"""PolicyService: read, merge and change policy documents; every change is audited and announced.

A change (set or delete) is one outbox commit: the document operation, its audit entry (`policy.set`,
`policy.delete`) and two events, the AuditEntry and a PolicyChanged. PolicyChanged goes to the
`manifests` topic: the consumers that act on policies (pull gates, GC retention, the scanner) already
read it, and it is keyed like the manifest events of the repository it concerns (a namespace policy is
keyed `ns:<namespace>`), so no new topic has to be provisioned.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.core.auth.audit import AuditRecord, Outcome, audit_writes
from services.core.auth.errors import NotFoundError
from services.core.events.envelope import EVENT_TOPICS, encode, new_envelope
from services.core.events.outbox import Operation, OutboundEvent, Outbox
from services.core.policy.document import PolicyDocument
from services.core.policy.merge import effective
from services.core.policy.store import PolicyStore, PolicyTarget, StoredPolicy
from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.core.settings import TopicSettings
from services.core.telemetry import inject_headers

POLICY_CHANGED = "policy_changed"


def policy_changed(target: PolicyTarget, *, actor: str, deleted: bool, topics: TopicSettings) -> OutboundEvent:
    """The PolicyChanged event of a change to `target`'s document."""
    env = new_envelope(
        pb.PolicyChanged(namespace=target.namespace, repository=target.repository or "", actor=actor,
                         deleted=deleted),
        repository=target.repository or "",
        actor=actor,
        trace_headers=inject_headers(),
    )
    headers = (
        *tuple((k, v.encode()) for k, v in (("traceparent", env.traceparent), ("tracestate", env.tracestate)) if v),
        ("event-type", env.type.encode()),
        ("event-id", env.id.encode()),
    )
    topic = str(getattr(topics, EVENT_TOPICS.get(POLICY_CHANGED, "manifests")))
    return OutboundEvent(topic=topic, key=target.repository or target.key, value=encode(env), headers=headers)


class PolicyService:
    def __init__(self, *, store: PolicyStore, outbox: Outbox, topics: TopicSettings, default: PolicyDocument,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.outbox = outbox
        self.topics = topics
        self.default = default
        self._clock = clock

    async def setup(self) -> None:
        await self.store.setup()

    async def get(self, target: PolicyTarget) -> StoredPolicy:
        """The document set on `target`. NotFoundError when none is."""
        stored = await self.store.get(target)
        if stored is None:
            what = f"repository {target.repository}" if target.repository else f"namespace {target.namespace}"
            raise NotFoundError(f"{what} has no policy")
        return stored

    async def effective(self, namespace: str, repository: str) -> PolicyDocument:
        """The policy in force for `repository`: default <- namespace <- repository (merge.py)."""
        ns = await self.store.get(PolicyTarget(namespace))
        repo = await self.store.get(PolicyTarget(namespace, repository))
        return effective(self.default, namespace=ns.document if ns else None,
                         repository=repo.document if repo else None)

    async def put(self, target: PolicyTarget, document: PolicyDocument, *, actor: str, source: str) -> StoredPolicy:
        """Set (replace) `target`'s document."""
        now = self._clock()
        op = self.store.put_op(target, document, actor=actor, now=now)
        await self._commit(target, op, action="policy.set", actor=actor, source=source, deleted=False)
        return StoredPolicy(target, document, now, actor)

    async def delete(self, target: PolicyTarget, *, actor: str, source: str) -> None:
        """Remove `target`'s document. NotFoundError when none is set."""
        await self.get(target)
        await self._commit(target, self.store.delete_op(target), action="policy.delete", actor=actor,
                           source=source, deleted=True)

    async def _commit(self, target: PolicyTarget, op: Operation, *, action: str, actor: str, source: str,
                      deleted: bool) -> None:
        record = AuditRecord(actor, action, target.resource, Outcome.SUCCESS, source).with_id()
        insert, audit_event = audit_writes(record, self.topics)
        changed = policy_changed(target, actor=actor, deleted=deleted, topics=self.topics)
        await self.outbox.commit([op, insert], [audit_event, changed])
