"""Replication of large blobs (issue 14): a 1 GiB layer is copied with the replicator's memory flat, and a
replicator killed (SIGKILL) in the middle of a large copy is started again and the target converges.

The 1 GiB layer comes from a seeded generator (bench/data.py) and is never whole in memory, in the test either:
it is streamed into the source and checked at the target by digest and size (the target verifies the digest of
every upload). Both regions run with token auth."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.data import BlobSource
from services.core.auth.apikeys import generate_key
from services.core.client import ClientOptions, Credentials, OciClient, OciNotFoundError, RegistryOptions
from services.core.client import RemoteRepository as Remote
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName
from tests.integration.registry_process import EXECUTABLE, RegistryProcess, free_port, registry_process
from tests.integration.test_replication import MASTER_KEY, api, key_of, replicator_running, source_registry

GIB = 1024 * 1024 * 1024
RSS_GROWTH_LIMIT = 150 * 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


def token_auth_env(key: str) -> dict[str, str]:
    return {"HANZO_REGISTRY_AUTH__MODE": "token", "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": key}


class PeakRss:
    """The peak resident set size of this process (/proc/self/statm, sampled every 10 ms in a thread)."""

    def __init__(self) -> None:
        self.peak = self.start = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(0.01)

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


async def push_large_image(client: OciClient, repo: Remote, blob: BlobSource, tag: str) -> Digest:
    """Stream `blob` (chunked, never whole in memory) and a config, then the manifest under `tag`."""
    await client.push_blob(repo, blob.stream(), digest=Digest.parse(blob.digest), size=blob.size, method="chunked",
                           chunk_size=16 * 1024 * 1024, skip_existing=False)
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": blob.seed}).encode()
    await client.push_blob(repo, config, digest=Digest.of(config), skip_existing=False)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": str(Digest.of(config)), "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER_TAR_GZIP, "digest": blob.digest, "size": blob.size}],
    }).encode()
    return (await client.push_manifest(repo, manifest, reference=tag)).digest


async def resolves(client: OciClient, repo: Remote, tag: str, digest: Digest) -> bool:
    try:
        return (await client.resolve(repo, tag)).digest == digest
    except OciNotFoundError:
        return False


async def wait_until(what: str, check: object, *, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {within}s")


async def test_a_1_gib_layer_replicates_with_the_replicators_rss_flat(tmp_path: Path) -> None:
    """Embedded source with the replicator in this process; region B is its own process. The copy is chunked
    (replication.chunked_above_bytes), so the growth of this process's RSS during it stays far below 1 GiB."""
    b_key = generate_key().key
    blob = BlobSource(seed=14, size=GIB)
    with registry_process("embedded", tmp_path / "b", env=token_auth_env(b_key)) as b:
        async with source_registry("embedded", tmp_path / "a") as a:
            src_addr = f"{a.client.host}:{a.client.port}"
            options = ClientOptions(registries={src_addr: RegistryOptions(credentials=Credentials("admin", key_of(a))),
                                                b.addr: RegistryOptions(credentials=Credentials("admin", b_key))})
            async with OciClient(options) as client:
                source = Remote(src_addr, RepositoryName("team/huge"))
                target = Remote(b.addr, RepositoryName("team/huge"))
                digest = await push_large_image(client, source, blob, "v1")  # before the rule: not timed, not measured
                status, body = await api(a, "POST", "/v1/registry/admin/replication/rules", {
                    "name": "to-b", "repositories": "team/**", "target": {
                        "url": f"http://{b.addr}", "username": "admin", "password": b_key}, "mode": "periodic",
                    "schedule": "0 3 * * *"})  # a new periodic rule syncs at once
                assert status == 201, body
                with PeakRss() as rss:
                    async with replicator_running(a):
                        await wait_until("1 GiB image at B", lambda: resolves(client, target, "v1", digest),
                                         within=600)
                growth = rss.peak - rss.start
                print(f"\nRSS during the 1 GiB copy: start {rss.start / 2**20:.0f} MiB, peak {rss.peak / 2**20:.0f} "
                      f"MiB, growth {growth / 2**20:.0f} MiB")
                assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.0f} MiB during the copy"
                assert await client.blob_size(target, Digest.parse(blob.digest)) == GIB  # B verified its digest
                assert (await client.get_manifest(target, "v1")).content == \
                    (await client.get_manifest(source, "v1")).content


@contextlib.contextmanager
def replicator_process(source: RegistryProcess, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`hanzo-registry replicator` with the source's environment (same namespace), its ops port ready."""
    ops = free_port()
    env = {**source.env, "HANZO_REGISTRY_SERVER__OPS_ADDR": f"127.0.0.1:{ops}",
           # Small chunks: many PATCHes, so the copy is certainly under way when it is killed.
           "HANZO_REGISTRY_REPLICATION__CHUNKED_ABOVE_BYTES": str(1024 * 1024),
           "HANZO_REGISTRY_REPLICATION__CHUNK_BYTES": str(4 * 1024 * 1024)}
    with log.open("ab") as out:
        proc = subprocess.Popen([str(EXECUTABLE), "replicator"], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=source.data_dir)
    try:
        import http.client

        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", ops, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.s3
async def test_a_replicator_killed_mid_copy_resumes_after_a_restart(tmp_path: Path) -> None:
    """Distributed source (Kafka, FerretDB, SeaweedFS) with the replicator as its own process; SIGKILL while it
    uploads a 128 MiB layer to region B, start it again: B gets the image byte-exact, and the queue drains."""
    a_key, b_key = generate_key().key, generate_key().key
    blob = BlobSource(seed=1414, size=128 * 1024 * 1024)
    a_env = {**token_auth_env(a_key), "HANZO_REGISTRY_SIGNER__MASTER_KEY": MASTER_KEY,
             "HANZO_REGISTRY_REPLICATION__POLL_INTERVAL_SECONDS": "0.5",
             "HANZO_REGISTRY_REPLICATION__BACKOFF_INITIAL_SECONDS": "0.2"}
    with registry_process("embedded", tmp_path / "b", env=token_auth_env(b_key)) as b, \
            registry_process("distributed", tmp_path / "a", env=a_env) as a:
        options = ClientOptions(registries={a.addr: RegistryOptions(credentials=Credentials("admin", a_key)),
                                            b.addr: RegistryOptions(credentials=Credentials("admin", b_key))})
        async with OciClient(options) as client:
            source = Remote(a.addr, RepositoryName("team/big"))
            target = Remote(b.addr, RepositoryName("team/big"))
            status, body = await _post_rule(a.addr, a_key, {
                "name": "to-b", "repositories": "team/**", "mode": "event",
                "target": {"url": f"http://{b.addr}", "username": "admin", "password": b_key}})
            assert status == 201, body
            log = tmp_path / "replicator.log"
            with replicator_process(a, log) as first:
                before = tree_bytes(b.data_dir)
                digest = await push_large_image(client, source, blob, "v1")
                # Mid-copy: B has received part of the layer, not all of it, and not the tag.
                await wait_until("upload under way at B", _returns(lambda: tree_bytes(b.data_dir) - before > 8 << 20),
                                 within=120)
                first.send_signal(signal.SIGKILL)
                first.wait()
                assert not await resolves(client, target, "v1", digest), "the copy finished before the kill"
                assert tree_bytes(b.data_dir) - before < blob.size, "the layer was whole at B before the kill"
            with replicator_process(a, log):
                # The killed one's lease on the work runs out (engine.LEASE_SECONDS), then the new one copies it.
                await wait_until("image at B after the restart", lambda: resolves(client, target, "v1", digest),
                                 within=180)

                async def drained() -> bool:
                    status, body = await _get(a.addr, a_key, "/v1/registry/admin/replication")
                    rule = body["rules"][0]
                    return bool(status == 200 and rule["lag_events"] == 0 and rule["status"] == "ok")

                await wait_until("queue drained", drained, within=60)
            assert await client.blob_size(target, Digest.parse(blob.digest)) == blob.size
            sha, size = hashlib.sha256(), 0
            async for chunk in client.pull_blob(target, Digest.parse(blob.digest)):
                sha.update(chunk)
                size += len(chunk)
            assert (f"sha256:{sha.hexdigest()}", size) == (blob.digest, blob.size)


def _returns(fn: object) -> object:
    async def check() -> bool:
        return bool(fn())  # type: ignore[operator]

    return check


async def _post_rule(addr: str, key: str, rule: dict[str, object]) -> tuple[int, object]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
            f"http://{addr}/v1/registry/admin/replication/rules", json=rule,
            headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def _get(addr: str, key: str, path: str) -> tuple[int, dict[str, list[dict[str, object]]]]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(
            f"http://{addr}{path}", headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, await resp.json(content_type=None)
