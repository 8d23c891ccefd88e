"""Incremental GC on both assemblies (Kafka on the distributed one): tag moves, manifest deletes and blob
deletes arrive as events and become candidates; an incremental run collects what they orphaned and nothing
else (garbage no event announced waits for the full run); a candidate re-pushed before the point of no return
stays."""

from __future__ import annotations

import asyncio
import uuid

from services.core.oci.digest import Digest
from services.gc.candidates import CANDIDATES
from services.gc.service import incremental_loop
from services.gc.sweep import RunOptions
from tests.integration.conftest import Assembly
from tests.integration.gc_support import (
    collector,
    drop_gc_collections,
    gc_consumers,
    make_image,
    pull_exact,
    push,
    push_blob,
    unsettled_marks,
    wait_for_candidates,
)
from tests.integration.oci import digest_of


def _incremental(**kw: object) -> RunOptions:
    return RunOptions(run_id=uuid.uuid4().hex, grace_seconds=0, incremental=True, **kw)  # type: ignore[arg-type]


async def _manifest_status(assembly: Assembly, repo: str, digest: str) -> int:
    return (await assembly.client.head(f"/v2/{repo}/manifests/{digest}")).status


async def test_events_make_candidates_and_an_incremental_run_collects_only_those(assembly: Assembly) -> None:
    client, c = assembly.client, assembly.c
    gc = collector(c, settle=0.05)
    await gc.setup()
    try:
        async with gc_consumers(c):
            moved_from, moved_to = make_image(), make_image()
            await push(client, "inc/app", moved_from, "v1")
            await push(client, "inc/app", moved_to, "v1")  # TagUpdated: moved_from is untagged now
            kept = make_image()
            await push(client, "inc/quiet", kept, "stable")
            silent = make_image()
            await push(client, "inc/quiet", silent)  # untagged, but no event says so: the full run's
            deleted = make_image()
            await push(client, "inc/lib", deleted, "old")
            resp = await client.delete(f"/v2/inc/lib/manifests/{deleted.digest}")
            assert resp.status == 202, await resp.text()  # ManifestDeleted: its blobs are unreferenced
            loose = b"loose bytes " + uuid.uuid4().bytes
            await push_blob(client, "inc/blob", loose)
            resp = await client.delete(f"/v2/inc/blob/blobs/{digest_of(loose)}")
            assert resp.status == 202, await resp.text()  # BlobDeleted: the bytes are linked nowhere now
            await wait_for_candidates(c, {"r:inc/app", "r:inc/lib", f"b:{digest_of(loose)}"})
            assert await c.docs.get(CANDIDATES, "r:inc/quiet") is None  # pushes make no candidates

            dry = await gc.run(_incremental(dry_run=True))
            assert {d.digest for d in dry.deleted if d.kind == "manifest"} == {moved_from.digest}
            assert await c.docs.count(CANDIDATES) == 3  # a dry run leaves them

            result = await gc.run(_incremental())
            assert not result.errors, result.errors
            assert [d.digest for d in result.deleted if d.kind == "manifest"] == [moved_from.digest]
            blobs = {d.digest for d in result.deleted if d.kind == "blob"}
            assert blobs == set(moved_from.blobs) | set(deleted.blobs) | {digest_of(loose)}
            assert await c.blobs.stat(Digest.parse(digest_of(loose))) is None
            assert await _manifest_status(assembly, "inc/app", moved_from.digest) == 404
            await pull_exact(client, "inc/app", "v1", moved_to)
            await pull_exact(client, "inc/quiet", "stable", kept)
            # Not announced by any event, so not examined: the periodic full run takes it.
            assert await _manifest_status(assembly, "inc/quiet", silent.digest) == 200
            assert await c.docs.count(CANDIDATES) == 0

            full = await gc.run(RunOptions(run_id=uuid.uuid4().hex, grace_seconds=0))
            assert [d.digest for d in full.deleted if d.kind == "manifest"] == [silent.digest]
            await pull_exact(client, "inc/app", "v1", moved_to)
    finally:
        await drop_gc_collections(c)


async def test_a_candidate_pushed_again_before_the_point_of_no_return_stays(assembly: Assembly) -> None:
    """The run marks what a tag move and a delete orphaned; while it settles, a client tags the untagged image
    again and pushes the deleted one anew (its blobs are the ones being swept). Both pull byte-exact after."""
    client, c = assembly.client, assembly.c
    gc = collector(c, settle=0.123)
    await gc.setup()
    untagged, deleted = make_image(), make_image()
    settles: list[str] = []

    async def sleep(seconds: float) -> None:
        # The settle between marking and claiming: the manifests' first, then the blobs'.
        if seconds == 0.123:
            settles.append("settle")
            if len(settles) == 1:
                await push(client, "race/app", untagged, "again")
            elif len(settles) == 2:
                await push(client, "race/lib", deleted, "anew")

    gc._sleep = sleep
    try:
        async with gc_consumers(c):
            await push(client, "race/app", untagged, "v1")
            await push(client, "race/app", make_image(), "v1")
            await push(client, "race/lib", deleted, "old")
            resp = await client.delete(f"/v2/race/lib/manifests/{deleted.digest}")
            assert resp.status == 202, await resp.text()
            await wait_for_candidates(c, {"r:race/app", "r:race/lib"})
            result = await gc.run(_incremental())
            assert not result.errors, result.errors
            assert settles == ["settle", "settle"]
            assert not [d for d in result.deleted if d.digest in {untagged.digest, *untagged.blobs, *deleted.blobs}]
            await pull_exact(client, "race/app", "again", untagged)
            await pull_exact(client, "race/lib", "anew", deleted)
            assert not await unsettled_marks(c)
    finally:
        await drop_gc_collections(c)


async def test_a_candidate_kept_for_its_age_is_deferred_until_then(assembly: Assembly) -> None:
    client, c = assembly.client, assembly.c
    gc = collector(c, settle=0.01)
    await gc.setup()
    try:
        async with gc_consumers(c):
            await push(client, "age/app", make_image(), "v1")
            await push(client, "age/app", make_image(), "v1")
            await wait_for_candidates(c, {"r:age/app"})
            # Default retention: untagged manifests live 7 days, so nothing goes and the candidate waits.
            result = await gc.run(RunOptions(run_id=uuid.uuid4().hex, incremental=True))
            assert not result.deleted
            doc = await c.docs.get(CANDIDATES, "r:age/app")
            assert doc is not None and float(doc["due"]) > gc._clock() + 6 * 86400
            assert not await gc.candidates.any_due(now=gc._clock())
    finally:
        await drop_gc_collections(c)


async def test_the_service_runs_incrementally_when_candidates_are_due_and_not_otherwise(assembly: Assembly) -> None:
    client, c = assembly.client, assembly.c
    stop = asyncio.Event()
    try:
        async with gc_consumers(c) as runs:
            runs.collector.settle = 0.01
            loop = asyncio.create_task(incremental_loop(runs, 0.2, stop))
            await asyncio.sleep(0.6)
            assert (await runs.history(limit=10))[0] == []  # nothing due: no run, no record
            await push(client, "svc/app", make_image(), "v1")
            await push(client, "svc/app", make_image(), "v1")
            async with asyncio.timeout(60):
                while not (history := (await runs.history(limit=10))[0]) or history[0]["status"] == "running":
                    await asyncio.sleep(0.1)
            assert [(r["scope"], r["trigger"], r["status"]) for r in history] == [
                ("incremental", "schedule", "succeeded")
            ]
            # Kept for its age (7 days untagged by default): deferred, so the loop starts no further run.
            await asyncio.sleep(0.6)
            assert len((await runs.history(limit=10))[0]) == 1
            stop.set()
            await loop
    finally:
        stop.set()
        await drop_gc_collections(c)
        for name in ("gc_run_items", "leases"):
            await c.docs.drop_collection(name)
