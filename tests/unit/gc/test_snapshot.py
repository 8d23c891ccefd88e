"""A full run's snapshot (sweep.Collector._repositories): each repository's manifests with their tags, the tags
read by one walk beside the manifests' walk however many repositories there are."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from services.core.policy.document import PolicyDocument
from services.core.settings import TopicSettings
from services.core.storage import meta as m
from services.core.storage.documents import Document
from services.core.storage.sqlite import SqliteDocumentStore
from services.gc.sweep import Collector, _TagsInStep

# Names that sort differently alone than followed by ':' or '@' ("a" < "a-b" but "a-b@" < "a@"), per the OCI
# name grammar: lower-case letters and digits, separated by '.', '_', '__', '-' runs and '/'.
TRICKY = ["a", "a-b", "a.b", "a/b", "a1", "a_b", "a__b", "ab", "b", "a/b/c", "a0", "z9", "a--b", "cache/library/x"]


def _random_name(rng: random.Random) -> str:
    def component() -> str:
        parts = ["".join(rng.choice("abz019") for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
        return "".join(p + rng.choice([".", "_", "__", "-", "--"]) for p in parts[:-1]) + parts[-1]

    return "/".join(component() for _ in range(rng.randint(1, 3)))


async def _walk(docs: list[Document]) -> AsyncIterator[Document]:
    for doc in docs:
        yield doc


async def test_each_repository_gets_its_own_tags_in_the_manifests_order() -> None:
    rng = random.Random(7)
    names = sorted(set(TRICKY + [_random_name(rng) for _ in range(300)]))
    with_manifests = [n for n in names if rng.random() < 0.7]
    tags = {n: {f"sha256:{n}-{i}" for i in range(rng.randint(0, 3))} for n in names}  # some with no manifest
    tag_docs = sorted(({"_id": f"{n}:t{i}", "repository": n, "digest": d}
                       for n in names for i, d in enumerate(sorted(tags[n]))), key=lambda d: d["_id"])
    order = sorted(with_manifests, key=lambda n: f"{n}@sha256:")  # the manifests' walk: `repository@digest`
    step = _TagsInStep(_walk(tag_docs))
    for name in order:
        assert await step.of(name) == tags[name], name
    assert await step.of("zzzz") == set()


async def test_a_full_snapshot_reads_the_tags_once(tmp_path: Path) -> None:
    docs = SqliteDocumentStore(tmp_path / "m.db")
    walks: list[str] = []
    batches = docs.batches

    def counted(collection: str, *args: Any, **kwargs: Any) -> Any:
        walks.append(collection)
        return batches(collection, *args, **kwargs)

    docs.batches = counted  # type: ignore[method-assign]
    try:
        await docs.ensure_collection(m.MANIFESTS)
        await docs.ensure_collection(m.TAGS)
        for i, repo in enumerate(TRICKY):
            for j in range(2):
                digest = f"sha256:{i:02d}{j}"
                await docs.put(m.MANIFESTS, {"_id": f"{repo}@{digest}", "repository": repo, "digest": digest,
                                             "created": 1.0, "references": [], "size": 10})
            await docs.put(m.TAGS, {"_id": f"{repo}:latest", "repository": repo, "digest": f"sha256:{i:02d}0"})
        await docs.put(m.TAGS, {"_id": "gone:latest", "repository": "gone", "digest": "sha256:ff"})
        gc = Collector(docs=docs, blobs=cast(Any, None), outbox=cast(Any, None), topics=TopicSettings(),
                       default_policy=PolicyDocument(), blob_grace_seconds=0, upload_expiry_seconds=0,
                       settle_seconds=0, page=3)
        seen = {}
        async for facts in gc._repositories():
            assert len({f.repository for f in facts}) == 1
            seen[facts[0].repository] = {f.digest: f.tagged for f in facts}
        assert seen == {repo: {f"sha256:{i:02d}0": True, f"sha256:{i:02d}1": False} for i, repo in enumerate(TRICKY)}
        assert walks.count(m.TAGS) == 1 and walks.count(m.MANIFESTS) == 1, walks
    finally:
        await docs.close()
