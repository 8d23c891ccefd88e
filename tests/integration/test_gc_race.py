"""GC runs back to back while clients push new images, re-push and mount exactly the blobs being swept, push
indexes of untagged children and move tags; afterwards every image that should exist pulls byte-exact. Full and
incremental runs take turns, the gc consumers recording candidates from the tag moves meanwhile."""

from __future__ import annotations

import asyncio
import uuid

from services.gc.sweep import RunOptions
from tests.integration.conftest import Assembly
from tests.integration.gc_support import (
    Image,
    collector,
    drop_gc_collections,
    gc_consumers,
    make_image,
    make_index,
    pull_exact,
    push_retrying,
)

ROUNDS = 12


async def test_pushes_mounts_and_tag_moves_during_gc_lose_nothing(assembly: Assembly) -> None:
    client, c = assembly.client, assembly.c
    gc = collector(c, settle=0.02)
    await gc.setup()
    expected: dict[tuple[str, str], Image] = {}
    stop = asyncio.Event()
    runs = 0
    swept = 0

    async def collect() -> None:
        nonlocal runs, swept
        while not stop.is_set():
            # grace 0: every untagged manifest and unreferenced blob is garbage at once.
            result = await gc.run(RunOptions(run_id=uuid.uuid4().hex, grace_seconds=0, incremental=runs % 2 == 1))
            assert not result.errors, result.errors
            runs += 1
            swept += result.blobs_deleted + result.manifests_deleted
            await asyncio.sleep(0)

    async def round_(n: int) -> None:
        shared = [b"shared %d " % n + uuid.uuid4().bytes]
        doomed = make_image(shared=shared)
        await push_retrying(client, "race/app", doomed)  # untagged: garbage for the collector running now
        tasks = []
        # Re-push exactly the doomed image (its blobs are being swept), tagged this time.
        tasks.append(push_retrying(client, "race/app", doomed, f"repush-{n}"))
        # Mount the doomed blobs into another repository and push the image there.
        tasks.append(push_retrying(client, "race/other", doomed, f"mounted-{n}", mount_from="race/app"))
        # A new image sharing a blob with the doomed one.
        fresh = make_image(shared=shared)
        tasks.append(push_retrying(client, "race/app", fresh, f"fresh-{n}"))
        # An index whose children are pushed untagged first (garbage until the index lands).
        index = make_index([make_image(), make_image()])
        tasks.append(push_retrying(client, "race/app", index, f"index-{n}"))

        async def moves() -> Image:
            last = make_image()
            await push_retrying(client, "race/app", last, f"moving-{n}")
            for _ in range(2):
                last = make_image()
                await push_retrying(client, "race/app", last, f"moving-{n}")
            return last

        *_, moved = await asyncio.gather(*tasks, moves())
        expected[("race/app", f"repush-{n}")] = doomed
        expected[("race/other", f"mounted-{n}")] = doomed
        expected[("race/app", f"fresh-{n}")] = fresh
        expected[("race/app", f"index-{n}")] = index
        expected[("race/app", f"moving-{n}")] = moved  # type: ignore[assignment]

    consuming = gc_consumers(c)
    await consuming.__aenter__()
    collecting = asyncio.create_task(collect())
    try:
        for n in range(ROUNDS):
            await round_(n)
        stop.set()
        await collecting
        # One more run after the dust settles must not take anything that is kept either.
        await gc.run(RunOptions(run_id=uuid.uuid4().hex, grace_seconds=0))
        assert runs >= 2 and swept > 0, "the collector never raced anything"
        for (repo, tag), image in expected.items():
            await pull_exact(client, repo, tag, image)
    finally:
        stop.set()
        await asyncio.gather(collecting, return_exceptions=True)
        await consuming.__aexit__(None, None, None)
        await drop_gc_collections(c)
