"""Issue 15's defaults: a remote's `ttl` (how long a tag -> digest answer is trusted) and `proxy.retention` are
7 days, and the revalidation logic applies that ttl: a cached tag is served without asking the upstream before 7
days have passed since the upstream last confirmed it, and revalidated with a HEAD after."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from services.core.bootstrap import Container, container
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.secrets import secret_box
from services.core.settings import load_settings
from services.distribution.app import build_registry
from services.distribution.cache import service as cache_service
from services.distribution.cache.records import CACHE, entry_id
from services.distribution.cache.remotes import REMOTES, RemoteConfig, from_settings
from services.distribution.cache.service import PullThroughCache
from services.distribution.management_upstreams import NewRemote

DAY = 24 * 3600.0
WEEK = 7 * DAY
START = 1_800_000_000.0
REPO = RepositoryName("cache/up/team/app")


def manifest(nonce: str) -> bytes:
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": nonce}).encode()
    return json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": str(Digest.of(config)), "size": len(config)},
        "layers": [],
    }).encode()


def test_settings_defaults_are_seven_days() -> None:
    settings = load_settings(proxy={"remotes": [{"name": "up", "url": "http://127.0.0.1:5001"}],
                                    "default_remote": "up"})
    assert settings.proxy.retention == WEEK
    assert settings.proxy.remotes[0].ttl == WEEK
    assert from_settings(settings.proxy.remotes[0]).ttl == WEEK
    # The built-in Docker Hub remote, and a remote PUT over the management API without a ttl, too.
    assert [r.ttl for r in load_settings().proxy.remotes] == [WEEK]
    assert NewRemote(name="up", url="http://127.0.0.1:5001").ttl == WEEK


class FakeUpstream:
    """Stands in for the upstream requests `service.py` makes (it imports them by name): what tag v1 points at,
    and how often it was asked."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.heads = 0
        self.gets = 0

    async def head_manifest(self, client: object, repo: object, reference: Tag | Digest) -> Digest:
        self.heads += 1
        return Digest.of(self.content)

    async def get_manifest(self, client: object, repo: object, reference: Tag | Digest, *, max_bytes: int
                           ) -> tuple[Digest, str, bytes]:
        self.gets += 1
        return Digest.of(self.content), mt.OCI_MANIFEST, self.content


@contextlib.asynccontextmanager
async def pull_through(tmp_path: Path, clock: list[float]) -> AsyncIterator[tuple[PullThroughCache, Container]]:
    # No ttl and no retention given: the defaults under test.
    settings = load_settings(data_dir=tmp_path, auth={"mode": "none"},
                             proxy={"remotes": [{"name": "up", "url": "http://127.0.0.1:5001"}],
                                    "default_remote": "up"})
    async with container(settings) as c:
        cache = PullThroughCache(settings=settings, registry=build_registry(c), docs=c.docs, metrics=c.metrics,
                                 clock=lambda: clock[0])
        # lifetime() ignores its app; it sets up the collections and closes the upstream session.
        async with contextlib.asynccontextmanager(cache.lifetime)(cast(Any, None)):
            yield cache, c


async def test_a_tag_is_trusted_for_seven_days_then_revalidated_by_head(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [START]
    first, moved = manifest("first"), manifest("moved")
    upstream = FakeUpstream(first)
    monkeypatch.setattr(cache_service, "head_manifest", upstream.head_manifest)
    monkeypatch.setattr(cache_service, "get_manifest", upstream.get_manifest)
    async with pull_through(tmp_path, clock) as (cache, _):
        assert (await cache.remotes.current()).by_name["up"].ttl == WEEK

        async def pull() -> tuple[Digest, bool]:
            record, stale = await cache.manifest(REPO, Tag("v1"))
            return record.digest, stale

        assert await pull() == (Digest.of(first), False)
        assert (upstream.gets, upstream.heads) == (1, 0)  # a miss: fetched, and the tag confirmed at START

        clock[0] = START + WEEK - 1
        assert await pull() == (Digest.of(first), False)
        assert (upstream.gets, upstream.heads) == (1, 0)  # inside 7 days: the upstream is not asked

        clock[0] = START + WEEK + 1
        assert await pull() == (Digest.of(first), False)
        assert (upstream.gets, upstream.heads) == (1, 1)  # past 7 days: one HEAD, same digest, confirmed anew

        confirmed = START + WEEK + 1
        clock[0] = confirmed + WEEK - 1
        assert await pull() == (Digest.of(first), False)
        assert (upstream.gets, upstream.heads) == (1, 1)  # 7 days counted from the new confirmation

        upstream.content = moved
        assert await pull() == (Digest.of(first), False)  # the tag moved upstream; not asked yet
        assert (upstream.gets, upstream.heads) == (1, 1)

        clock[0] = confirmed + WEEK + 1
        assert await pull() == (Digest.of(moved), False)
        assert (upstream.gets, upstream.heads) == (2, 2)  # HEAD saw another digest: fetched again


async def test_a_stored_tag_confirmation_is_trusted_for_seven_days(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The confirmation time is read back from `proxy_cache` (another replica, or a restart): the same 7 days
    apply to it."""
    clock = [START]
    upstream = FakeUpstream(manifest("first"))
    monkeypatch.setattr(cache_service, "head_manifest", upstream.head_manifest)
    monkeypatch.setattr(cache_service, "get_manifest", upstream.get_manifest)
    async with pull_through(tmp_path, clock) as (cache, c):
        await cache.manifest(REPO, Tag("v1"))
        assert upstream.gets == 1
    confirmed_at = START - 3 * DAY  # a confirmation older than this process
    async with pull_through(tmp_path, clock) as (cache, c):
        doc = await c.docs.get(CACHE, f"t:{REPO}:v1")
        assert doc is not None and doc["validated"] == START
        await c.docs.put(CACHE, {**doc, "validated": confirmed_at})
        clock[0] = confirmed_at + WEEK - 1
        await cache.manifest(REPO, Tag("v1"))
        assert (upstream.gets, upstream.heads) == (1, 0)
    async with pull_through(tmp_path, clock) as (cache, c):
        clock[0] = confirmed_at + WEEK + 1
        await cache.manifest(REPO, Tag("v1"))
        assert (upstream.gets, upstream.heads) == (1, 1)


async def test_a_remote_stored_without_ttl_and_pulls_get_seven_days(tmp_path: Path) -> None:
    """A remote list stored without ttls (written before ttl existed, or by hand) reads as 7 days; a pull's
    record expires (for GC) 7 days after it, the `proxy.retention` default."""
    clock = [START]
    async with pull_through(tmp_path, clock) as (cache, c):
        await c.docs.put(REMOTES, {"_id": "remotes", "remotes": [{"name": "mirror", "url": "http://127.0.0.1:5002"}]})
        fresh = RemoteConfig(c.docs, c.settings.proxy, box=lambda: secret_box(None))  # nothing cached yet
        assert (await fresh.current()).by_name["mirror"].ttl == WEEK

        digest = Digest.of(b"layer")
        cache.records.pulled("blob", str(REPO), digest)
        await cache.records.flush()
        doc = await c.docs.get(CACHE, entry_id("blob", str(REPO), str(digest)))
        assert doc is not None and (doc["last_pulled"], doc["expires"]) == (START, START + WEEK)
