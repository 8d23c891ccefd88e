"""A blob pull inside `sharing_pull_digesters` hands out the Digester that checks it, so a store can take that
hash instead of computing it again; a pull from a prefix hands out nothing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from aiohttp import web

from services.core.client import OciClient
from services.core.client.blobs import sharing_pull_digesters
from services.core.client.reference import RemoteRepository
from services.core.oci.digest import Digest, Digester

DATA = os.urandom(3 * 1024 * 1024 + 17)


@contextlib.asynccontextmanager
async def registry() -> AsyncIterator[str]:
    async def blob(request: web.Request) -> web.StreamResponse:
        start = int(request.headers.get("Range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
        if not start:
            return web.Response(body=DATA)
        return web.Response(status=206, body=DATA[start:],
                            headers={"Content-Range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"})

    app = web.Application()
    app.router.add_get("/v2/team/app/blobs/{digest}", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_pull_hands_out_its_digester_which_hashed_exactly_what_it_yielded() -> None:
    digest = Digest.of(DATA)
    handed: list[Digester] = []
    async with registry() as host, OciClient() as client:
        repo = RemoteRepository.parse(f"{host}/team/app")
        received = 0
        with sharing_pull_digesters(handed.append):
            async for chunk in client.pull_blob(repo, digest, size=len(DATA)):
                received += len(chunk)
                assert len(handed) == 1 and handed[0].size == received
        assert handed[0].digest() == digest
        # Outside the context nothing is handed out.
        async for _ in client.pull_blob(repo, digest, size=len(DATA)):
            pass
        assert len(handed) == 1


async def test_a_pull_from_a_prefix_hands_out_nothing() -> None:
    digest = Digest.of(DATA)
    prefix = Digester()
    prefix.update(DATA[:1000])
    handed: list[Digester] = []
    async with registry() as host, OciClient() as client:
        repo = RemoteRepository.parse(f"{host}/team/app")
        with sharing_pull_digesters(handed.append):
            rest = b"".join([c async for c in client.pull_blob(repo, digest, size=len(DATA), prefix=prefix)])
    assert rest == DATA[1000:] and handed == []
