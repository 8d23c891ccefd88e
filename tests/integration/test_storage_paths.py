"""Blob data paths of a real registry process: sendfile and Range on the filesystem, presigned redirects and
multipart assembly on S3, each checked against the digest of the bytes that come back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import infra
from tests.integration.images import digest_of
from tests.integration.registry_process import (
    RegistryProcess,
    registry_process,
    request,
    s3_objects,
    stream_digest,
)
from tests.integration.registry_process import request as http

MiB = 1 << 20
BIG = 64 * MiB
CHUNK = 8 * MiB


def big_blob() -> bytes:
    """64 MiB that are cheap to make but not all alike (a repeated random MiB, each copy stamped)."""
    unit = bytearray(os.urandom(MiB))
    parts = []
    for i in range(BIG // MiB):
        unit[:8] = i.to_bytes(8, "big")
        parts.append(bytes(unit))
    return b"".join(parts)


def push_monolithic(reg: RegistryProcess, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    resp = request(reg.addr, "POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert resp.status == 202, resp.body
    location = resp.header("Location")
    assert location
    sep = "&" if "?" in location else "?"
    resp = request(
        reg.addr,
        "PUT",
        f"{location}{sep}digest={digest}",
        body=data,
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )
    assert resp.status == 201, resp.body
    return digest


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[RegistryProcess]:
    with registry_process("embedded", tmp_path) as reg:
        yield reg


@pytest.fixture
def distributed_redirect(tmp_path: Path) -> Iterator[RegistryProcess]:
    with registry_process("distributed", tmp_path, env={"HANZO_REGISTRY_STORAGE__REDIRECT": "true"}) as reg:
        yield reg


@pytest.fixture
def distributed_plain(tmp_path: Path) -> Iterator[RegistryProcess]:
    with registry_process("distributed", tmp_path) as reg:
        yield reg


def test_embedded_blob_get_is_served_from_the_file_with_ranges(embedded: RegistryProcess) -> None:
    data = big_blob()
    digest = push_monolithic(embedded, "paths/big", data)
    path = f"/v2/paths/big/blobs/{digest}"

    head = request(embedded.addr, "HEAD", path)
    assert head.status == 200
    assert head.header("Content-Length") == str(BIG)
    assert head.header("Accept-Ranges") == "bytes"
    assert head.header("ETag") == f'"{digest}"'

    status, got, size = stream_digest(embedded.addr, path)
    assert (status, got, size) == (200, digest, BIG)

    cases = {
        "bytes=0-99": (0, 100),
        f"bytes={BIG - 1000}-": (BIG - 1000, BIG),
        "bytes=-4096": (BIG - 4096, BIG),
        f"bytes={5 * MiB - 3}-{9 * MiB + 2}": (5 * MiB - 3, 9 * MiB + 3),  # across internal read chunks
        f"bytes={BIG - 10}-{BIG + 100}": (BIG - 10, BIG),  # past-EOF end is clipped
    }
    for header, (start, end) in cases.items():
        resp = request(embedded.addr, "GET", path, headers={"Range": header})
        assert resp.status == 206, (header, resp.status)
        assert resp.header("Content-Range") == f"bytes {start}-{end - 1}/{BIG}", header
        assert resp.body == data[start:end], header
    resp = request(embedded.addr, "GET", path, headers={"Range": f"bytes={BIG}-"})
    assert resp.status == 416
    assert resp.header("Content-Range") == f"bytes */{BIG}"


@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.s3
@pytest.mark.client
def test_distributed_blob_get_redirects_to_presigned_url(distributed_redirect: RegistryProcess) -> None:
    reg = distributed_redirect
    data = os.urandom(3 * MiB + 17)
    digest = push_monolithic(reg, "paths/redirect", data)
    path = f"/v2/paths/redirect/blobs/{digest}"

    resp = request(reg.addr, "GET", path)
    assert resp.status == 307, resp.body
    assert resp.header("Docker-Content-Digest") == digest
    location = resp.header("Location")
    assert location and location.startswith("http://") and "X-Amz-Signature=" in location, location
    fetched = request(location, "GET")
    assert fetched.status == 200
    assert fetched.body == data
    assert digest_of(fetched.body) == digest
    # a ranged GET on the presigned URL is served by S3 too
    ranged = request(location, "GET", headers={"Range": "bytes=100-199"})
    assert (ranged.status, ranged.body) == (206, data[100:200])
    # HEAD is answered by the registry itself
    head = request(reg.addr, "HEAD", path)
    assert (head.status, head.header("Content-Length")) == (200, str(len(data)))
    # and a real client follows the redirect
    blob = subprocess.run(
        [infra("HANZO_TOOL_CRANE"), "blob", "--insecure", f"{reg.addr}/paths/redirect@{digest}"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert blob.returncode == 0, blob.stderr.decode(errors="replace")
    assert blob.stdout == data


@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.s3
def test_distributed_chunked_upload_lands_as_one_blob(distributed_plain: RegistryProcess) -> None:
    reg = distributed_plain
    assert reg.namespace is not None
    data = big_blob()
    digest = digest_of(data)
    repo = "paths/chunked"

    resp = request(reg.addr, "POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert resp.status == 202
    location = resp.header("Location")
    assert location
    for start in range(0, BIG, CHUNK):
        chunk = data[start : start + CHUNK]
        resp = request(
            reg.addr,
            "PATCH",
            location,
            body=chunk,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(chunk) - 1}",
                "Content-Length": str(len(chunk)),
            },
        )
        assert resp.status == 202, resp.body
        assert resp.header("Range") == f"0-{start + len(chunk) - 1}"
        location = resp.header("Location") or location
    sep = "&" if "?" in location else "?"
    resp = request(reg.addr, "PUT", f"{location}{sep}digest={digest}", headers={"Content-Length": "0"})
    assert resp.status == 201, resp.body
    assert resp.header("Docker-Content-Digest") == digest

    head = request(reg.addr, "HEAD", f"/v2/{repo}/blobs/{digest}")
    assert (head.status, head.header("Content-Length")) == (200, str(BIG))
    status, got, size = stream_digest(reg.addr, f"/v2/{repo}/blobs/{digest}")
    assert (status, got, size) == (200, digest, BIG)

    # one complete object under the blob key, and the upload session is gone
    objects = dict(s3_objects(reg.namespace))
    hex_ = digest.removeprefix("sha256:")
    assert objects.get(f"{reg.namespace}/blobs/sha256/{hex_[:2]}/{hex_}") == BIG, objects
    assert not [k for k in objects if k.startswith(f"{reg.namespace}/uploads/")], objects
    assert hashlib.sha256(data).hexdigest() == hex_


@pytest.mark.parametrize("which", ["embedded", pytest.param("distributed_plain", marks=[pytest.mark.s3])])
def test_blob_etag_is_the_digest_and_revalidates(which: str, request: pytest.FixtureRequest) -> None:
    reg: RegistryProcess = request.getfixturevalue(which)
    digest = push_monolithic(reg, "paths/etag", b"hello etag")
    head = http(reg.addr, "HEAD", f"/v2/paths/etag/blobs/{digest}")
    assert head.status == 200
    assert head.header("ETag") == f'"{digest}"'
    again = http(reg.addr, "GET", f"/v2/paths/etag/blobs/{digest}", headers={"If-None-Match": f'"{digest}"'})
    assert again.status == 304


def _kafka_topics(prefix: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    async def topics() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=infra("HANZO_TEST_KAFKA"))
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if t.startswith(prefix)]
        finally:
            await admin.close()

    return asyncio.run(topics())


@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.s3
def test_distributed_process_leaves_nothing_behind(tmp_path: Path) -> None:
    """The fixture itself: after SIGTERM (exit 0) the database, the S3 prefix and the topics are gone."""
    import pymongo

    mongo: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(infra("HANZO_TEST_MONGO_URI"))
    try:
        with registry_process("distributed", tmp_path) as reg:
            namespace, database = reg.namespace, reg.env["HANZO_REGISTRY_METADATA__DATABASE"]
            assert namespace is not None
            config = push_monolithic(reg, "paths/cleanup", b"{}")
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
                    "layers": [],
                }
            ).encode()
            resp = request(
                reg.addr,
                "PUT",
                "/v2/paths/cleanup/manifests/v1",
                body=manifest,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            )
            assert resp.status == 201, resp.body
            deadline = time.monotonic() + 20
            while not _kafka_topics(f"{namespace}.") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _kafka_topics(f"{namespace}."), "the outbox relay published nothing"
            assert database in mongo.list_database_names()
            assert s3_objects(namespace)
        assert database not in mongo.list_database_names()
        assert s3_objects(namespace) == []
        deadline = time.monotonic() + 20  # topic deletion completes asynchronously on the broker
        while _kafka_topics(f"{namespace}.") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _kafka_topics(f"{namespace}.") == []
    finally:
        mongo.close()
