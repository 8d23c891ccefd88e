"""GC runs on both assemblies: what goes, what stays, dry runs, repair of a run that died."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from services.core.bootstrap import Container
from services.core.content.registry import Registry
from services.core.errors import ManifestBlobUnknownError
from services.core.events.outbox import LEASES
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.storage import gcmarks as gm
from services.distribution.keys import REGISTRY
from services.gc import sweep
from services.gc.sweep import RunOptions
from tests.integration.conftest import Assembly
from tests.integration.gc_support import (
    Image,
    collector,
    drop_gc_collections,
    make_image,
    make_index,
    pull_exact,
    push,
    unsettled_marks,
)
from tests.integration.oci import digest_of


def _same_blobs(image: Image) -> Image:
    """Another manifest (other bytes) over `image`'s blobs."""
    doc = json.loads(image.manifest)
    return Image(json.dumps({**doc, "annotations": {"n": uuid.uuid4().hex}}).encode(), image.media_type, image.blobs)


def _run(dry: bool = False) -> RunOptions:
    return RunOptions(run_id=uuid.uuid4().hex, dry_run=dry, grace_seconds=0)


async def test_collects_untagged_and_their_blobs_keeps_tagged_index_children_and_referrers(
    assembly: Assembly,
) -> None:
    client, c = assembly.client, assembly.c
    gc = collector(c)
    await gc.setup()
    try:
        shared = [b"shared layer " + uuid.uuid4().bytes]
        kept = make_image(shared=shared)
        garbage = make_image(shared=shared)
        child = make_image()
        index = make_index([child])
        await push(client, "team/app", kept, "v1")
        await push(client, "team/app", garbage, "moving")
        await push(client, "team/app", make_image(), "moving")  # `garbage` is now untagged
        await push(client, "team/app", index, "multi")
        signature = make_image()
        signature_doc = signature.manifest.replace(
            b'"layers"', b'"subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "'
            + kept.digest.encode() + b'", "size": ' + str(len(kept.manifest)).encode() + b'}, "layers"', 1)
        signature.manifest = signature_doc
        await push(client, "team/app", signature)

        dry = await gc.run(_run(dry=True))
        assert dry.manifests_deleted == 1
        assert (await client.get(f"/v2/team/app/manifests/{garbage.digest}")).status == 200

        result = await gc.run(_run())
        assert not result.errors
        assert [(d.kind, d.digest) for d in result.deleted if d.kind == "manifest"] == [("manifest", garbage.digest)]
        own = set(garbage.blobs) - {digest_of(x) for x in shared}
        assert {d.digest for d in result.deleted if d.kind == "blob"} == own
        assert result.bytes_freed == sum(len(garbage.blobs[d]) for d in own)
        assert (await client.get(f"/v2/team/app/manifests/{garbage.digest}")).status == 404
        await pull_exact(client, "team/app", "v1", kept)
        await pull_exact(client, "team/app", "multi", index)
        await pull_exact(client, "team/app", signature.digest, signature)
        sizes = {x["name"]: x["bytes"] for x in result.storage["repositories"]}
        assert sizes["team/app"] > 0
        assert result.storage["namespaces"] == [{"name": "team", "bytes": result.storage["total_bytes"]}]
        # Nothing left to do.
        again = await gc.run(_run())
        assert (again.manifests_deleted, again.blobs_deleted) == (0, 0)
    finally:
        await drop_gc_collections(c)


async def test_a_run_that_died_past_its_point_of_no_return_is_finished_by_the_next(assembly: Assembly) -> None:
    client, c = assembly.client, assembly.c
    gc = collector(c)
    await gc.setup()
    try:
        image = make_image()
        await push(client, "team/app", image)
        links = await c.docs.find("blob_links", {"repository": "team/app"})
        victim = str(links[0]["digest"])
        # A dead run: it claimed the blob (deleting) and died before deleting anything; its lease is over.
        await c.docs.put(gm.GC_MARKS, {"_id": gm.blob_key(victim), "state": gm.DELETING, "run": "dead",
                                       "until": 0.0, "size": 1,
                                       "links": [{"r": "team/app", "c": links[0]["created"]}]})
        await c.docs.put(gm.GC_MARKS, {"_id": gm.blob_key("sha256:" + "0" * 64), "state": gm.MARKED,
                                       "run": "dead"})
        result = await gc.run(RunOptions(run_id="next", grace_seconds=None))
        assert victim in {d.digest for d in result.deleted}
        assert await c.docs.get(gm.GC_MARKS, gm.blob_key("sha256:" + "0" * 64)) is None
        assert (await c.docs.get(gm.GC_MARKS, gm.blob_key(victim)) or {}).get("state") == gm.DELETED
    finally:
        await drop_gc_collections(c)


async def test_a_blob_verdict_goes_to_whoever_inserts_it_first(assembly: Assembly) -> None:
    """Blob marks with verdicts (gcmarks.py): a push's rescue and the collector's claim are inserts of one
    document; per blob exactly one wins, and a push that loses waits for the tombstone."""
    c = assembly.c
    collector_side, push_side = gm.GcMarks(c.docs), gm.GcMarks(c.docs)
    await collector_side.setup()

    async def gone() -> bool:
        return False

    try:
        await collector_side.announce("r1")
        digests = [f"sha256:{uuid.uuid4().hex}{uuid.uuid4().hex}" for _ in range(40)]
        keys = [gm.blob_key(d) for d in digests]
        for key in keys:
            await collector_side.mark(key, run="r1", verdict=True)
        pushes = [asyncio.ensure_future(push_side.after_link(Digest.parse(d), exists=gone))
                  for d in digests[::2] for _ in range(3)]
        claimed = await collector_side.claim_verdicts(keys, run="r1", until=time.time() + 60)
        await asyncio.sleep(0.2)
        assert not [p for p in pushes if p.done() and not p.result()], "a push lost before any tombstone"
        await collector_side.entomb(sorted(claimed), run="r1")
        outcomes = await asyncio.gather(*pushes)
        for i, digest in enumerate(digests[::2]):
            # The claim won: every push waited and then found the bytes gone. A push won: none of them did.
            assert outcomes[3 * i : 3 * i + 3] == [gm.blob_key(digest) not in claimed] * 3, digest
        assert set(keys[1::2]) <= claimed  # no push touched these
        rescued = [d for d in digests[::2] if gm.blob_key(d) not in claimed]
        deleted = [d for d in digests if gm.blob_key(d) in claimed]
        # A manifest push: refused what was deleted (and not stored again), takes what was rescued.
        assert set(await push_side.before_manifest("team/app", deleted + rescued, [])) == set(deleted)
        # A push that read the mark of a run that has ended, stalled while a later run marked and claimed the
        # blob, then rescued the old run's verdict: it reads the mark again and waits for the later run.
        late = gm.blob_key(f"sha256:{uuid.uuid4().hex}{uuid.uuid4().hex}")
        await collector_side.mark(late, run="r2", verdict=True)
        assert await collector_side.claim_verdicts([late], run="r2", until=time.time() + 60) == {late}
        stalled = asyncio.ensure_future(push_side._verdict(late, "r1"))
        await asyncio.sleep(0.2)
        assert not stalled.done()
        await collector_side.entomb([late], run="r2")
        assert await stalled is False
    finally:
        await drop_gc_collections(c)


async def test_a_run_that_died_after_claiming_verdicts_is_finished_and_old_tombstones_go(
    assembly: Assembly,
) -> None:
    client, c = assembly.client, assembly.c
    gc = collector(c)
    await gc.setup()
    try:
        image = make_image()
        await push(client, "team/app", image)
        links = await c.docs.find("blob_links", {"repository": "team/app"})
        victim = str(links[0]["digest"])
        now = time.time()
        old = now - gm.TOMBSTONE_SECONDS - 10
        # A dead run claimed the victim (its verdict's lease is over) and died before deleting anything.
        await c.docs.put(gm.GC_MARKS, {"_id": gm.blob_key(victim), "state": gm.MARKED, "run": "dead", "verdict": True,
                                       "size": 1, "links": [{"r": "team/app", "c": links[0]["created"]}]})
        await c.docs.put(gm.GC_MARKS, {"_id": gm.verdict_key("dead", gm.blob_key(victim)), "state": gm.DELETING,
                                       "run": "dead", "until": 0.0})
        # What earlier runs left: a deletion whose tombstone is over, one whose tombstone still counts, a mark
        # never claimed, a rescue, and a rescue whose mark is gone.
        left: dict[str, dict[str, object]] = {}
        for name, at in (("over", old), ("fresh", now)):
            key = gm.blob_key("sha256:" + name[0] * 64)
            left[name] = {"b": key, "x": gm.verdict_key(name, key), "t": gm.tombstone_key(name, key)}
            await c.docs.put(gm.GC_MARKS, {"_id": key, "state": gm.MARKED, "run": name, "verdict": True})
            await c.docs.put(gm.GC_MARKS, {"_id": gm.verdict_key(name, key), "state": gm.DELETING, "run": name,
                                           "until": now + 600})
            await c.docs.put(gm.GC_MARKS, {"_id": gm.tombstone_key(name, key), "state": gm.DELETED, "run": name,
                                           "at": at})
        unclaimed, rescued = gm.blob_key("sha256:" + "1" * 64), gm.blob_key("sha256:" + "2" * 64)
        await c.docs.put(gm.GC_MARKS, {"_id": unclaimed, "state": gm.MARKED, "run": "r0", "verdict": True})
        await c.docs.put(gm.GC_MARKS, {"_id": rescued, "state": gm.MARKED, "run": "r0", "verdict": True})
        await c.docs.put(gm.GC_MARKS, {"_id": gm.verdict_key("r0", rescued), "state": gm.RESCUED, "run": "r0"})
        stray = gm.verdict_key("r0", gm.blob_key("sha256:" + "3" * 64))
        await c.docs.put(gm.GC_MARKS, {"_id": stray, "state": gm.RESCUED, "run": "r0"})

        result = await gc.run(RunOptions(run_id="next", grace_seconds=None))
        assert victim in {d.digest for d in result.deleted}
        assert not result.errors, result.errors
        assert await c.docs.get(gm.GC_MARKS, gm.tombstone_key("dead", gm.blob_key(victim))) is not None
        assert await c.docs.get(gm.GC_MARKS, gm.blob_key(victim)) is not None  # its tombstone still counts
        remaining = {str(d["_id"]) for d in await c.docs.find(gm.GC_MARKS)}
        assert not set(left["over"].values()) & remaining
        assert set(left["fresh"].values()) <= remaining
        assert not {unclaimed, rescued, gm.verdict_key("r0", rescued), stray} & remaining
        resp = await client.get(f"/v2/team/app/blobs/{victim}")
        assert resp.status == 404
    finally:
        await drop_gc_collections(c)


async def test_one_settle_per_phase_not_per_batch(assembly: Assembly, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 500 candidates a batch and the default 5 s settle, one settle per batch capped deletion at
    6,000 blobs a minute whatever the backend; each phase now waits once."""
    client, c = assembly.client, assembly.c
    monkeypatch.setattr(sweep, "BATCH", 2)
    settles: list[float] = []

    async def sleep(seconds: float) -> None:
        if seconds == 0.123:
            settles.append(seconds)

    gc = collector(c, settle=0.123)
    gc._sleep = sleep  # the collector's own waits; the marks' announce wait stays real
    await gc.setup()
    try:
        images = [make_image() for _ in range(3)]
        for image in images:
            await push(client, "team/app", image)  # untagged
        result = await gc.run(_run())
        assert not result.errors and result.manifests_deleted == 3
        assert result.blobs_deleted == sum(len(i.blobs) for i in images)
        assert settles == [0.123, 0.123]  # manifests, then blobs (no unlinked bytes here)
    finally:
        await drop_gc_collections(c)


@pytest.mark.parametrize("reference", ["child manifest", "blobs"])
async def test_a_push_that_stalls_between_reading_marks_and_storing_keeps_what_it_references(
    assembly: Assembly, monkeypatch: pytest.MonkeyPatch, reference: str
) -> None:
    """The push reads no mark (the run has not marked yet), then takes longer than `settle` to store its
    manifest: its hold, written before that read, keeps the run from deleting the index's untagged child (or
    the untagged image's blobs the new manifest shares), however long the push takes."""
    client, c = assembly.client, assembly.c
    registry: Registry = client.app[REGISTRY]
    gc = collector(c, settle=0.01, grace=0.0)
    await gc.setup()
    try:
        untagged = make_image()
        await push(client, "hold/app", untagged)  # garbage at grace 0: the manifest, and its blobs with it
        pushed = make_index([untagged]) if reference == "child manifest" else _same_blobs(untagged)
        reached, resume = asyncio.Event(), asyncio.Event()
        real_ensure, real_mark = registry.meta.ensure_repository, gc.marks.mark_each

        async def stall_before_storing(*args: Any, **kwargs: Any) -> None:
            reached.set()  # the push has read the marks: none yet
            await resume.wait()
            await real_ensure(*args, **kwargs)

        async def mark_after_the_push_read(*args: Any, **kwargs: Any) -> None:
            await reached.wait()
            await real_mark(*args, **kwargs)

        monkeypatch.setattr(registry.meta, "ensure_repository", stall_before_storing)
        monkeypatch.setattr(gc.marks, "mark_each", mark_after_the_push_read)
        options = _run()
        running = asyncio.ensure_future(gc.run(options))
        while (await c.docs.get(LEASES, gm.COLLECTING) or {}).get("run") != options.run_id:
            await asyncio.sleep(0.01)
        while not await registry.blob_guard._collecting():  # type: ignore[attr-defined]  # the push side noticed
            await asyncio.sleep(0.01)
        pushing = asyncio.ensure_future(registry.put_manifest(
            RepositoryName("hold/app"), Tag("kept"), pushed.manifest, pushed.media_type, actor="test"))
        result = await asyncio.wait_for(running, 60)
        resume.set()
        await pushing
        assert not result.errors, result.errors
        assert result.blobs_deleted == 0, result.deleted
        await pull_exact(client, "hold/app", "kept", pushed)
        for digest, data in untagged.blobs.items():
            resp = await client.get(f"/v2/hold/app/blobs/{digest}")
            assert resp.status == 200 and await resp.read() == data, digest
        assert await c.docs.find(gm.GC_HOLDS) == []  # the push removed its hold
    finally:
        await drop_gc_collections(c)
        await c.docs.drop_collection(gm.GC_HOLDS)


@pytest.mark.parametrize("same", [False, True], ids=["new-manifest", "the-collected-manifest"])
async def test_a_push_that_read_no_run_and_stored_after_the_run_deleted_is_told_to_push_again(
    assembly: Assembly, monkeypatch: pytest.MonkeyPatch, same: bool
) -> None:
    """The push read "no run" (so it wrote no hold and read no mark), stalled, and stored its manifest after a
    whole run deleted the blobs it shares with an untagged image: it is refused with MANIFEST_BLOB_UNKNOWN
    naming them (was: a 201 for a manifest whose blobs were gone) and rolled back (was: the tags left on that
    manifest): the tag it moved points where it pointed before, the tag it made and the manifest are gone.
    Pushing the blobs again mends it. `same`: the push tags the untagged manifest itself, which this replica
    believes stored, so its touch re-creates the manifest the run deleted: that goes too."""
    client, c = assembly.client, assembly.c
    untagged = make_image()
    await push(client, "late/app", untagged)  # garbage at grace 0: the manifest, and its blobs with it
    before = make_image()
    await push(client, "late/app", before, "kept")
    pushed = untagged if same else _same_blobs(untagged)
    registry: Registry = client.app[REGISTRY]
    gc = collector(c, settle=0.01, grace=0.0)
    await gc.setup()
    try:
        reached, resume = asyncio.Event(), asyncio.Event()
        real_ensure = registry.meta.ensure_repository

        async def stall_before_storing(*args: Any, **kwargs: Any) -> None:
            reached.set()  # the push decided: no run, no hold
            await resume.wait()
            await real_ensure(*args, **kwargs)

        monkeypatch.setattr(registry.meta, "ensure_repository", stall_before_storing)
        pushing = asyncio.ensure_future(registry.put_manifest(
            RepositoryName("late/app"), Tag("kept"), pushed.manifest, pushed.media_type, actor="test",
            extra_tags=[Tag("fresh")]))
        await asyncio.wait_for(reached.wait(), 30)
        result = await asyncio.wait_for(gc.run(_run()), 60)
        assert not result.errors and result.blobs_deleted == len(untagged.blobs), result
        resume.set()
        with pytest.raises(ManifestBlobUnknownError) as refused:
            await pushing
        assert set(refused.value.detail["digests"]) == set(untagged.blobs)
        monkeypatch.undo()
        await pull_exact(client, "late/app", "kept", before)
        for reference in ("fresh", pushed.digest):
            resp = await client.get(f"/v2/late/app/manifests/{reference}", headers={"Accept": pushed.media_type})
            assert resp.status == 404, (reference, resp.status)
        await push(client, "late/app", pushed, "kept")  # the client pushes the blobs again, then the manifest
        await pull_exact(client, "late/app", "kept", pushed)
    finally:
        await drop_gc_collections(c)
        await c.docs.drop_collection(gm.GC_HOLDS)


async def test_a_collector_that_stalls_after_its_claim_leaves_the_bytes_and_a_push_keeps_them(
    assembly: Assembly,
) -> None:
    """A collector that stalls past DELETE_WITHIN_SECONDS between its claim and deleting the bytes no longer
    deletes them (a push waiting on the claim may take it over by then and keep the blob: was a blob whose
    link the push kept and whose bytes the collector then deleted). The run says so; a push of the same blobs
    after the claim's lease takes them over and keeps them; the next run keeps them too."""
    client, c = assembly.client, assembly.c
    untagged = make_image()
    await push(client, "stall/app", untagged)  # garbage at grace 0: the manifest, and its blobs with it
    drift = [0.0]
    gc = collector(c, settle=0.01, grace=0.0, clock=lambda: time.time() + drift[0])
    await gc.setup()
    real_claim = gc.marks.claim_verdicts

    async def claim_then_stall(*args: Any, **kwargs: Any) -> set[str]:
        won = await real_claim(*args, **kwargs)
        drift[0] += sweep.DELETE_WITHIN_SECONDS + 1  # the collector's next step comes this much later
        return won

    gc.marks.claim_verdicts = claim_then_stall  # type: ignore[method-assign]
    try:
        result = await asyncio.wait_for(gc.run(_run()), 60)
        assert result.manifests_deleted == 1 and result.blobs_deleted == 0, result
        assert len(result.errors) == len(untagged.blobs), result.errors
        assert all("too long to delete its bytes" in e for e in result.errors), result.errors
        for digest in untagged.blobs:
            assert await c.blobs.stat(Digest.parse(digest)) is not None, f"{digest}: bytes deleted after the stall"
        # The claims' leases run out (done through their clock field rather than by waiting a minute); a push
        # of the same blobs takes them over, finds the bytes and keeps them.
        for doc in await c.docs.find(gm.GC_MARKS, {"state": gm.DELETING}):
            await c.docs.update(gm.GC_MARKS, str(doc["_id"]), {"until": 0.0})
        await push(client, "stall/app", untagged, "kept")
        await pull_exact(client, "stall/app", "kept", untagged)
        gc.marks.claim_verdicts = real_claim  # type: ignore[method-assign]
        drift[0] = 0.0
        again = await asyncio.wait_for(gc.run(_run()), 60)
        assert not again.errors and again.blobs_deleted == 0, again
        await pull_exact(client, "stall/app", "kept", untagged)
    finally:
        await drop_gc_collections(c)


async def test_the_registry_counts_the_requests_gc_yields_to(assembly: Assembly) -> None:
    """RequestActivity: the distribution app's first middleware counts every request, so a run in the same
    process (`serve`) paces itself while they come (gc.yield_ratio) and not while none do."""
    client, c = assembly.client, assembly.c
    seen: list[int] = []
    real_started = c.activity.started

    def started() -> None:
        real_started()
        seen.append(c.activity.in_flight)

    c.activity.started = started  # type: ignore[method-assign]
    try:
        for path in ("/v2/", "/v2/no/such/manifests/latest", "/v1/registry/nope"):
            await client.get(path)
    finally:
        c.activity.started = real_started  # type: ignore[method-assign]
    assert seen == [1, 1, 1] and c.activity.in_flight == 0
    assert c.activity.busy()  # just now: a client's next request follows within milliseconds


async def test_the_base_model_of_a_kept_adapter_stays(assembly: Assembly) -> None:
    """A model adapter (or quantization) names its base as `subject` (hanzo-registry model push --base): while
    the adapter is kept, its base is too, untagged and old as it may be."""
    client, c = assembly.client, assembly.c
    gc = collector(c)
    await gc.setup()
    try:
        base = make_image()
        await push(client, "models/llm", base)  # by digest: untagged
        adapter = make_image()
        adapter.manifest = adapter.manifest.replace(
            b'"layers"', b'"subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "'
            + base.digest.encode() + b'", "size": ' + str(len(base.manifest)).encode() + b'}, "layers"', 1)
        await push(client, "models/llm", adapter, "v1-lora")
        result = await gc.run(_run())
        assert not result.errors and result.manifests_deleted == 0
        await pull_exact(client, "models/llm", base.digest, base)
        await pull_exact(client, "models/llm", "v1-lora", adapter)
    finally:
        await drop_gc_collections(c)


async def _store_unlinked(c: Container, data: bytes) -> Digest:
    """Bytes in the blob store that no repository links (an upload committed and never linked)."""
    upload = await c.blobs.start_upload()

    async def body() -> Any:
        yield data

    await c.blobs.append(upload, body(), offset=0)
    return (await c.blobs.commit(upload, Digest.of(data))).digest


async def test_unlinked_bytes_age_from_first_sight_and_bytes_stored_during_a_run_wait_for_the_next(
    assembly: Assembly,
) -> None:
    """Bytes no repository links (a push that never linked) are marked seen by the first run that finds them and
    deleted by one a grace period later. Bytes stored since the run started (pushes after its links' snapshot,
    nearly all linked by the time the listing finds them) get no mark from that run: it would delete none of
    them, and each mark was three commands and a lease lock on FerretDB. A run with no grace takes them at once."""
    c = assembly.c
    now = time.time()
    data = b"never linked " + uuid.uuid4().bytes
    digest = await _store_unlinked(c, data)
    key = gm.blob_key(digest)
    try:
        gc = collector(c, clock=lambda: now)  # the bytes were stored after this run started
        await gc.setup()
        result = await gc.run(RunOptions(run_id="r1"))
        assert not result.errors and await c.docs.get(gm.GC_MARKS, key) is None

        gc = collector(c, clock=lambda: now + 600)  # a later run: stored before it started
        result = await gc.run(RunOptions(run_id="r2"))
        assert not result.errors and str(digest) not in {d.digest for d in result.deleted}
        seen = await c.docs.get(gm.GC_MARKS, key)
        assert seen is not None and seen["state"] == gm.SEEN and seen["since"] == now + 600

        gc = collector(c, clock=lambda: now + 600 + 3600)  # a grace period (3600 s) after first sight
        result = await gc.run(RunOptions(run_id="r3"))
        assert not result.errors and str(digest) in {d.digest for d in result.deleted}
        assert await c.blobs.stat(digest) is None

        await _store_unlinked(c, data)
        gc = collector(c, clock=lambda: now)
        result = await gc.run(RunOptions(run_id="r4", grace_seconds=0))  # no grace: fresh bytes go too
        assert not result.errors and str(digest) in {d.digest for d in result.deleted}
        assert await c.blobs.stat(digest) is None
    finally:
        await c.blobs.delete(digest)
        await drop_gc_collections(c)


async def test_a_blob_linked_into_another_repository_between_the_snapshot_and_its_mark_stays(
    assembly: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount into a repository that did not link the blob when the run read the links, made before the run
    marked it: the mount read no mark (there was none yet), so only the collector can notice. After marking, the
    run reads what was linked since it started and keeps the blob (was: the bytes deleted under the new link,
    and an image pushed over that link later accepted with a layer that would not pull)."""
    client, c = assembly.client, assembly.c
    layer = b"mounted while swept " + uuid.uuid4().bytes
    untagged = make_image(shared=[layer])
    await push(client, "dangle/app", untagged)  # garbage at grace 0: the manifest, and its blobs with it
    gc = collector(c, settle=0.01, grace=0.0)
    await gc.setup()
    real_mark = gc.marks.mark_each
    mounted: list[int] = []
    done = asyncio.Event()

    async def mount_then_mark(keys: list[str], **kwargs: Any) -> Any:
        blobs = any(k.startswith("b:") for k in keys)
        if blobs and not mounted:  # the links were read: these are the first blob marks
            mounted.append(0)
            resp = await client.post(f"/v2/dangle/other/blobs/uploads/?mount={digest_of(layer)}&from=dangle/app")
            mounted[0] = resp.status
            done.set()
        if blobs:
            await done.wait()  # batches of marks go several at a time: none before the mount
        return await real_mark(keys, **kwargs)

    monkeypatch.setattr(gc.marks, "mark_each", mount_then_mark)
    try:
        result = await asyncio.wait_for(gc.run(_run()), 60)
        assert mounted == [201]
        assert not result.errors, result.errors
        assert result.manifests_deleted == 1 and result.blobs_deleted == len(untagged.blobs) - 1, result.deleted
        resp = await client.get(f"/v2/dangle/other/blobs/{digest_of(layer)}")
        assert resp.status == 200 and await resp.read() == layer
        kept = make_image(shared=[layer])
        await push(client, "dangle/other", kept, "v1")  # finds the layer linked and does not send it
        await pull_exact(client, "dangle/other", "v1", kept)
        again = await asyncio.wait_for(gc.run(_run()), 60)  # the blob's marks of the first run are let go
        assert not again.errors and again.blobs_deleted == 0, again
        assert await unsettled_marks(c) == []
    finally:
        await drop_gc_collections(c)


async def test_unlinked_bytes_a_push_links_between_the_snapshot_and_their_mark_stay(
    assembly: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes no repository linked when the run read the links, uploaded and linked by a push before the run
    marked them: the run reads what was linked since it started and leaves them."""
    client, c = assembly.client, assembly.c
    data = b"linked while swept " + uuid.uuid4().bytes
    digest = await _store_unlinked(c, data)
    gc = collector(c, settle=0.01, grace=0.0)
    await gc.setup()
    real_mark = gc.marks.mark_each
    pushed: list[int] = []

    async def push_then_mark(keys: list[str], **kwargs: Any) -> Any:
        if gm.blob_key(digest) in keys and not pushed:
            resp = await client.post(f"/v2/late/bytes/blobs/uploads/?digest={digest}", data=data,
                                     headers={"Content-Type": "application/octet-stream"})
            pushed.append(resp.status)
        return await real_mark(keys, **kwargs)

    monkeypatch.setattr(gc.marks, "mark_each", push_then_mark)
    try:
        result = await asyncio.wait_for(gc.run(_run()), 60)
        assert pushed == [201]
        assert not result.errors and str(digest) not in {d.digest for d in result.deleted}, result
        resp = await client.get(f"/v2/late/bytes/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == data
    finally:
        await drop_gc_collections(c)
