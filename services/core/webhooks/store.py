"""The webhook collections in metadata: `webhooks` (the subscriptions, secrets sealed), `webhook_deliveries`
(the durable delivery queue and its history) and `webhook_fired` (which (repository, tag, digest) already
fired `image.deployable` for a webhook).

Written by: webhooks by the management API; deliveries by the webhooks service (queued from events, sent,
retried) and by the management API (a redelivery queues a copy). One document per key, so it runs unchanged
on SQLite and MongoDB; a delivery is claimed by compare-and-set, so replicas never send one twice at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from services.core.secrets import MasterKeyMissingError, SecretBox, secret_box
from services.core.storage.documents import DocumentStore, DuplicateKeyError, Index
from services.core.webhooks.model import Webhook, from_doc, to_doc

WEBHOOKS = "webhooks"
DELIVERIES = "webhook_deliveries"
FIRED = "webhook_fired"

PENDING, SENDING, SUCCEEDED, FAILED = "pending", "sending", "succeeded", "failed"
_PLAIN = "plain:"


def delivery_id(*parts: str) -> str:
    """A delivery id derived from what it delivers (a UUID in canonical form), so queueing the same event
    for the same webhook twice (an event redelivered by the log) queues it once."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "hanzo-registry-webhook:" + "\x00".join(parts)))


class WebhookStore:
    """Webhooks by id. The secret is sealed with the master key (`signer.master_key`, services/core/secrets.py)
    when one is configured; without one it is stored as given (prefixed `plain:`) and a warning says so."""

    def __init__(self, docs: DocumentStore, *, master_key: SecretStr | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.docs = docs
        self._clock = clock
        self._box: SecretBox | None
        try:
            self._box = secret_box(master_key)
        except MasterKeyMissingError:
            self._box = None

    @property
    def seals_secrets(self) -> bool:
        return self._box is not None

    async def setup(self) -> None:
        await self.docs.ensure_collection(WEBHOOKS, [Index(("namespace",))])

    def _seal(self, hook_id: str, secret: str) -> str:
        if self._box is None:
            return _PLAIN + secret
        return self._box.seal(secret.encode(), context=f"webhook:{hook_id}")

    def secret_of(self, doc: dict[str, Any]) -> str:
        """The plain secret of a stored webhook document. SecretUnreadableError when it does not open."""
        sealed = str(doc.get("secret") or "")
        if sealed.startswith(_PLAIN):
            return sealed[len(_PLAIN):]
        if self._box is None:
            from services.core.secrets import SecretUnreadableError

            raise SecretUnreadableError("the webhook's secret is sealed and no master key is configured")
        return self._box.open(sealed, context=f"webhook:{doc['_id']}").decode()

    async def create(self, hook: Webhook, secret: str) -> Webhook:
        now = self._clock()
        hook = Webhook(**{**_fields(hook), "id": hook.id or uuid.uuid4().hex, "created": now, "updated": now})
        await self.docs.insert(WEBHOOKS, {**to_doc(hook), "secret": self._seal(hook.id, secret)})
        return hook

    async def replace(self, hook: Webhook, secret: str | None) -> Webhook:
        """Store `hook` over the one with its id (the secret kept unless a new one is given)."""
        current = await self.docs.get(WEBHOOKS, hook.id)
        if current is None:
            raise KeyError(hook.id)
        hook = Webhook(**{**_fields(hook), "created": current.get("created", 0.0),
                          "created_by": current.get("created_by", ""), "updated": self._clock()})
        sealed = self._seal(hook.id, secret) if secret is not None else current.get("secret", "")
        await self.docs.put(WEBHOOKS, {**to_doc(hook), "secret": sealed})
        return hook

    async def get(self, hook_id: str) -> Webhook | None:
        doc = await self.docs.get(WEBHOOKS, hook_id)
        return from_doc(doc) if doc else None

    async def get_doc(self, hook_id: str) -> dict[str, Any] | None:
        return await self.docs.get(WEBHOOKS, hook_id)

    async def delete(self, hook_id: str) -> bool:
        gone = await self.docs.delete(WEBHOOKS, hook_id)
        if gone:
            await self.docs.delete_where(FIRED, {"webhook": hook_id})
        return gone

    async def all(self, *, namespace: str | None = None, after: str | None = None, limit: int = 1000
                  ) -> list[Webhook]:
        where = {"namespace": namespace} if namespace is not None else None
        return [from_doc(d) for d in await self.docs.find(WEBHOOKS, where, after=after, limit=limit)]


def _fields(hook: Webhook) -> dict[str, Any]:
    return {name: getattr(hook, name) for name in Webhook.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    webhook: str
    event: str
    event_id: str
    body: str
    status: str
    attempts: int
    created: float
    next_at: float
    response_code: int | None = None
    error: str = ""
    last_attempt: float | None = None
    duration: float | None = None
    redelivery_of: str = ""

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Delivery:
        return cls(id=str(doc["_id"]), **{k: doc[k] for k in cls.__dataclass_fields__ if k != "id" and k in doc})


class DeliveryStore:
    """The durable delivery queue: `pending` (due at `next_at`), `sending` (claimed until `next_at`, the
    lease), `succeeded`, `failed` (gave up)."""

    def __init__(self, docs: DocumentStore, *, clock: Callable[[], float] = time.time) -> None:
        self.docs = docs
        self._clock = clock

    async def setup(self) -> None:
        await self.docs.ensure_collection(DELIVERIES, [Index(("status", "next_at")), Index(("webhook", "rank")),
                                                       Index(("created",))])
        await self.docs.ensure_collection(FIRED, [Index(("webhook",))])

    async def enqueue(self, *, delivery: str, webhook: str, event: str, event_id: str, body: str,
                      redelivery_of: str = "") -> bool:
        """Queue a delivery, due now; False when it is already queued (idempotent by id)."""
        now = self._clock()
        try:
            await self.docs.insert(DELIVERIES, {
                "_id": delivery, "webhook": webhook, "event": event, "event_id": event_id, "body": body,
                "status": PENDING, "attempts": 0, "created": now, "next_at": now, "rank": -now,
                "response_code": None, "error": "", "last_attempt": None, "duration": None,
                "redelivery_of": redelivery_of,
            })
        except DuplicateKeyError:
            return False
        return True

    async def get(self, delivery: str) -> Delivery | None:
        doc = await self.docs.get(DELIVERIES, delivery)
        return Delivery.from_doc(doc) if doc else None

    async def of_webhook(self, webhook: str, *, after: float | None = None, limit: int = 100) -> list[Delivery]:
        """Newest first (`after`: the `rank` of the last one of the previous page, i.e. minus its `created`)."""
        docs = await self.docs.find(DELIVERIES, {"webhook": webhook}, order_by="rank", after=after, limit=limit)
        return [Delivery.from_doc(d) for d in docs]

    async def due(self, *, limit: int = 50) -> list[Delivery]:
        """Pending deliveries due now, and sending ones whose claim lapsed (a process died mid-send)."""
        now = self._clock()
        out: list[Delivery] = []
        for status in (PENDING, SENDING):
            docs = await self.docs.find(DELIVERIES, {"status": status}, order_by="next_at", limit=limit)
            out += [Delivery.from_doc(d) for d in docs if float(d["next_at"]) <= now]
        return out[:limit]

    async def claim(self, d: Delivery, *, lease_seconds: float) -> bool:
        """Take `d` for sending (compare-and-set on its status, attempts and due time)."""
        return await self.docs.update(
            DELIVERIES, d.id, {"status": SENDING, "next_at": self._clock() + lease_seconds},
            expect={"status": d.status, "attempts": d.attempts, "next_at": d.next_at},
        )

    async def finish(self, d: Delivery, *, status: str, next_at: float, response_code: int | None, error: str,
                     duration: float) -> None:
        await self.docs.update(DELIVERIES, d.id, {
            "status": status, "attempts": d.attempts + 1, "next_at": next_at, "response_code": response_code,
            "error": error[:500], "last_attempt": self._clock(), "duration": round(duration, 4),
        })

    async def fired(self, key: str) -> bool:
        return await self.docs.get(FIRED, key) is not None

    async def mark_fired(self, key: str, *, webhook: str) -> None:
        with contextlib.suppress(DuplicateKeyError):
            await self.docs.insert(FIRED, {"_id": key, "webhook": webhook, "at": self._clock()})

    async def forget_finished(self, *, older_than: float, limit: int = 1000) -> int:
        """Drop succeeded and failed deliveries created before `older_than`."""
        docs = await self.docs.find(DELIVERIES, order_by="created", limit=limit, fields=["status", "created"])
        old = [str(d["_id"]) for d in docs
               if float(d["created"]) < older_than and d.get("status") in (SUCCEEDED, FAILED)]
        return await self.docs.delete_many(DELIVERIES, old) if old else 0


def fired_key(webhook: str, repository: str, tag: str, digest: str) -> str:
    return hashlib.sha256("\x00".join((webhook, repository, tag, digest)).encode()).hexdigest()
