"""Serving a blob from local disk with the kernel's sendfile, under our own headers.

aiohttp's FileResponse would do the transfer but replaces our validators (it derives the ETag
from mtime and size), so the embedded and distributed assemblies would answer the same blob with
different ETags. This sends exactly the response the handler built, then the file range.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web

CHUNK = 1 << 20


def _read_at(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, size, offset)


async def send_file(request: web.Request, response: web.StreamResponse, path: Path, offset: int, count: int) -> None:
    """Prepare `response` (its Content-Length must be `count`) and stream `count` bytes from `offset`."""
    fobj = await asyncio.to_thread(path.open, "rb")
    try:
        writer = await response.prepare(request)
        assert writer is not None
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        await writer.drain()
        if count == 0:  # the empty blob; sendfile(2) refuses a zero count
            await response.write_eof()
            return
        try:
            if transport.get_extra_info("sslcontext") is not None:
                # TLS: the kernel cannot encrypt, and asyncio raises RuntimeError (after our headers went out).
                raise asyncio.SendfileNotAvailableError("sendfile(2) cannot encrypt")
            # The selector loop uses os.sendfile; loops without it (uvloop) raise at once.
            await asyncio.get_running_loop().sendfile(transport, fobj, offset, count, fallback=False)
        except (NotImplementedError, asyncio.SendfileNotAvailableError):
            fd, end = fobj.fileno(), offset + count
            position = offset
            while position < end:
                chunk = await asyncio.to_thread(_read_at, fd, position, min(CHUNK, end - position))
                if not chunk:
                    raise ConnectionResetError(f"{path.name} is shorter than expected") from None
                await response.write(chunk)
                position += len(chunk)
        await response.write_eof()
    finally:
        await asyncio.to_thread(fobj.close)
