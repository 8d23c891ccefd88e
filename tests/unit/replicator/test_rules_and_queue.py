"""Replication rules (globs, referrer tags, destinations, targets, stored form) and the durable queue
(order per repository, leases, backoff, idempotent enqueue, status)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.secrets import SecretBox
from services.core.settings import ReplicationRuleSettings
from services.core.storage.sqlite import SqliteDocumentStore
from services.replicator.queue import ReplicationQueue, backoff
from services.replicator.rules import (
    Rule,
    RuleInvalidError,
    Target,
    registry_of,
    repository_matches,
    rule_from_doc,
    rule_from_settings,
    secret_context,
    tag_matches,
)

DIGEST_HEX = "a" * 64


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("team/**", "team/app", True),
    ("team/**", "team/a/b", True),
    ("team/**", "team", False),
    ("team/**", "other/app", False),
    ("team/*", "team/app", True),
    ("team/*", "team/a/b", False),
    ("**", "x/y/z", True),
    ("**/app", "app", True),
    ("**/app", "a/b/app", True),
    ("t?am/[ab]pp", "team/app", True),
    ("t?am/[!ab]pp", "team/app", False),
])
def test_repository_globs(pattern: str, name: str, expected: bool) -> None:
    assert repository_matches(pattern, name) is expected


def test_tag_globs_and_referrer_tags() -> None:
    assert tag_matches("v*", "v1.2") and not tag_matches("v*", "latest")
    rule = Rule(name="r", target=Target("http://x"), tags="v*")
    assert rule.matches_tag("v1") and not rule.matches_tag("latest")
    for tag in (f"sha256-{DIGEST_HEX}.sig", f"sha256-{DIGEST_HEX}.att", f"sha256-{DIGEST_HEX}"):
        assert rule.matches_tag(tag)  # signatures come with their subject whatever the filter
    without = Rule(name="r", target=Target("http://x"), tags="v*", include_referrers=False)
    assert not without.matches_tag(f"sha256-{DIGEST_HEX}.sig")


def test_destinations_and_targets() -> None:
    assert Rule(name="r", target=Target("http://x")).destination("team/app") == "team/app"
    assert Rule(name="r", target=Target("http://x"), destination_prefix="/eu/").destination("a/b") == "eu/a/b"
    assert registry_of("https://eu.example") == "eu.example"
    assert registry_of("http://127.0.0.1:5000/") == "127.0.0.1:5000"
    assert Target("http://127.0.0.1:5000").options().plain_http is True
    assert Target("https://eu.example", username="u", password="p").options().credentials is not None
    for bad in ("ftp://x", "https://eu.example/v2/x", "https://u:p@eu.example", "eu.example"):
        with pytest.raises(RuleInvalidError):
            registry_of(bad)


def test_stored_rule_opens_its_sealed_password_only_under_its_name() -> None:
    box = SecretBox("0123456789abcdef-master")
    sealed = box.seal(b"pw", context=secret_context("to-eu"))
    doc = {"_id": "to-eu", "repositories": "team/**", "tags": "*", "mode": "event", "delete": True,
           "target": {"url": "https://eu.example", "username": "bot", "password_sealed": sealed}}
    rule = rule_from_doc(doc, box)
    assert rule.target.password == "pw" and rule.delete and rule.event_driven
    assert "pw" not in repr(rule)
    with pytest.raises(RuleInvalidError):
        rule_from_doc({**doc, "_id": "copied"}, box)
    with pytest.raises(RuleInvalidError):
        rule_from_doc(doc, None)


def test_settings_rule() -> None:
    s = ReplicationRuleSettings.model_validate(
        {"name": "p", "target": {"url": "http://h:1", "password": "x", "username": "u"}, "mode": "periodic",
         "schedule": "0 3 * * *"})
    rule = rule_from_settings(s)
    assert rule.origin == "settings" and not rule.event_driven and rule.target.password == "x"
    with pytest.raises(ValueError):
        ReplicationRuleSettings.model_validate({"name": "p", "target": {"url": "http://h"}, "mode": "periodic"})


def test_backoff_doubles_to_its_cap() -> None:
    assert [backoff(n, initial=1, maximum=10) for n in (1, 2, 3, 4, 5, 99)] == [1, 2, 4, 8, 10, 10]


async def test_queue_order_leases_backoff_and_status(tmp_path: Path) -> None:
    now = [1000.0]
    docs = SqliteDocumentStore(tmp_path / "m.db")
    queue = ReplicationQueue(docs, clock=lambda: now[0])
    await queue.setup()
    first = await queue.enqueue(rule="r", repository="team/app", kind="tag", reference="v1", event_id="e1",
                                event_time=10.0)
    again = await queue.enqueue(rule="r", repository="team/app", kind="tag", reference="v1", event_id="e1",
                                event_time=10.0)
    assert first == again  # a redelivered event is queued once
    await queue.enqueue(rule="r", repository="team/app", kind="delete_tag", reference="v1", event_id="e2",
                        event_time=11.0)
    await queue.enqueue(rule="r", repository="team/app/sub", kind="tag", reference="v1", event_id="e3",
                        event_time=9.0)
    heads = await queue.ready()
    assert sorted((i.repository, i.event_id) for i in heads) == [("team/app", "e1"), ("team/app/sub", "e3")]
    head = next(i for i in heads if i.repository == "team/app")
    assert await queue.claim(head, lease_seconds=60)
    assert not await queue.claim(head, lease_seconds=60)  # another worker's stale read loses
    assert [i.repository for i in await queue.ready()] == ["team/app/sub"]  # leased: the group waits
    await queue.failed(head, "target down", delay=5)
    await queue.record("r", error="target down")
    assert [i.repository for i in await queue.ready()] == ["team/app/sub"]  # backing off, still blocking e2
    st = await queue.status("r")
    assert st.pending == 3 and st.state(now[0], lagging_after=60) == "failing" and st.failed_total == 1
    now[0] += 6
    [retry] = [i for i in await queue.ready() if i.repository == "team/app"]
    assert retry.attempts == 1 and retry.last_error == "target down"
    assert await queue.claim(retry, lease_seconds=60)
    await queue.done(retry)
    await queue.record("r", item=retry, manifests=2, nbytes=100, lag=0.5)
    [nxt] = [i for i in await queue.ready() if i.repository == "team/app"]
    assert nxt.event_id == "e2"  # in order
    st = await queue.status("r")
    assert (st.copied_manifests, st.copied_bytes, st.last_event_id, st.succeeded_total) == (2, 100, "e1", 1)
    assert st.state(now[0], lagging_after=10_000) == "ok"
    assert st.state(now[0], lagging_after=60) == "lagging"  # the oldest waiting event is from t=9
    await queue.forget("r")
    assert (await queue.status("r")).pending == 0
    await docs.close()
