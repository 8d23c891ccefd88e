"""Webhooks over the management API: /v1/registry/webhooks.

A webhook whose `repositories` glob starts with a literal namespace (`my-org/**`) belongs to that namespace:
its admins manage it, and its URL is untrusted (no loopback, private or link-local target unless
`webhooks.allow_private_targets`). Any other glob (`**`, `*/app`) makes a registry-wide webhook, managed by
registry admins, whose URL is trusted (private targets allowed, never link-local or metadata addresses).
The URL is checked here and again at every delivery (services/core/ssrf.py). The secret is write-only:
no response carries it. Deliveries are queued and sent by the webhooks service (services/webhooks/).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from services.core.auth.audit import AuditRecord, Outcome
from services.core.auth.errors import NotFoundError
from services.core.errors import DeniedError
from services.core.ssrf import Trust, UrlPolicy, UrlRefusedError, check_url
from services.core.storage.documents import DocumentStore
from services.core.webhooks.model import (
    EVENT_TYPES,
    REGISTRY_WIDE,
    Requirements,
    Webhook,
    check_repository_pattern,
    pattern_namespace,
)
from services.core.webhooks.store import DeliveryStore, WebhookStore, delivery_id
from services.distribution.keys import REGISTRY, SETTINGS
from services.distribution.management_api import Call, Requirement, Route, invalid
from services.distribution.management_models import MAX_PAGE, Query, Request, Response, maybe_timestamp, timestamp

EventType = Literal[
    "manifest.pushed", "manifest.deleted", "tag.updated", "tag.deleted", "scan.completed", "signature.verified",
    "replication.completed", "gc.completed", "image.deployable",
]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]
TagGlob = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.*?\[\]!-]{1,128}$")]


class Require(Request):
    scan_gate: Literal["none", "low", "medium", "high", "critical"] | None = Field(
        None, description="image.deployable needs a complete scan with no unignored finding at or above this "
        "severity (none: any complete scan); omit for no scan requirement")
    verify_signature: bool = Field(False, description="image.deployable needs a signature verified by a key or "
                                                      "identity the repository's policy trusts")


class NewWebhook(Request):
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=2000, description="http(s) URL the deliveries are POSTed to")
    secret: str = Field(min_length=1, max_length=256, description="HMAC-SHA256 key of X-Hanzo-Signature-256 "
                                                                  "(write-only)")
    events: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))
    repositories: str = Field("**", min_length=1, max_length=255,
                              description="Repository glob: * within a path component, ** across them; a literal "
                                          "first component makes a namespace webhook")
    tag_pattern: TagGlob | None = Field(None, description="Tag glob: only events about a matching tag are "
                                                          "delivered (a push by digest alone is not)")
    require: Require = Field(default_factory=Require)
    active: bool = True

    @field_validator("repositories")
    @classmethod
    def _repositories(cls, value: str) -> str:
        return check_repository_pattern(value)


class UpdatedWebhook(NewWebhook):
    secret: str | None = Field(None, min_length=1, max_length=256,  # type: ignore[assignment]
                               description="A new secret; omit to keep the current one")


class WebhookRequireOut(Response):
    scan_gate: str | None
    verify_signature: bool


class WebhookOut(Response):
    id: str
    name: str
    url: str
    events: list[str]
    repositories: str
    tag_pattern: str | None
    require: WebhookRequireOut
    namespace: str | None = Field(description="The namespace it belongs to; null for a registry-wide webhook")
    active: bool
    secret_sealed: bool = Field(description="Whether the secret is encrypted at rest (a master key is configured)")
    created: datetime
    created_by: str
    updated: datetime


class WebhookList(Response):
    webhooks: list[WebhookOut]


class DeliveryOut(Response):
    id: str
    webhook: str
    event: str
    event_id: str
    status: str = Field(description="pending, sending, succeeded or failed (gave up)")
    attempts: int
    response_code: int | None
    error: str
    created: datetime
    last_attempt: datetime | None
    next_attempt: datetime | None = Field(description="When a pending delivery is tried next")
    duration_seconds: float | None
    redelivery_of: str | None


class DeliveryList(Response):
    deliveries: list[DeliveryOut]
    next: str | None = Field(description="Pass as `after` for the next (older) page")


class DeliveryQuery(Query):
    limit: int = Field(50, ge=1, le=MAX_PAGE)
    after: str | None = Field(None, max_length=40)


# helpers


def _docs(call: Call) -> DocumentStore:
    return call.request.app[REGISTRY].meta.docs


async def _stores(call: Call) -> tuple[WebhookStore, DeliveryStore]:
    hooks = WebhookStore(_docs(call), master_key=call.request.app[SETTINGS].signer.master_key)
    deliveries = DeliveryStore(_docs(call))
    await hooks.setup()
    await deliveries.setup()
    return hooks, deliveries


async def _may_manage(call: Call, namespace: str) -> bool:
    if call.who.admin:
        return True
    if namespace == REGISTRY_WIDE:
        return False
    return await call.access.service.manages(call.who.subject, namespace)


async def _require_manager(call: Call, namespace: str) -> None:
    if not await _may_manage(call, namespace):
        if namespace == REGISTRY_WIDE:
            raise DeniedError("only registry admins may manage registry-wide webhooks (a repositories glob whose "
                              "first component is a wildcard)")
        raise DeniedError(f"only admins of namespace {namespace} may manage its webhooks")


async def _check_url(call: Call, url: str, namespace: str) -> None:
    settings = call.request.app[SETTINGS].webhooks
    policy = UrlPolicy(Trust.TRUSTED) if namespace == REGISTRY_WIDE else UrlPolicy(
        Trust.UNTRUSTED, allow_private=settings.allow_private_targets)
    try:
        await check_url(url, policy)
    except UrlRefusedError as exc:
        raise invalid([("url", str(exc))]) from None


def _model(hook: Webhook, *, sealed: bool) -> WebhookOut:
    return WebhookOut(
        id=hook.id, name=hook.name, url=hook.url, events=list(hook.events), repositories=hook.repositories,
        tag_pattern=hook.tag_pattern,
        require=WebhookRequireOut(scan_gate=hook.require.scan_gate, verify_signature=hook.require.verify_signature),
        namespace=hook.namespace or None, active=hook.active, secret_sealed=sealed, created=timestamp(hook.created),
        created_by=hook.created_by, updated=timestamp(hook.updated))


def _record(body: NewWebhook, *, hook_id: str, actor: str) -> Webhook:
    return Webhook(id=hook_id, name=body.name, url=body.url, events=tuple(dict.fromkeys(body.events)),
                   repositories=body.repositories, tag_pattern=body.tag_pattern,
                   require=Requirements(body.require.scan_gate, body.require.verify_signature),
                   namespace=pattern_namespace(body.repositories), active=body.active, created_by=actor)


async def _audit(call: Call, action: str, hook: Webhook) -> None:
    await call.access.service.record(AuditRecord(
        call.who.name, action, f"webhook:{hook.id}", Outcome.SUCCESS, call.who.source,
        {"name": hook.name[:100], "namespace": hook.namespace or "*", "url": hook.url[:200]}))


async def _load(call: Call, hooks: WebhookStore) -> Webhook:
    hook = await hooks.get(call.param("webhook"))
    if hook is None or not await _may_manage(call, hook.namespace):
        # Not found for those who may not see it either: its existence is the namespace's business.
        raise NotFoundError(f"no webhook {call.param('webhook')[:64]!r}")
    return hook


def _delivery(d: object) -> DeliveryOut:
    from services.core.webhooks.store import PENDING, Delivery

    assert isinstance(d, Delivery)
    return DeliveryOut(
        id=d.id, webhook=d.webhook, event=d.event, event_id=d.event_id, status=d.status, attempts=d.attempts,
        response_code=d.response_code, error=d.error, created=timestamp(d.created),
        last_attempt=maybe_timestamp(d.last_attempt),
        next_attempt=timestamp(d.next_at) if d.status == PENDING else None, duration_seconds=d.duration,
        redelivery_of=d.redelivery_of or None)


# handlers


async def create_webhook(call: Call, body: NewWebhook) -> WebhookOut:
    namespace = pattern_namespace(body.repositories)
    await _require_manager(call, namespace)
    await _check_url(call, body.url, namespace)
    hooks, _ = await _stores(call)
    hook = await hooks.create(_record(body, hook_id=uuid.uuid4().hex, actor=call.who.name), body.secret)
    await _audit(call, "webhook.create", hook)
    return _model(hook, sealed=hooks.seals_secrets)


async def list_webhooks(call: Call) -> WebhookList:
    hooks, _ = await _stores(call)
    out: list[WebhookOut] = []
    allowed: dict[str, bool] = {}
    after: str | None = None
    while True:
        page = await hooks.all(after=after, limit=1000)
        for hook in page:
            if hook.namespace not in allowed:
                allowed[hook.namespace] = await _may_manage(call, hook.namespace)
            if allowed[hook.namespace]:
                out.append(_model(hook, sealed=hooks.seals_secrets))
        if len(page) < 1000:
            return WebhookList(webhooks=out)
        after = page[-1].id


async def get_webhook(call: Call) -> WebhookOut:
    hooks, _ = await _stores(call)
    return _model(await _load(call, hooks), sealed=hooks.seals_secrets)


async def put_webhook(call: Call, body: UpdatedWebhook) -> WebhookOut:
    hooks, _ = await _stores(call)
    current = await _load(call, hooks)
    namespace = pattern_namespace(body.repositories)
    if namespace != current.namespace:
        await _require_manager(call, namespace)
    await _check_url(call, body.url, namespace)
    hook = await hooks.replace(_record(body, hook_id=current.id, actor=current.created_by), body.secret)
    await _audit(call, "webhook.update", hook)
    return _model(hook, sealed=hooks.seals_secrets)


async def delete_webhook(call: Call) -> None:
    hooks, _ = await _stores(call)
    hook = await _load(call, hooks)
    await hooks.delete(hook.id)
    await _audit(call, "webhook.delete", hook)


async def list_deliveries(call: Call) -> DeliveryList:
    hooks, deliveries = await _stores(call)
    hook = await _load(call, hooks)
    query: DeliveryQuery = call.query
    after: float | None = None
    if query.after:
        last = await deliveries.get(query.after)
        if last is None or last.webhook != hook.id:
            raise invalid([("after", "is not a delivery of this webhook")], what="query parameter")
        after = -last.created
    page = await deliveries.of_webhook(hook.id, after=after, limit=query.limit)
    return DeliveryList(deliveries=[_delivery(d) for d in page],
                        next=page[-1].id if len(page) == query.limit else None)


async def redeliver(call: Call) -> DeliveryOut:
    hooks, deliveries = await _stores(call)
    hook = await _load(call, hooks)
    original = await deliveries.get(call.param("delivery"))
    if original is None or original.webhook != hook.id:
        raise NotFoundError(f"no delivery {call.param('delivery')[:64]!r} of webhook {hook.id}")
    ident = delivery_id(hook.id, "redeliver", original.id, uuid.uuid4().hex)
    doc = json.loads(original.body)
    doc["delivery"] = ident
    doc["redelivery_of"] = original.id
    await deliveries.enqueue(delivery=ident, webhook=hook.id, event=original.event, event_id=original.event_id,
                             body=json.dumps(doc, separators=(",", ":")), redelivery_of=original.id)
    created = await deliveries.get(ident)
    assert created is not None
    return _delivery(created)


def webhook_routes() -> list[Route]:
    """Fixed paths under /webhooks; before the namespace routes."""
    R = Requirement
    one = "/webhooks/{webhook}"
    return [
        Route("POST", "/webhooks", create_webhook, R.USER,
              "Create a webhook (namespace admins: for their namespace's repositories; registry admins: any)",
              status=201, response=WebhookOut, body=NewWebhook),
        Route("GET", "/webhooks", list_webhooks, R.USER, "The webhooks the caller manages", response=WebhookList),
        Route("GET", one, get_webhook, R.USER, "A webhook (never its secret)", response=WebhookOut, errors=(404,)),
        Route("PUT", one, put_webhook, R.USER, "Replace a webhook (the secret is kept unless given)",
              response=WebhookOut, body=UpdatedWebhook, errors=(404,)),
        Route("DELETE", one, delete_webhook, R.USER, "Delete a webhook", status=204, errors=(404,)),
        Route("GET", f"{one}/deliveries", list_deliveries, R.USER,
              "The webhook's deliveries, newest first, with status and response code", response=DeliveryList,
              query=DeliveryQuery, errors=(404,)),
        Route("POST", f"{one}/deliveries/{{delivery}}/redeliver", redeliver, R.USER,
              "Send a delivery again (as a new delivery with its own id)", status=202, response=DeliveryOut,
              errors=(404,)),
    ]
