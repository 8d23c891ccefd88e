"""A real `hanzo-registry` process per assembly on a free loopback port, for tests that drive real clients."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from minio import Minio

from tests.conftest import infra

ROOT = Path(__file__).resolve().parents[2]
EXECUTABLE = ROOT / ".venv" / "bin" / "hanzo-registry"
TOPICS = ("manifests", "tags", "blobs", "scans", "signatures", "replication", "gc", "audit")
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

DISTRIBUTED_MARKS = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.s3]
ASSEMBLIES = ["embedded", pytest.param("distributed", marks=DISTRIBUTED_MARKS)]
if os.environ.get("HANZO_TEST_ASSEMBLIES"):
    _wanted = os.environ["HANZO_TEST_ASSEMBLIES"].split(",")
    ASSEMBLIES = [a for a in ASSEMBLIES if (a if isinstance(a, str) else a.values[0]) in _wanted]  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def distributed_env(namespace: str) -> dict[str, str]:
    """What `scripts/distributed_env.sh <namespace>` exports, read from infra.env."""
    database = "hanzo_registry_" + re.sub(r"[^a-zA-Z0-9]", "_", namespace)
    env = {
        "HANZO_REGISTRY_METADATA__KIND": "mongo",
        "HANZO_REGISTRY_METADATA__URI": infra("HANZO_TEST_MONGO_URI"),
        "HANZO_REGISTRY_METADATA__DATABASE": database,
        "HANZO_REGISTRY_STORAGE__BLOBS__KIND": "s3",
        "HANZO_REGISTRY_STORAGE__BLOBS__ENDPOINT": infra("HANZO_TEST_S3_ENDPOINT"),
        "HANZO_REGISTRY_STORAGE__BLOBS__ACCESS_KEY": infra("HANZO_TEST_S3_ACCESS_KEY"),
        "HANZO_REGISTRY_STORAGE__BLOBS__SECRET_KEY": infra("HANZO_TEST_S3_SECRET_KEY"),
        "HANZO_REGISTRY_STORAGE__BLOBS__BUCKET": infra("HANZO_TEST_S3_BUCKET"),
        "HANZO_REGISTRY_STORAGE__BLOBS__PREFIX": namespace,
        "HANZO_REGISTRY_EVENTS__KIND": "kafka",
        "HANZO_REGISTRY_EVENTS__BOOTSTRAP_SERVERS": infra("HANZO_TEST_KAFKA"),
    }
    for topic in TOPICS:
        env[f"HANZO_REGISTRY_TOPICS__{topic.upper()}"] = f"{namespace}.registry.{topic}"
    return env


@dataclass
class RegistryProcess:
    assembly: str
    addr: str
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    env: dict[str, str]
    namespace: str | None = None

    @property
    def host(self) -> str:
        return self.addr.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.addr.rpartition(":")[2])

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _get(addr: str, path: str, timeout: float = 2.0) -> int:
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _wait_ready(reg: RegistryProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if reg.proc.poll() is not None:
            raise RuntimeError(f"registry ({reg.assembly}) exited with {reg.proc.returncode}:\n{reg.log_tail()}")
        with contextlib.suppress(OSError):
            if _get(reg.addr, "/readyz") == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"registry ({reg.assembly}) not ready after {READY_TIMEOUT}s:\n{reg.log_tail()}")


def _run_async(coro_factory: object) -> None:
    """Run a coroutine to completion in a fresh thread (a pytest-asyncio loop may be running here)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro_factory())  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if errors:
        raise errors[0]


def minio_client() -> Minio:
    return Minio(
        infra("HANZO_TEST_S3_ENDPOINT"),
        access_key=infra("HANZO_TEST_S3_ACCESS_KEY"),
        secret_key=infra("HANZO_TEST_S3_SECRET_KEY"),
        region=infra("HANZO_TEST_S3_REGION"),
        secure=False,
    )


def s3_objects(prefix: str) -> list[tuple[str, int]]:
    """(key, size) of every object under `prefix/` in the test bucket."""
    client = minio_client()
    bucket = infra("HANZO_TEST_S3_BUCKET")
    return [
        (obj.object_name, int(obj.size or 0))
        for obj in client.list_objects(bucket, prefix=prefix.rstrip("/") + "/", recursive=True)
        if obj.object_name
    ]


def cleanup_distributed(env: Mapping[str, str], namespace: str) -> None:
    """Drop the Mongo database, the S3 objects under the prefix and the Kafka topics of `namespace`."""
    import pymongo
    from minio.deleteobjects import DeleteObject

    problems: list[str] = []
    try:
        mongo: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            env["HANZO_REGISTRY_METADATA__URI"], serverSelectionTimeoutMS=5000
        )
        try:
            mongo.drop_database(env["HANZO_REGISTRY_METADATA__DATABASE"])
        finally:
            mongo.close()
    except Exception as exc:
        problems.append(f"mongo: {exc!r}")
    try:
        client = minio_client()
        bucket = env["HANZO_REGISTRY_STORAGE__BLOBS__BUCKET"]
        keys = [DeleteObject(key) for key, _ in s3_objects(namespace)]
        if keys:
            errors = list(client.remove_objects(bucket, keys))
            if errors:
                problems.append(f"s3: {errors[0]}")
    except Exception as exc:
        problems.append(f"s3: {exc!r}")

    async def drop_topics() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=env["HANZO_REGISTRY_EVENTS__BOOTSTRAP_SERVERS"])
        await admin.start()
        try:
            ours = [t for t in await admin.list_topics() if t.startswith(f"{namespace}.")]
            if ours:
                await admin.delete_topics(ours)
        finally:
            await admin.close()

    try:
        _run_async(drop_topics)
    except Exception as exc:
        problems.append(f"kafka: {exc!r}")
    if problems:
        raise AssertionError(f"cleanup of {namespace} left things behind: {problems}")


@contextlib.contextmanager
def registry_process(
    assembly: str, tmp_dir: Path, *, env: Mapping[str, str] | None = None
) -> Iterator[RegistryProcess]:
    """Start `hanzo-registry serve` (embedded) or `hanzo-registry distribution` (distributed) on a free
    port, wait for /readyz, yield it; then SIGTERM and require exit code 0 within 15 s, and clean up."""
    port = free_port()
    data_dir = tmp_dir / f"registry-{assembly}-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HANZO_REGISTRY_")},
        "HANZO_REGISTRY_DATA_DIR": str(data_dir),
        "HANZO_REGISTRY_ADDR": f"127.0.0.1:{port}",
        "HANZO_REGISTRY_AUTH__MODE": "none",
        "HANZO_REGISTRY_TELEMETRY__LOG_LEVEL": os.environ.get("HANZO_TEST_REGISTRY_LOG_LEVEL", "WARNING"),
        "HANZO_REGISTRY_TELEMETRY__LOG_FORMAT": "text",
    }
    namespace = None
    if assembly == "embedded":
        command = "serve"
    elif assembly == "distributed":
        command = "distribution"
        namespace = f"itest-{uuid.uuid4().hex[:10]}"
        full_env.update(distributed_env(namespace))
    else:
        raise ValueError(f"unknown assembly {assembly}")
    full_env.update(env or {})
    log = data_dir / "registry.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [str(EXECUTABLE), command],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
        )
    reg = RegistryProcess(assembly, f"127.0.0.1:{port}", proc, data_dir, log, full_env, namespace)
    try:
        _wait_ready(reg)
        yield reg
    finally:
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                started = time.monotonic()
                try:
                    code = proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise AssertionError(
                        f"registry ({assembly}) did not stop within {STOP_TIMEOUT}s of SIGTERM:\n{reg.log_tail()}"
                    ) from None
                assert code == 0, f"registry ({assembly}) exited with {code} after SIGTERM:\n{reg.log_tail()}"
                assert time.monotonic() - started < STOP_TIMEOUT
            else:
                raise AssertionError(f"registry ({assembly}) died early ({proc.returncode}):\n{reg.log_tail()}")
        finally:
            if namespace is not None:
                cleanup_distributed(full_env, namespace)


# --- a tiny synchronous HTTP client (http.client: no redirects followed, streams bodies) ---


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def _connect(addr_or_url: str, path: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection to `addr` (host:port), with `path`; or to a full http:// URL's host, with its path."""
    if addr_or_url.startswith("http://"):
        parts = urlsplit(addr_or_url)
        netloc, path = parts.netloc, parts.path + (f"?{parts.query}" if parts.query else "")
    else:
        netloc = addr_or_url
    host, _, port = netloc.rpartition(":")
    return http.client.HTTPConnection(host, int(port), timeout=timeout), path


def request(
    addr_or_url: str,
    method: str,
    path: str = "",
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Response:
    """One request to `addr` (host:port) + `path`, or to a full http:// URL when `path` is empty."""
    conn, path = _connect(addr_or_url, path, timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def stream_digest(
    addr_or_url: str, path: str = "", *, headers: Mapping[str, str] | None = None
) -> tuple[int, str, int]:
    """GET and hash the body while reading it: (status, sha256 digest, size)."""
    conn, path = _connect(addr_or_url, path, 120)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        sha, size = hashlib.sha256(), 0
        while chunk := resp.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
        return resp.status, "sha256:" + sha.hexdigest(), size
    finally:
        conn.close()
