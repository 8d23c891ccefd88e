"""From events to queued deliveries: each event goes to the webhooks that want it (event type, repository
glob, tag pattern), and facts about an image ask whether it became deployable.

`image.deployable` fires once per (webhook, repository, tag, digest): when the tag matches the webhook's
tag pattern, points at the digest, and every requirement holds (services/core/deploy_checks.py). It is
asked on a manifest pushed with tags, a tag updated, a scan completed and a signature verified, whichever
comes last. Deliveries get ids derived from (webhook, event), so an event the log redelivers is queued once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from services.core.deploy_checks import DeployChecks
from services.core.oci.digest import Digest
from services.core.proto.hanzo.registry.v1 import events_pb2
from services.core.storage.meta import MetadataStore
from services.core.webhooks.model import DEPLOYABLE, Webhook
from services.core.webhooks.store import DeliveryStore, WebhookStore, delivery_id, fired_key
from services.webhooks.events import WebhookEvent, webhook_event
from services.webhooks.metrics import WebhookMetrics

log = logging.getLogger(__name__)

DEPLOYABLE_TRIGGERS = frozenset({"manifest.pushed", "tag.updated", "scan.completed", "signature.verified"})


def body(hook: Webhook, event: str, event_id: str, delivery: str, *, repository: str, time_: str, actor: str,
         data: dict[str, Any], tags: list[str] | None = None, digest: str = "") -> str:
    doc: dict[str, Any] = {
        "event": event, "delivery": delivery, "event_id": event_id, "time": time_,
        "webhook": {"id": hook.id, "name": hook.name}, "repository": repository, "actor": actor,
    }
    if digest:
        doc["digest"] = digest
    if tags is not None:
        doc["tags"] = tags
    doc["data"] = data
    return json.dumps(doc, separators=(",", ":"), sort_keys=False)


class Dispatcher:
    def __init__(self, *, hooks: WebhookStore, deliveries: DeliveryStore, meta: MetadataStore,
                 checks: DeployChecks, metrics: WebhookMetrics, wake: Callable[[], None] = lambda: None) -> None:
        self.hooks = hooks
        self.deliveries = deliveries
        self.meta = meta
        self.checks = checks
        self.metrics = metrics
        self.wake = wake

    async def webhooks(self) -> list[Webhook]:
        """Read for every event (no cache: a webhook created or changed a moment ago applies to the next
        event, on every replica); webhooks are few and this is one query per page of 1000."""
        hooks: list[Webhook] = []
        after: str | None = None
        while True:
            page = await self.hooks.all(after=after, limit=1000)
            hooks += page
            if len(page) < 1000:
                return [h for h in hooks if h.active]
            after = page[-1].id

    async def handle(self, envelope: events_pb2.Envelope) -> None:
        event = webhook_event(envelope)
        if event is None:
            return
        hooks = [h for h in await self.webhooks() if h.matches_repository(event.repository)]
        if not hooks:
            return
        tags: list[str] | None = list(event.tags)
        if not event.tags_known:
            tags = await self._tags_of(event.repository, event.digest) if any(
                h.tag_pattern is not None or h.wants(DEPLOYABLE) for h in hooks) else None
        queued = False
        for hook in hooks:
            if hook.wants(event.type):
                queued |= await self._event_delivery(hook, event, tags)
            if hook.wants(DEPLOYABLE) and event.type in DEPLOYABLE_TRIGGERS and event.repository and event.digest:
                queued |= await self._deployable(hook, event, tags or [])
        if queued:
            self.wake()

    async def _tags_of(self, repository: str, digest: str) -> list[str]:
        try:
            parsed = Digest.parse(digest)
        except ValueError:
            return []
        return sorted(t.name for t in await self.meta.tags_of(repository, parsed))

    async def _event_delivery(self, hook: Webhook, event: WebhookEvent, tags: list[str] | None) -> bool:
        if hook.tag_pattern is not None:
            matching = hook.matching_tags(tags or [])
            if not matching:  # e.g. a manifest pushed by digest alone: about no tag
                return False
        ident = delivery_id(hook.id, event.event_id, event.type)
        text = body(hook, event.type, event.event_id, ident, repository=event.repository, time_=event.time,
                    actor=event.actor, data=event.data, tags=tags, digest=event.digest)
        return await self._enqueue(hook, event.type, event.event_id, ident, text)

    async def _enqueue(self, hook: Webhook, event: str, event_id: str, ident: str, text: str) -> bool:
        added = await self.deliveries.enqueue(delivery=ident, webhook=hook.id, event=event, event_id=event_id,
                                              body=text)
        if added:
            self.metrics.queued.labels(event=event).inc()
        return added

    async def _deployable(self, hook: Webhook, event: WebhookEvent, tags: list[str]) -> bool:
        queued = False
        for tag in hook.matching_tags(tags):
            key = fired_key(hook.id, event.repository, tag, event.digest)
            if await self.deliveries.fired(key):
                continue
            current = await self.meta.tag(event.repository, tag)
            if current is None or str(current.digest) != event.digest:
                continue
            checks = await self._requirements(hook, event.repository, event.digest)
            if checks is None:
                continue
            ident = delivery_id(hook.id, DEPLOYABLE, event.repository, tag, event.digest)
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            data = {"repository": event.repository, "tag": tag, "digest": event.digest,
                    "reference": f"{event.repository}:{tag}@{event.digest}", "checks": checks,
                    "trigger": {"event": event.type, "event_id": event.event_id}}
            text = body(hook, DEPLOYABLE, ident, ident, repository=event.repository, time_=now, actor=event.actor,
                        data=data, tags=[tag], digest=event.digest)
            queued |= await self._enqueue(hook, DEPLOYABLE, ident, ident, text)
            await self.deliveries.mark_fired(key, webhook=hook.id)
            log.info("%s:%s@%s is deployable for webhook %s", event.repository, tag, event.digest, hook.id)
        return queued

    async def _requirements(self, hook: Webhook, repository: str, digest: str) -> dict[str, Any] | None:
        """What held, or None when a requirement does not (yet)."""
        checks: dict[str, Any] = {}
        if hook.require.scan_gate is not None:
            scan = await self.checks.scan_verdict(repository, digest, gate=hook.require.scan_gate)
            if not scan.passed:
                return None
            checks["scan"] = {"gate": hook.require.scan_gate, "result": scan.detail}
        if hook.require.verify_signature:
            signature = await self.checks.signature_verdict(repository, digest)
            if not signature.passed:
                return None
            checks["signature"] = {"result": signature.detail}
        return checks
