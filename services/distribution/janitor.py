"""Removes upload sessions nobody finished: their bytes and their metadata record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from services.core.storage.blobs import BlobStore
from services.core.storage.meta import MetadataStore

log = logging.getLogger(__name__)


class UploadJanitor:
    def __init__(self, blobs: BlobStore, meta: MetadataStore, *, expiry_seconds: float, every_seconds: float = 600.0):
        self._blobs = blobs
        self._meta = meta
        self._expiry = expiry_seconds
        self._every = every_seconds

    async def sweep(self, *, now: float | None = None) -> int:
        """Abort every session idle for longer than the expiry. Returns how many went."""
        cutoff = (now if now is not None else time.time()) - self._expiry
        removed = 0
        async for upload_id, modified in self._blobs.iter_uploads():
            if modified < cutoff:
                await self._blobs.abort(upload_id)
                await self._meta.delete_upload(upload_id)
                removed += 1
        if removed:
            log.info("removed %d abandoned upload session(s)", removed)
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception as exc:  # the next sweep tries again
                log.warning("upload janitor: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._every):
                    await stop.wait()
