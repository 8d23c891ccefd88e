"""HTTP as clients really speak it: a client that half-closes its socket after the request still gets
its answer, on every kind of route (issue: no answer on /v2/<name>/... routes)."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import Assembly
from tests.integration.oci import push_image


async def _half_closed(assembly: Assembly, method: str, path: str) -> bytes:
    server = assembly.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()
    writer.write_eof()  # shutdown(SHUT_WR): the request is all there is
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    return answer


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v2/", 200),
    ("GET", "/v2/_catalog", 200),
    ("GET", "/v2/hygiene/app/tags/list", 200),
    ("GET", "/v2/hygiene/app/manifests/v1", 200),
    ("HEAD", "/v2/hygiene/app/manifests/v1", 200),
    ("GET", "/v2/hygiene/none/manifests/v1", 404),
    ("POST", "/v2/hygiene/app/blobs/uploads/", 202),
    ("GET", "/healthz", 200),
])
async def test_a_half_closed_request_is_answered(assembly: Assembly, method: str, path: str, status: int) -> None:
    await push_image(assembly.client, "hygiene/app", "v1")
    answer = await _half_closed(assembly, method, path)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
