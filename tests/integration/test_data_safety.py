"""Data safety of concurrent and crashed changes, on both assemblies (the outside review's defects 4 and 5):
no tag is ever left pointing at a deleted manifest, and a change applied in part announces what it applied."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.core.content.registry import Registry
from services.core.errors import ConflictError
from services.core.events import outbox as outbox_module
from services.core.events.envelope import decode
from services.core.events.outbox import OutboxRelay
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.storage.meta import TagRecord
from services.distribution.keys import REGISTRY
from tests.integration.conftest import Assembly
from tests.integration.oci import OCI_MANIFEST, push_image
from tests.integration.topics import read_topic


def _registry(a: Assembly) -> Registry:
    return a.client.app[REGISTRY]


async def _every_tag_resolves(a: Assembly, repo: str) -> None:
    registry = _registry(a)
    for tag in await registry.meta.list_tags(repo):
        resp = await a.client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        assert resp.status == 200, f"tag {tag} of {repo} dangles: {resp.status} {await resp.text()}"


async def test_concurrent_delete_and_push_of_one_manifest_never_leave_a_dangling_tag(assembly: Assembly) -> None:
    client, repo = assembly.client, "safety/race"
    digest, manifest = await push_image(client, repo, "latest")
    rounds = 25 if assembly.name == "embedded" else 12
    outcomes: set[tuple[int, int]] = set()
    for _ in range(rounds):
        push = client.put(f"/v2/{repo}/manifests/latest", data=manifest, headers={"Content-Type": OCI_MANIFEST})
        delete = client.delete(f"/v2/{repo}/manifests/{digest}")
        pushed, deleted = await asyncio.gather(push, delete)
        assert pushed.status == 201, await pushed.text()
        # 404: the push had not stored it yet when the delete looked; 202: deleted (before or after the push)
        assert deleted.status in (202, 404), await deleted.text()
        outcomes.add((pushed.status, deleted.status))
        await _every_tag_resolves(assembly, repo)
        # Put it back for the next round, whatever the order was.
        resp = await client.put(f"/v2/{repo}/manifests/latest", data=manifest, headers={"Content-Type": OCI_MANIFEST})
        assert resp.status == 201
    assert (201, 202) in outcomes


class _Died(Exception):
    """The writer's process ends here: its intent is stored, nothing of it applied."""


@pytest.mark.parametrize("applied_before_death", [0, 1])
async def test_a_dead_deletes_intent_never_deletes_a_manifest_pushed_again_after_it(
    assembly: Assembly, monkeypatch: pytest.MonkeyPatch, applied_before_death: int
) -> None:
    """The delete's writer stores its intent, applies `applied_before_death` operations (the tag delete)
    and dies. After the restart a client pushes :latest again before the relay finds the dead intent."""
    client, repo = assembly.client, "safety/crash"
    registry = _registry(assembly)
    digest, manifest = await push_image(client, repo, "latest")
    real_apply = outbox_module.apply_operations

    async def die(docs: object, ops: list[object], *, partial: bool, **kwargs: Any) -> object:
        await real_apply(docs, ops[:applied_before_death], partial=partial, **kwargs)  # type: ignore[arg-type]
        raise _Died()

    monkeypatch.setattr(outbox_module, "apply_operations", die)
    with pytest.raises(_Died):
        await registry.delete_manifest(RepositoryName(repo), Digest.parse(digest), actor="doomed")
    monkeypatch.setattr(outbox_module, "apply_operations", real_apply)
    resp = await client.put(f"/v2/{repo}/manifests/latest", data=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201
    relay = OutboxRelay(assembly.c.docs, assembly.c.events, stale_after=0.0)
    await relay.drain_once()
    await _every_tag_resolves(assembly, repo)
    if applied_before_death:
        # The push made the tag anew after the delete took it: the delete's rest no longer applies.
        assert await registry.meta.list_tags(repo) == ["latest"]
        assert relay.stats.dropped == 1
    else:
        # The push found the tag in place and changed nothing, so the delete, committed before it, goes
        # on: the tag goes, and the manifest with it. Nothing dangles either way.
        assert await registry.meta.list_tags(repo) == []
        assert relay.stats.recovered == 1


async def _tag_events(a: Assembly, count: int) -> list[tuple[str, str]]:
    """The tag events published so far, each once: delivery is at-least-once and consumers deduplicate by
    envelope id. A test's own relay recovers without the lease, so the service's relay, which holds it, may
    publish an intent the test's relay has just made ready a second time (same envelope)."""
    records = await read_topic(a.c.events, a.c.settings.topics.tags, count, timeout=30, linger=0.5)
    found, seen = [], set()
    for record in records:
        env = decode(record.value)
        if env.id in seen:
            continue
        seen.add(env.id)
        kind = env.WhichOneof("payload")
        found.append((kind, getattr(env, kind).tag))
    return found


async def test_a_tag_that_loses_its_race_is_retried_and_every_moved_tag_is_announced(
    assembly: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, repo = assembly.client, "safety/tags"
    registry = _registry(assembly)
    first, _ = await push_image(client, repo, "b")
    digest, manifest = await push_image(client, repo)
    real_tag = registry.meta.tag
    stale_reads = {"b": 1}

    async def stale_tag(repository: str, name: str) -> TagRecord | None:
        record = await real_tag(repository, name)
        if record is not None and stale_reads.get(name, 0) > 0:
            stale_reads[name] -= 1  # another writer moved it since this read: the compare-and-set loses
            return TagRecord(record.repository, record.name, record.digest, record.version - 1, record.updated)
        return record

    monkeypatch.setattr(registry.meta, "tag", stale_tag)
    resp = await client.put(f"/v2/{repo}/manifests/{digest}?tag=a&tag=b", data=manifest,
                            headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    assert {t.name: str(t.digest) for t in await registry.meta.tags_of(repo, Digest.parse(digest))} == {
        "a": digest, "b": digest}
    events = await _tag_events(assembly, 3)
    assert sorted(events) == [("tag_updated", "a"), ("tag_updated", "b"), ("tag_updated", "b")]

    # A tag that keeps losing: the client is told which tags did move, and their events go out.
    other, other_manifest = await push_image(client, repo)
    stale_reads["b"] = 100
    resp = await client.put(f"/v2/{repo}/manifests/{other}?tag=c&tag=b", data=other_manifest,
                            headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 409
    message = (await resp.json())["errors"][0]["message"]
    assert "tags b of" in message and "tags c moved" in message, message
    assert str((await real_tag(repo, "c")).digest) == other  # type: ignore[union-attr]
    assert str((await real_tag(repo, "b")).digest) == digest  # type: ignore[union-attr]
    assert first != digest


async def test_a_dead_writers_partial_intent_announces_what_the_relay_applied(
    assembly: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, repo = assembly.client, "safety/recover"
    registry = _registry(assembly)
    await push_image(client, repo, "b")
    digest, manifest = await push_image(client, repo)
    real_apply = outbox_module.apply_operations
    real_tag = registry.meta.tag

    async def stale_b(repository: str, name: str) -> TagRecord | None:
        record = await real_tag(repository, name)
        if record is not None and name == "b":
            return TagRecord(record.repository, record.name, record.digest, record.version - 1, record.updated)
        return record

    async def die(*args: object, **kwargs: object) -> object:
        raise _Died()

    monkeypatch.setattr(registry.meta, "tag", stale_b)
    monkeypatch.setattr(outbox_module, "apply_operations", die)
    with pytest.raises(_Died):
        await registry.put_manifest(RepositoryName(repo), Digest.parse(digest), manifest, OCI_MANIFEST,
                                    actor="doomed", extra_tags=[Tag("a"), Tag("b")])
    monkeypatch.setattr(outbox_module, "apply_operations", real_apply)
    monkeypatch.setattr(registry.meta, "tag", real_tag)
    before = len(await _tag_events(assembly, 1))  # the first push's tag b
    relay = OutboxRelay(assembly.c.docs, assembly.c.events, stale_after=0.0)
    await relay.drain_once()
    assert relay.stats.recovered == 1
    assert str((await real_tag(repo, "a")).digest) == digest  # type: ignore[union-attr]
    events = await _tag_events(assembly, before + 1)
    assert events.count(("tag_updated", "a")) == 1 and events.count(("tag_updated", "b")) == 1, events


async def test_immutable_tags_are_not_deleted_without_force(assembly: Assembly) -> None:
    client, repo = assembly.client, "safety/immutable"
    digest, _ = await push_image(client, repo, "1.0.0")
    resp = await client.delete(f"/v2/{repo}/manifests/1.0.0")
    assert resp.status == 409 and "immutable" in (await resp.json())["errors"][0]["message"]
    resp = await client.delete(f"/v2/{repo}/manifests/{digest}")
    assert resp.status == 409
    # the content is unchanged and cannot be replaced through a delete
    other, other_manifest = await push_image(client, repo)
    resp = await client.put(f"/v2/{repo}/manifests/1.0.0", data=other_manifest, headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 409
    resp = await client.delete(f"/v2/{repo}/manifests/1.0.0", headers={"X-Hanzo-Force": "true"})
    assert resp.status == 202
    assert await _registry(assembly).meta.tag(repo, "1.0.0") is None
    assert other != digest


async def test_a_push_whose_manifest_is_deleted_meanwhile_recreates_it(assembly: Assembly) -> None:
    """The conditional delete and the touch after moving tags, in the order most likely to go wrong:
    the delete reads the manifest, the push moves a tag to it, the delete goes on."""
    client, repo = assembly.client, "safety/order"
    registry = _registry(assembly)
    digest, manifest = await push_image(client, repo)
    record = await registry.meta.manifest(repo, Digest.parse(digest))
    assert record is not None
    resp = await client.put(f"/v2/{repo}/manifests/fresh", data=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201
    # The delete as it would go on with what it read before the push: it loses, nothing dangles.
    ops = [registry.meta.delete_manifest_op(record)]
    with pytest.raises(ConflictError):
        await registry.outbox.commit(ops, [])
    await _every_tag_resolves(assembly, repo)
    assert (await client.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST})).status == 200
