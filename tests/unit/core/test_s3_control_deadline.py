"""The S3 store's control calls have a deadline: against an S3 that accepts connections and never answers
(SeaweedFS holding writes after a restart), starting an upload fails within `control_timeout_seconds` as a
blob-storage outage (503 + Retry-After upstream), instead of waiting for the 120 s blob read timeout."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from services.core.outages import BLOBS, outage_of
from services.core.settings import S3BlobSettings
from services.core.storage.s3 import S3BlobStore


@pytest.fixture
def silent_s3() -> Iterator[str]:
    """host:port of a server that reads requests and never answers them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def settings(endpoint: str, **extra: object) -> S3BlobSettings:
    return S3BlobSettings.model_validate(
        {"kind": "s3", "endpoint": endpoint, "access_key": "a", "secret_key": "b", **extra}
    )


def test_start_upload_fails_fast_as_blob_storage_outage(silent_s3: str) -> None:
    store = S3BlobStore(settings(silent_s3, control_timeout_seconds=0.5, retries=2))

    async def start() -> BaseException:
        try:
            await store.start_upload()
        except Exception as exc:
            return exc
        finally:
            await store.close()
        raise AssertionError("start_upload succeeded against a silent S3")

    started = time.monotonic()
    exc = asyncio.run(start())
    elapsed = time.monotonic() - started
    assert outage_of(exc) == BLOBS, repr(exc)
    # one attempt of 0.5 s: a read timeout is not retried on the control pool
    assert elapsed < 2.0, f"took {elapsed:.1f}s"


def test_blob_transfers_keep_the_long_read_timeout() -> None:
    store = S3BlobStore(settings("127.0.0.1:9", control_timeout_seconds=3, read_timeout_seconds=120))
    assert store._control_http.connection_pool_kw["timeout"].read_timeout == 3
    assert store._http.connection_pool_kw["timeout"].read_timeout == 120
    assert store._control_http.connection_pool_kw["retries"].read == 0
    asyncio.run(store.close())
