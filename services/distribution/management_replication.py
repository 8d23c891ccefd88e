"""Replication over the management API (registry admins):

- `POST /v1/registry/admin/replication/rules` (201), `GET .../rules`, `GET|PUT|DELETE .../rules/{name}`:
  rules stored in `replication_rules`; the target's password is sealed with the master key
  (services/core/secrets.py, `signer.master_key`) under the context `replication-rule:<name>`, and never
  answered or logged. Rules of the settings file (`replication.rules`) are listed, read-only.
- `GET /v1/registry/admin/replication`: per rule its state, lag and counters, read from the replicator's
  `replication_queue` and `replication_status` collections (services/replicator/queue.py describes them).
- `POST .../rules/{name}/resync` (202): queues a full sync of the rule, as the replicator's gRPC `Resync` does,
  by the same queue item; a replicator takes it within `replication.poll_interval_seconds`.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator
from yarl import URL

from services.core.auth.audit import AuditRecord, Outcome
from services.core.auth.errors import AlreadyExistsError, InvalidRequestError, NotFoundError
from services.core.cron import CronExpression
from services.core.errors import DeniedError, UnsupportedError
from services.core.secrets import MasterKeyMissingError, SecretBox, secret_box
from services.core.settings import ReplicationRuleSettings, Settings
from services.core.ssrf import Trust, UrlPolicy, UrlRefusedError, check_url_syntax
from services.core.storage.documents import DocumentStore, DuplicateKeyError
from services.distribution.keys import REGISTRY, SETTINGS
from services.distribution.management_api import Call, Requirement, Route
from services.distribution.management_models import Name, Request, Response, maybe_timestamp

RULES = "replication_rules"
QUEUE = "replication_queue"
STATUS = "replication_status"
Pattern = str


def secret_context(rule: str) -> str:
    return f"replication-rule:{rule}"


# models


class TargetIn(Request):
    url: str = Field(max_length=512, description="The target registry, e.g. https://eu.example")
    username: str = Field("", max_length=256)
    password: str | None = Field(None, max_length=4096, description="Stored encrypted; never answered. Omitted "
                                 "in a PUT: the stored one is kept")
    insecure: bool = Field(False, description="Skip TLS verification")
    ca_file: str | None = Field(None, max_length=1024, description="PEM CA bundle on the replicator's disk")


class RuleIn(Request):
    name: Name
    repositories: Pattern = Field("**", min_length=1, max_length=255, description="Glob of source repositories")
    tags: Pattern = Field("*", min_length=1, max_length=255, description="Glob of tags")
    target: TargetIn
    destination_prefix: str = Field("", max_length=200, description="Prepended to repository names at the target")
    mode: Literal["event", "periodic"] = "event"
    schedule: str | None = Field(None, max_length=100, description="Cron (UTC) of a periodic rule")
    delete: bool = Field(False, description="Propagate deletions")
    enabled: bool = True
    include_referrers: bool = Field(True, description="Carry signatures, SBOMs and attestations along")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value:
            CronExpression.parse(value)
        return value


class TargetOut(Response):
    url: str
    registry: str
    username: str
    has_password: bool
    insecure: bool
    ca_file: str | None = None


class RuleOut(Response):
    name: str
    repositories: str
    tags: str
    target: TargetOut
    destination_prefix: str
    mode: str
    schedule: str | None = None
    delete: bool
    enabled: bool
    include_referrers: bool
    origin: str = Field(description="`api`, or `settings` (the settings file: read-only here)")
    created: datetime | None = None
    updated: datetime | None = None


class RuleList(Response):
    rules: list[RuleOut]


class RuleState(Response):
    name: str
    target: str = Field(description="The target registry (host[:port])")
    status: Literal["ok", "lagging", "failing"]
    lag_events: int = Field(description="Work items waiting")
    lag_seconds: float = Field(description="Age of the oldest waiting work")
    last_success: datetime | None
    last_error: str | None
    last_error_at: datetime | None = None
    last_event_id: str | None = None
    last_lag_seconds: float | None = Field(None, description="Push-to-target time of the last replicated event")
    copied_manifests: int
    copied_bytes: int
    failures: int


class ReplicationState(Response):
    rules: list[RuleState]


class ResyncQueued(Response):
    rule: str
    queued: bool


# helpers


def _docs(call: Call) -> DocumentStore:
    return call.request.app[REGISTRY].meta.docs


def _box(call: Call) -> SecretBox | None:
    try:
        return secret_box(call.request.app[SETTINGS].signer.master_key)
    except MasterKeyMissingError:
        return None


def _registry(url: str) -> str:
    try:
        check_url_syntax(url, UrlPolicy(Trust.TRUSTED))
    except UrlRefusedError as exc:
        raise InvalidRequestError(f"field 'target.url': {exc}") from None
    parsed = URL(url)
    if parsed.path not in ("", "/") or parsed.query_string or parsed.fragment:
        raise InvalidRequestError("field 'target.url': a registry URL only (no path); use destination_prefix")
    host = parsed.host or ""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parsed.explicit_port}" if parsed.explicit_port else host


def _settings_rules(settings: Settings) -> dict[str, ReplicationRuleSettings]:
    return {r.name: r for r in settings.replication.rules}


def _out_from_doc(doc: dict[str, Any]) -> RuleOut:
    t = doc.get("target") or {}
    return RuleOut(
        name=doc["_id"], repositories=doc["repositories"], tags=doc["tags"],
        target=TargetOut(url=t["url"], registry=_registry(t["url"]), username=t.get("username") or "",
                         has_password=bool(t.get("password_sealed")), insecure=bool(t.get("insecure")),
                         ca_file=t.get("ca_file")),
        destination_prefix=doc.get("destination_prefix") or "", mode=doc["mode"], schedule=doc.get("schedule"),
        delete=bool(doc.get("delete")), enabled=bool(doc.get("enabled", True)),
        include_referrers=bool(doc.get("include_referrers", True)), origin="api",
        created=maybe_timestamp(doc.get("created")), updated=maybe_timestamp(doc.get("updated")),
    )


def _out_from_settings(r: ReplicationRuleSettings) -> RuleOut:
    t = r.target
    return RuleOut(
        name=r.name, repositories=r.repositories, tags=r.tags,
        target=TargetOut(url=t.url, registry=_registry(t.url), username=t.username,
                         has_password=bool(t.password.get_secret_value()), insecure=t.insecure,
                         ca_file=str(t.ca_file) if t.ca_file else None),
        destination_prefix=r.destination_prefix, mode=r.mode, schedule=r.schedule, delete=r.delete,
        enabled=r.enabled, include_referrers=r.include_referrers, origin="settings",
    )


def _doc(call: Call, body: RuleIn, *, previous: dict[str, Any] | None) -> dict[str, Any]:
    _registry(body.target.url)
    if body.mode == "periodic" and not body.schedule:
        raise InvalidRequestError("field 'schedule': a periodic rule needs a schedule (cron, UTC)")
    sealed = ""
    if body.target.password:
        box = _box(call)
        if box is None:
            raise UnsupportedError("target credentials are stored encrypted and need a master key "
                                   "(signer.master_key): none is configured")
        sealed = box.seal(body.target.password.encode(), context=secret_context(body.name))
    elif previous is not None and body.target.password is None:
        old = previous.get("target") or {}
        if old.get("username") == body.target.username:
            sealed = old.get("password_sealed") or ""
    now = time.time()
    return {
        "_id": body.name, "repositories": body.repositories, "tags": body.tags,
        "target": {"url": body.target.url, "username": body.target.username, "password_sealed": sealed,
                   "insecure": body.target.insecure, "ca_file": body.target.ca_file},
        "destination_prefix": body.destination_prefix, "mode": body.mode, "schedule": body.schedule,
        "delete": body.delete, "enabled": body.enabled, "include_referrers": body.include_referrers,
        "created": previous.get("created", now) if previous else now, "updated": now,
        "updated_by": call.who.name,
    }


async def _audit(call: Call, action: str, name: str, **detail: str) -> None:
    await call.access.service.record(
        AuditRecord(call.who.name, action, f"replication-rule:{name}", Outcome.SUCCESS, call.who.source, detail)
    )


def _refuse_settings_rule(call: Call, name: str) -> None:
    if name in _settings_rules(call.request.app[SETTINGS]):
        raise DeniedError(f"rule {name} is defined in the settings file (replication.rules); change it there")


# handlers


async def create_rule(call: Call, body: RuleIn) -> RuleOut:
    _refuse_settings_rule(call, body.name)
    doc = _doc(call, body, previous=None)
    docs = _docs(call)
    await docs.ensure_collection(RULES)
    try:
        await docs.insert(RULES, doc)
    except DuplicateKeyError:
        raise AlreadyExistsError(f"replication rule {body.name} exists") from None
    await _audit(call, "replication.rule.create", body.name, target=body.target.url)
    return _out_from_doc(doc)


async def list_rules(call: Call) -> RuleList:
    settings_rules = _settings_rules(call.request.app[SETTINGS])
    stored = [d for d in await _docs(call).find(RULES, limit=10_000) if d["_id"] not in settings_rules]
    out = [_out_from_settings(r) for r in settings_rules.values()] + [_out_from_doc(d) for d in stored]
    return RuleList(rules=sorted(out, key=lambda r: r.name))


async def _rule_out(call: Call, name: str) -> RuleOut:
    settings_rules = _settings_rules(call.request.app[SETTINGS])
    if name in settings_rules:
        return _out_from_settings(settings_rules[name])
    doc = await _docs(call).get(RULES, name)
    if doc is None:
        raise NotFoundError(f"no replication rule {name}")
    return _out_from_doc(doc)


async def get_rule(call: Call) -> RuleOut:
    return await _rule_out(call, call.param("name"))


async def put_rule(call: Call, body: RuleIn) -> RuleOut:
    name = call.param("name")
    if body.name != name:
        raise InvalidRequestError(f"field 'name': the body names {body.name}, the path {name}")
    _refuse_settings_rule(call, name)
    docs = _docs(call)
    await docs.ensure_collection(RULES)
    previous = await docs.get(RULES, name)
    doc = _doc(call, body, previous=previous)
    await docs.put(RULES, doc)
    await _audit(call, "replication.rule.update" if previous else "replication.rule.create", name,
                 target=body.target.url)
    return _out_from_doc(doc)


async def delete_rule(call: Call) -> None:
    name = call.param("name")
    _refuse_settings_rule(call, name)
    docs = _docs(call)
    if not await docs.delete(RULES, name):
        raise NotFoundError(f"no replication rule {name}")
    await docs.delete_where(QUEUE, {"rule": name})
    await docs.delete(STATUS, name)
    await _audit(call, "replication.rule.delete", name)


async def replication_state(call: Call) -> ReplicationState:
    settings = call.request.app[SETTINGS]
    docs = _docs(call)
    now = time.time()
    out: list[RuleState] = []
    for rule in (await list_rules(call)).rules:
        pending = await docs.count(QUEUE, {"rule": rule.name})
        oldest = await docs.find(QUEUE, {"rule": rule.name}, order_by="event_time", limit=1)
        lag = max(0.0, now - float(oldest[0]["event_time"])) if oldest else 0.0
        st = await docs.get(STATUS, rule.name) or {}
        last_success, last_error_at = st.get("last_success"), st.get("last_error_at")
        if pending and last_error_at and (last_success or 0) < last_error_at:
            state: Literal["ok", "lagging", "failing"] = "failing"
        elif pending and lag > settings.replication.lagging_after_seconds:
            state = "lagging"
        else:
            state = "ok"
        out.append(RuleState(
            name=rule.name, target=rule.target.registry, status=state, lag_events=pending, lag_seconds=round(lag, 3),
            last_success=maybe_timestamp(last_success), last_error=st.get("last_error") or None,
            last_error_at=maybe_timestamp(last_error_at), last_event_id=st.get("last_event_id") or None,
            last_lag_seconds=st.get("last_lag_seconds"), copied_manifests=int(st.get("copied_manifests") or 0),
            copied_bytes=int(st.get("copied_bytes") or 0), failures=int(st.get("failed_total") or 0),
        ))
    return ReplicationState(rules=out)


async def resync_rule(call: Call) -> ResyncQueued:
    name = call.param("name")
    await _rule_out(call, name)  # 404 for an unknown rule
    now = time.time()
    docs = _docs(call)
    await docs.ensure_collection(QUEUE)
    # The replicator's queue item for a full sync (services/replicator/queue.py: ReplicationQueue.enqueue).
    await docs.insert(QUEUE, {
        "_id": f"{name}  {int(now * 1e9):020d}-{uuid.uuid4().hex}", "rule": name, "repository": "",
        "kind": "sync_rule", "reference": "", "digest": "", "event_id": "", "event_time": now, "attempts": 0,
        "next_attempt": 0.0, "lease_until": 0.0, "lease_owner": "", "last_error": "",
    })
    for doc in await docs.find(QUEUE, {"rule": name}, limit=2000):  # waiting retries: now
        if float(doc.get("next_attempt") or 0) > now:
            await docs.update(QUEUE, str(doc["_id"]), {"next_attempt": 0.0})
    await _audit(call, "replication.rule.resync", name)
    return ResyncQueued(rule=name, queued=True)


def replication_routes() -> list[Route]:
    admin = Requirement.REGISTRY_ADMIN
    base = "/admin/replication"
    return [
        Route("GET", base, replication_state, admin, "Replication state per rule: status, lag, last success and "
              "error, what was copied", response=ReplicationState),
        Route("POST", f"{base}/rules", create_rule, admin, "Create a replication rule (target credentials are "
              "stored encrypted and never answered)", status=201, response=RuleOut, body=RuleIn, errors=(409,)),
        Route("GET", f"{base}/rules", list_rules, admin, "Replication rules (the settings file's too)",
              response=RuleList),
        Route("GET", f"{base}/rules/{{name}}", get_rule, admin, "A replication rule", response=RuleOut,
              errors=(404,)),
        Route("PUT", f"{base}/rules/{{name}}", put_rule, admin, "Create or replace a replication rule (a password "
              "left out is kept)", response=RuleOut, body=RuleIn),
        Route("DELETE", f"{base}/rules/{{name}}", delete_rule, admin, "Delete a replication rule with its queued "
              "work and status", status=204, errors=(404,)),
        Route("POST", f"{base}/rules/{{name}}/resync", resync_rule, admin, "Queue a full sync of the rule",
              status=202, response=ResyncQueued, errors=(404,)),
    ]
