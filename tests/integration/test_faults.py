"""Fault injection on the distributed assembly with private real servers (tests/integration/faults.py):
FerretDB, SeaweedFS and Kafka each stopped and started again during pushes and pulls, and kill -9 of a
distribution process mid-push. Every case ends with nothing lost or corrupted; while a dependency is down,
clients get 503 UNAVAILABLE with Retry-After and /readyz names it; after it is back a request succeeds
within 5 s. The table of cases and outcomes is docs/faults.md."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.faults import (
    PrivateFerretDB,
    PrivateKafka,
    PrivateSeaweedFS,
    PrivateServer,
    private_servers,
    registry_env,
)
from tests.integration.images import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, descriptor, digest_of
from tests.integration.registry_process import (
    EXECUTABLE,
    RegistryProcess,
    Response,
    _wait_ready,
    free_port,
    registry_process,
    request,
    stream_digest,
)

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.s3]

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

RECOVERY_SECONDS = 5.0
FAIL_FAST_SECONDS = 4.0  # connect/server-selection timeouts are 2 s; a 503 must not wait on a dead backend
Servers = tuple[PrivateFerretDB, PrivateSeaweedFS, PrivateKafka]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with private_servers(tmp_path_factory.mktemp("faults")) as started:
        yield started


@pytest.fixture
def reg(servers: Servers, tmp_path: Path) -> Iterator[RegistryProcess]:
    env = {**registry_env(*servers), "HANZO_REGISTRY_TELEMETRY__LOG_LEVEL": "INFO"}
    with registry_process("distributed", tmp_path, env=env) as process:
        yield process


# --- a small synchronous OCI client over registry_process.request ---------------------------------------


def push_blob(reg: RegistryProcess, repo: str, data: bytes) -> Response:
    """POST then PUT ?digest= (monolithic); the last response (201 on success)."""
    resp = request(reg.addr, "POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"}, timeout=30)
    if resp.status != 202:
        return resp
    location = resp.header("Location") or ""
    sep = "&" if "?" in location else "?"
    return request(reg.addr, "PUT", f"{location}{sep}digest={digest_of(data)}", body=data,
                   headers={"Content-Type": "application/octet-stream"}, timeout=30)


def image(tag: str, size: int = 4096) -> tuple[bytes, list[bytes]]:
    """(manifest, [config, layer]) of a small unique image."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag, "nonce": os.urandom(8).hex()}).encode()
    layer = os.urandom(size)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER_GZIP, layer)],
    }).encode()
    return manifest, [config, layer]


def push_image(reg: RegistryProcess, repo: str, tag: str) -> tuple[Response, bytes, list[bytes]]:
    manifest, blobs = image(tag)
    for blob in blobs:
        resp = push_blob(reg, repo, blob)
        if resp.status != 201:
            return resp, manifest, blobs
    resp = request(reg.addr, "PUT", f"/v2/{repo}/manifests/{tag}", body=manifest,
                   headers={"Content-Type": OCI_MANIFEST}, timeout=30)
    return resp, manifest, blobs


def assert_pullable(reg: RegistryProcess, repo: str, tag: str, manifest: bytes, blobs: list[bytes]) -> None:
    resp = request(reg.addr, "GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200 and resp.body == manifest, (resp.status, resp.body[:200])
    for blob in blobs:
        status, digest, size = stream_digest(reg.addr, f"/v2/{repo}/blobs/{digest_of(blob)}")
        assert (status, digest, size) == (200, digest_of(blob), len(blob))


def assert_unavailable(resp: Response, dependency: str) -> None:
    assert resp.status == 503, (resp.status, resp.body[:300])
    assert resp.header("Retry-After") == "5"
    if resp.body:
        error = json.loads(resp.body)["errors"][0]
        assert error["code"] == "UNAVAILABLE" and dependency in error["message"], error


def timed(call: Callable[[], Response]) -> tuple[Response, float]:
    started = time.monotonic()
    resp = call()
    return resp, time.monotonic() - started


def readiness(reg: RegistryProcess) -> tuple[int, list[str]]:
    resp = request(reg.addr, "GET", "/readyz", timeout=15)
    return resp.status, json.loads(resp.body).get("failures", [])


def recover(call: Callable[[], Response], expected: int, *, limit: float = RECOVERY_SECONDS) -> float:
    """Seconds until `call` answers `expected` (retrying every 0.2 s, as a client honouring a short
    Retry-After would); fails after `limit`."""
    started = time.monotonic()
    while True:
        resp = call()
        elapsed = time.monotonic() - started
        if resp.status == expected:
            print(f"recovered in {elapsed:.2f}s")
            return elapsed
        assert elapsed < limit, f"not recovered after {elapsed:.1f}s: {resp.status} {resp.body[:300]!r}"
        time.sleep(0.2)


def outage_log(reg: RegistryProcess, dependency: str) -> tuple[int, int, int]:
    """(WARNING 'is unavailable ... answering 503' lines, INFO 'is back' lines, tracebacks) for one dependency."""
    text = reg.log.read_text(errors="replace")
    went = sum(1 for line in text.splitlines() if f"{dependency} is unavailable" in line and "answering 503" in line)
    back = sum(1 for line in text.splitlines() if f"{dependency} is back after" in line)
    return went, back, text.count("Traceback (most recent call last)")


def kafka_values(bootstrap: str, topic: str) -> list[bytes]:
    """Every record value on `topic`, read from the start."""
    values: list[bytes] = []

    async def read() -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=3000)
            while batches:
                values.extend(r.value for records in batches.values() for r in records if r.value)
                batches = await consumer.getmany(timeout_ms=1000)
        finally:
            await consumer.stop()

    thread = threading.Thread(target=lambda: asyncio.run(read()))
    thread.start()
    thread.join(60)
    return values


def assert_events(reg: RegistryProcess, kafka: PrivateKafka, digests: list[str], *, within: float = 30.0) -> None:
    """Every manifest in `digests` has its ManifestPushed record on the manifests topic (at least once)."""
    topic = reg.env["HANZO_REGISTRY_TOPICS__MANIFESTS"]
    deadline = time.monotonic() + within
    while True:
        values = kafka_values(kafka.bootstrap, topic)
        missing = [d for d in digests if not any(d.encode() in v for v in values)]
        if not missing:
            return
        assert time.monotonic() < deadline, f"events never published for {missing} ({len(values)} records)"
        time.sleep(1)


# --- backend outages -----------------------------------------------------------------------------------


def outage_during_push_and_pull(reg: RegistryProcess, server: PrivateServer, dependency: str,
                                *, manifests_need_it: bool) -> list[str]:
    """The common script: content before, a chunked upload begun before the outage and finished after it,
    503s with Retry-After while down (fast), readiness, recovery within 5 s, content intact after. Returns
    the digests of the manifests pushed (for the event check)."""
    repo = f"faults/{server.name}"
    resp, before, before_blobs = push_image(reg, repo, "before")
    assert resp.status == 201, resp.body
    # a chunked upload in progress when the backend goes
    data = os.urandom(3 << 20)
    resp = request(reg.addr, "POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert resp.status == 202
    location = resp.header("Location") or ""
    resp = request(reg.addr, "PATCH", location, body=data[: 1 << 20],
                   headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{(1 << 20) - 1}"})
    assert resp.status == 202, resp.body
    location = resp.header("Location") or location

    server.stop(timeout=5)
    try:
        assert readiness(reg) == (503, [dependency])
        resp, seconds = timed(lambda: request(reg.addr, "POST", f"/v2/{repo}/blobs/uploads/",
                                              headers={"Content-Length": "0"}))
        assert_unavailable(resp, dependency)
        assert seconds < FAIL_FAST_SECONDS, f"503 took {seconds:.1f}s"
        resp = request(reg.addr, "PATCH", location, body=data[1 << 20:],
                       headers={"Content-Type": "application/octet-stream",
                                "Content-Range": f"{1 << 20}-{len(data) - 1}"})
        assert_unavailable(resp, dependency)
        if manifests_need_it:
            resp = request(reg.addr, "GET", f"/v2/{repo}/manifests/before", headers={"Accept": OCI_MANIFEST})
            assert_unavailable(resp, dependency)
            resp = request(reg.addr, "HEAD", f"/v2/{repo}/manifests/before", headers={"Accept": OCI_MANIFEST})
            assert resp.status == 503 and resp.header("Retry-After") == "5"
        resp = request(reg.addr, "GET", f"/v2/{repo}/blobs/{digest_of(before_blobs[1])}")
        assert_unavailable(resp, dependency)
    finally:
        server.start()
    back = time.monotonic()
    recover(lambda: request(reg.addr, "POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"}), 202)
    resp, after, after_blobs = push_image(reg, repo, "after")
    assert resp.status == 201, resp.body
    assert time.monotonic() - back < RECOVERY_SECONDS + 5, "the first push after the outage was slow"
    # the interrupted upload continues where the store says it is
    resp = request(reg.addr, "GET", location)
    assert resp.status == 204 and resp.header("Range") == f"0-{(1 << 20) - 1}", (resp.status, resp.header("Range"))
    resp = request(reg.addr, "PATCH", location, body=data[1 << 20:],
                   headers={"Content-Type": "application/octet-stream", "Content-Range": f"{1 << 20}-{len(data) - 1}"})
    assert resp.status == 202, resp.body
    location = resp.header("Location") or location
    sep = "&" if "?" in location else "?"
    resp = request(reg.addr, "PUT", f"{location}{sep}digest={digest_of(data)}", headers={"Content-Length": "0"})
    assert resp.status == 201, resp.body
    assert stream_digest(reg.addr, f"/v2/{repo}/blobs/{digest_of(data)}") == (200, digest_of(data), len(data))
    assert_pullable(reg, repo, "before", before, before_blobs)
    assert_pullable(reg, repo, "after", after, after_blobs)
    assert readiness(reg) == (200, [])
    return [digest_of(before), digest_of(after)]


def wait_outage_logged(reg: RegistryProcess, dependency: str) -> None:
    """One WARNING when it went, one INFO when it came back, no traceback."""
    deadline = time.monotonic() + 10
    while outage_log(reg, dependency)[1] < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    went, back, tracebacks = outage_log(reg, dependency)
    assert (went, back, tracebacks) == (1, 1, 0), reg.log_tail(80)


def test_metadata_store_stopped_and_restarted(reg: RegistryProcess, servers: Servers) -> None:
    ferret, _, kafka = servers
    digests = outage_during_push_and_pull(reg, ferret, "metadata", manifests_need_it=True)
    wait_outage_logged(reg, "metadata")
    assert_events(reg, kafka, digests)


def test_blob_storage_stopped_and_restarted(reg: RegistryProcess, servers: Servers) -> None:
    _, seaweed, kafka = servers
    digests = outage_during_push_and_pull(reg, seaweed, "blob storage", manifests_need_it=False)
    wait_outage_logged(reg, "blob storage")
    assert_events(reg, kafka, digests)


WINDOW_ANSWER_SECONDS = 8.0  # storage.blobs.control_timeout_seconds (5 s) + connect and backoff slack


def test_blob_storage_write_window_after_restart(reg: RegistryProcess, servers: Servers) -> None:
    """After a restart SeaweedFS answers reads within seconds but holds writes until its master is leader
    again (~15 s). Pushes in that window get 503 + Retry-After (the control calls' 5 s deadline) or succeed,
    none waits longer than a few seconds; a push succeeds within 5 s of the store taking writes again, and
    what was pushed before and during the window pulls intact."""
    _, seaweed, kafka = servers
    repo = "faults/window"
    resp, manifest, blobs = push_image(reg, repo, "before")
    assert resp.status == 201, resp.body
    pushed = [("before", manifest, blobs)]
    seaweed.stop(timeout=5)
    seaweed.start(ready=seaweed.readable)
    readable_at = time.monotonic()
    writable_at: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not seaweed.writable():
            time.sleep(0.2)
        writable_at.append(time.monotonic())

    watcher = threading.Thread(target=watch)
    watcher.start()
    outcomes: list[tuple[float, int, float]] = []  # (started after readable, status, seconds)
    try:
        while True:
            tag = f"window-{len(outcomes)}"
            started = time.monotonic()
            (resp, manifest, blobs), seconds = timed_push(reg, repo, tag)
            outcomes.append((started - readable_at, resp.status, seconds))
            if resp.status == 503:
                assert_unavailable(resp, "blob storage")
            else:
                assert resp.status == 201, (resp.status, resp.body[:300])
                pushed.append((tag, manifest, blobs))
            assert seconds < WINDOW_ANSWER_SECONDS, f"a push during the write window took {seconds:.1f}s"
            if writable_at:
                since = time.monotonic() - writable_at[0]
                if resp.status == 201:
                    print(f"a push succeeded {since:.2f}s after SeaweedFS took a write again")
                    break
                assert since < RECOVERY_SECONDS, f"no push succeeded within {since:.1f}s: {outcomes}"
            assert time.monotonic() < readable_at + 120, "SeaweedFS never took writes again"
            time.sleep(0.2)
    finally:
        stop.set()
        watcher.join()
    window = writable_at[0] - readable_at
    print(f"write window {window:.1f}s after reads answered; pushes (start s, status, seconds): "
          + ", ".join(f"{t:.1f}/{st}/{sec:.1f}" for t, st, sec in outcomes))
    if window > WINDOW_ANSWER_SECONDS:
        assert any(status == 503 for _, status, _ in outcomes), "a write window passed without a 503"
    for tag, manifest, blobs in pushed:
        assert_pullable(reg, repo, tag, manifest, blobs)
    assert outage_log(reg, "blob storage")[2] == 0, reg.log_tail(80)
    assert_events(reg, kafka, [digest_of(m) for _, m, _ in pushed])


def test_blob_storage_killed_mid_pull(reg: RegistryProcess, servers: Servers) -> None:
    """A blob GET streaming when S3 dies ends short of its Content-Length (never wrong bytes); after S3 is
    back, the client's Range resume completes the blob with the right digest."""
    _, seaweed, _ = servers
    repo = "faults/pull"
    data = os.urandom(48 << 20)
    assert push_blob(reg, repo, data).status == 201
    from tests.integration.registry_process import _connect

    conn, path = _connect(reg.addr, f"/v2/{repo}/blobs/{digest_of(data)}", 60)
    received = bytearray()
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(data)
        received += resp.read(1 << 20)
        seaweed.kill()
        try:
            while chunk := resp.read(1 << 20):
                received += chunk
        except OSError:  # the server ended the response short: http.client reports IncompleteRead
            pass
    finally:
        conn.close()
        if seaweed.proc is not None and seaweed.proc.poll() is not None:
            seaweed.start()
    assert bytes(received) == data[: len(received)], "the bytes served before the failure are the blob's"
    # (the registry may have had the whole blob buffered in flight: then nothing was cut)
    recover(lambda: request(reg.addr, "HEAD", f"/v2/{repo}/blobs/{digest_of(data)}"), 200)
    resp = request(reg.addr, "GET", f"/v2/{repo}/blobs/{digest_of(data)}",  # type: ignore[assignment]
                   headers={"Range": f"bytes={len(received)}-"})
    if len(received) < len(data):
        assert resp.status == 206 and bytes(received) + resp.body == data  # type: ignore[attr-defined]
    status, digest, size = stream_digest(reg.addr, f"/v2/{repo}/blobs/{digest_of(data)}")
    assert (status, digest, size) == (200, digest_of(data), len(data))


def test_event_log_stopped_and_restarted(reg: RegistryProcess, servers: Servers) -> None:
    """Pushes and pulls go on while Kafka is away (the outbox keeps the events); readiness says the event
    log is down; every event is published once it is back."""
    _, _, kafka = servers
    repo = "faults/kafka"
    pushed: list[tuple[str, bytes, list[bytes]]] = []
    resp, manifest, blobs = push_image(reg, repo, "before")
    assert resp.status == 201
    pushed.append(("before", manifest, blobs))
    kafka.stop(timeout=15)
    try:
        assert readiness(reg) == (503, ["event log"])
        for i in range(5):
            (resp, manifest, blobs), seconds = timed_push(reg, repo, f"during-{i}")
            assert resp.status == 201, resp.body
            assert seconds < FAIL_FAST_SECONDS * 2, f"a push waited {seconds:.1f}s on the event log"
            pushed.append((f"during-{i}", manifest, blobs))
        for tag, manifest, blobs in pushed:
            assert_pullable(reg, repo, tag, manifest, blobs)
    finally:
        kafka.start()
    recover(lambda: request(reg.addr, "GET", "/readyz", timeout=15), 200, limit=RECOVERY_SECONDS + 10)
    resp, manifest, blobs = push_image(reg, repo, "after")
    assert resp.status == 201
    pushed.append(("after", manifest, blobs))
    assert_events(reg, kafka, [digest_of(m) for _, m, _ in pushed], within=60)


def timed_push(reg: RegistryProcess, repo: str, tag: str) -> tuple[tuple[Response, bytes, list[bytes]], float]:
    started = time.monotonic()
    result = push_image(reg, repo, tag)
    return result, time.monotonic() - started


# --- kill -9 of a distribution process mid-push -----------------------------------------------------------


def second_replica(reg: RegistryProcess, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Another `hanzo-registry distribution` on the same stores (same namespace): (process, addr, log)."""
    port = free_port()
    data_dir = tmp_path / f"replica-{port}"
    data_dir.mkdir()
    env = {**reg.env, "HANZO_REGISTRY_ADDR": f"127.0.0.1:{port}", "HANZO_REGISTRY_DATA_DIR": str(data_dir)}
    log = data_dir / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(EXECUTABLE), "distribution"], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=data_dir)
    replica = RegistryProcess("distributed", f"127.0.0.1:{port}", proc, data_dir, log, env, reg.namespace)
    _wait_ready(replica)
    return proc, replica.addr, log


def test_distribution_killed_mid_push(reg: RegistryProcess, servers: Servers, tmp_path: Path) -> None:
    """kill -9 of the replica a push is streaming to: the client resumes the upload on the other replica
    from the offset the store reports; manifests pushed before the kill are intact and their events out."""
    _, _, kafka = servers
    repo = "faults/kill"
    proc, addr, _ = second_replica(reg, tmp_path)
    try:
        victim = RegistryProcess("distributed", addr, proc, reg.data_dir, reg.log, reg.env, reg.namespace)
        resp, manifest, blobs = push_image(victim, repo, "before-kill")
        assert resp.status == 201
        data = os.urandom(40 << 20)
        resp = request(addr, "POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
        assert resp.status == 202
        location = resp.header("Location") or ""
        first = 16 << 20
        resp = request(addr, "PATCH", location, body=data[:first],
                       headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{first - 1}"})
        assert resp.status == 202, resp.body
        location = resp.header("Location") or location
        # stream the rest slowly and kill -9 the replica mid-stream
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", int(addr.rpartition(":")[2]), timeout=30)
        conn.putrequest("PATCH", location)
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(len(data) - first))
        conn.endheaders()
        conn.send(data[first: first + (8 << 20)])
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # resume on the surviving replica from where the store says the upload is
    status = request(reg.addr, "GET", location)
    assert status.status == 204, status.body
    end = int((status.header("Range") or "0-0").rpartition("-")[2]) + 1
    assert first <= end <= len(data)
    resp = request(reg.addr, "PATCH", location, body=data[end:],
                   headers={"Content-Type": "application/octet-stream", "Content-Range": f"{end}-{len(data) - 1}"})
    assert resp.status == 202, resp.body
    location = resp.header("Location") or location
    sep = "&" if "?" in location else "?"
    resp = request(reg.addr, "PUT", f"{location}{sep}digest={digest_of(data)}", headers={"Content-Length": "0"})
    assert resp.status == 201, resp.body
    assert stream_digest(reg.addr, f"/v2/{repo}/blobs/{digest_of(data)}") == (200, digest_of(data), len(data))
    assert_pullable(reg, repo, "before-kill", manifest, blobs)
    assert_events(reg, kafka, [digest_of(manifest)])


# --- kill -9 of the scanner mid-scan and of GC mid-sweep ---------------------------------------------------
# (the replicator killed mid-copy is tests/integration/test_replication_large.py::
# test_a_replicator_killed_mid_copy_resumes_after_a_restart, on the distributed assembly too)


class ServiceProcess:
    """`hanzo-registry <service>` (scanner, gc) on the stores and topics of `reg`, with its own gRPC and ops
    ports; restartable after a kill -9."""

    def __init__(self, reg: RegistryProcess, service: str, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.service = service
        self.grpc_addr = f"127.0.0.1:{free_port()}"
        self.ops_addr = f"127.0.0.1:{free_port()}"
        self.data_dir = tmp_path / service
        self.data_dir.mkdir(exist_ok=True)
        self.log = self.data_dir / "service.log"
        self.env = {**reg.env, "HANZO_REGISTRY_SERVER__GRPC_ADDR": self.grpc_addr,
                    "HANZO_REGISTRY_SERVER__OPS_ADDR": self.ops_addr,
                    "HANZO_REGISTRY_DATA_DIR": str(self.data_dir), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(EXECUTABLE), self.service], env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.data_dir)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.tail()
            try:
                if request(self.ops_addr, "GET", "/readyz", timeout=2).status == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{self.service} not ready:\n{self.tail()}"
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.service} is not running:\n{self.tail()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


@contextlib.contextmanager
def service_process(reg: RegistryProcess, service: str, tmp_path: Path,
                    env: dict[str, str] | None = None) -> Iterator[ServiceProcess]:
    process = ServiceProcess(reg, service, tmp_path, env)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def metadata(reg: RegistryProcess, ferret: PrivateFerretDB) -> Any:
    """The registry's Mongo database on the private FerretDB (pymongo, synchronous)."""
    import pymongo

    client: Any = pymongo.MongoClient(ferret.uri, serverSelectionTimeoutMS=5000)
    return client[reg.env["HANZO_REGISTRY_METADATA__DATABASE"]]


def poll(what: str, check: Callable[[], bool], *, within: float, every: float = 0.02) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        time.sleep(every)


def big_tar_layer(size: int) -> bytes:
    """An uncompressed tar layer of one file of random bytes (slow enough to scan that a kill lands mid-scan)."""
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("opt/data/weights.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
        status = b"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\nArchitecture: amd64\n\n"
        info = tarfile.TarInfo("var/lib/dpkg/status")
        info.size = len(status)
        tar.addfile(info, io.BytesIO(status))
    return out.getvalue()


@pytest.mark.timeout(900)
def test_scanner_killed_mid_scan(reg: RegistryProcess, servers: Servers, tmp_path: Path) -> None:
    """kill -9 of the scanner while it scans a pushed image (its report says `scanning`): the image is intact;
    a restarted scanner gets the unacknowledged event again and finishes the scan (report complete over gRPC,
    ScanCompleted on the scans topic, SBOM referrer)."""
    import grpc

    from services.core.proto.hanzo.registry.v1 import scanner_pb2, scanner_pb2_grpc

    ferret, _, kafka = servers
    repo = "faults/scan"
    db = metadata(reg, ferret)
    with service_process(reg, "scanner", tmp_path) as scanner:
        layer = big_tar_layer(96 << 20)
        config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": descriptor(OCI_CONFIG, config),
                               "layers": [descriptor(OCI_LAYER, layer)]}).encode()
        for blob in (config, layer):
            assert push_blob(reg, repo, blob).status == 201
        resp = request(reg.addr, "PUT", f"/v2/{repo}/manifests/v1", body=manifest,
                       headers={"Content-Type": OCI_MANIFEST})
        assert resp.status == 201, resp.body
        rid = f"{repo}@{digest_of(manifest)}"
        poll("scan under way", lambda: (db.scan_reports.find_one({"_id": rid}) or {}).get("status") is not None,
             within=60)
        scanner.kill()
        report = db.scan_reports.find_one({"_id": rid})
        assert report["status"] == "scanning", f"the scan ended before the kill: {report['status']}"
        assert_pullable(reg, repo, "v1", manifest, [config, layer])
        scanner.start()
        poll("scan complete after the restart",
             lambda: (db.scan_reports.find_one({"_id": rid}) or {}).get("status") == "complete",
             within=120, every=0.5)
        with grpc.insecure_channel(scanner.grpc_addr) as channel:
            answer = scanner_pb2_grpc.ScannerStub(channel).GetReport(  # type: ignore[no-untyped-call]
                scanner_pb2.GetReportRequest(repository=repo, digest=digest_of(manifest)), timeout=10)
        assert answer.report.state == "complete" and answer.report.digest == digest_of(manifest)
        print(f"scanner log after the restart:\n{scanner.tail(5)}")
    resp = request(reg.addr, "GET", f"/v2/{repo}/referrers/{digest_of(manifest)}")
    assert resp.status == 200 and json.loads(resp.body)["manifests"], resp.body
    values = kafka_values(kafka.bootstrap, reg.env["HANZO_REGISTRY_TOPICS__SCANS"])
    assert any(digest_of(manifest).encode() in v for v in values), "no scan event for the image"
    assert_pullable(reg, repo, "v1", manifest, [config, layer])
    assert_events(reg, kafka, [digest_of(manifest)])


@pytest.mark.timeout(900)
def test_gc_killed_mid_sweep(reg: RegistryProcess, servers: Servers, tmp_path: Path) -> None:
    """kill -9 of the gc service while its run deletes garbage (some of the orphaned blob links gone, not
    all): no live blob, manifest or tag is touched; once the dead run's leases run out, the next run (after a
    restart) records it as failed, finishes the deletions it had claimed, completes, and leaves exactly the
    garbage gone."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from minio import Minio

    from services.core.proto.hanzo.registry.v1 import gc_pb2, gc_pb2_grpc
    from tests.integration.faults import S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY

    ferret, seaweed, kafka = servers
    live_repo, garbage_repo = "faults/gc-live", "faults/gc-garbage"
    db = metadata(reg, ferret)
    live = []
    for i in range(3):
        resp, manifest, blobs = push_image(reg, live_repo, f"v{i}")
        assert resp.status == 201, resp.body
        live.append((f"v{i}", manifest, blobs))
    shared = live[0][2][1]  # a live layer also pushed, unreferenced, to the garbage repository
    garbage = [os.urandom(1024) for _ in range(300)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda b: push_blob(reg, garbage_repo, b).status, [*garbage, shared]))
    assert statuses == [201] * (len(garbage) + 1)
    links = len(garbage) + 1
    assert db.blob_links.count_documents({"repository": garbage_repo}) == links

    env = {"HANZO_REGISTRY_GC__ENABLED": "false", "HANZO_REGISTRY_GC__SETTLE_SECONDS": "0.5"}
    request_run = gc_pb2.TriggerRunRequest(dry_run=False, grace_seconds=0, trigger=gc_pb2.GC_TRIGGER_API)
    with service_process(reg, "gc", tmp_path, env) as gc:
        with grpc.insecure_channel(gc.grpc_addr) as channel:
            first = gc_pb2_grpc.GcStub(channel).TriggerRun(request_run, timeout=10)  # type: ignore[no-untyped-call]
        assert first.started
        poll("sweep under way",
             lambda: db.blob_links.count_documents({"repository": garbage_repo}) < links, within=60, every=0.01)
        gc.kill()
        left = db.blob_links.count_documents({"repository": garbage_repo})
        print(f"killed with {left} of {links} garbage links left")
        assert 0 < left < links, f"the sweep was not under way at the kill ({left} of {links} links left)"
        for tag, manifest, blobs in live:
            assert_pullable(reg, live_repo, tag, manifest, blobs)
        deleting = db.gc_marks.count_documents({"state": "deleting", "run": first.run_id})
        print(f"the dead run left {deleting} blobs `deleting`")
        # The dead run's leases run out: the run lease (services/gc/runs.py, LEASE_SECONDS = 120 s) and the
        # `until` of the marks it had claimed (services/gc/sweep.py, CLAIM_SECONDS = 60 s). Done here through
        # their clock fields rather than by waiting; what the next run does then is what is under test.
        db.leases.update_one({"_id": "gc-run"}, {"$set": {"expires": 0.0}})
        db.gc_marks.update_many({"run": first.run_id, "state": "deleting"}, {"$set": {"until": 0.0}})
        gc.start()
        with grpc.insecure_channel(gc.grpc_addr) as channel:
            stub = gc_pb2_grpc.GcStub(channel)  # type: ignore[no-untyped-call]
            second = stub.TriggerRun(request_run, timeout=10)
            assert second.started and second.run_id != first.run_id

            def run(run_id: str) -> Any:
                return stub.GetRun(gc_pb2.GetRunRequest(run_id=run_id), timeout=30).run

            try:
                poll("second run finished", lambda: run(second.run_id).state != gc_pb2.GC_RUN_STATE_RUNNING,
                     within=180, every=0.5)
            except (AssertionError, grpc.RpcError):
                print(gc.tail())
                raise
            assert run(second.run_id).state == gc_pb2.GC_RUN_STATE_SUCCEEDED, run(second.run_id)
            assert run(first.run_id).state == gc_pb2.GC_RUN_STATE_FAILED, run(first.run_id)
    # Every garbage link is gone but the shared blob's: a blob some kept manifest references is not garbage,
    # and GC keeps all its links (services/gc/sweep.py, _plan_blobs).
    left_links = [d["digest"] for d in db.blob_links.find({"repository": garbage_repo})]
    assert left_links == [digest_of(shared)], left_links
    for blob in garbage:
        assert request(reg.addr, "HEAD", f"/v2/{garbage_repo}/blobs/{digest_of(blob)}").status == 404
    assert stream_digest(reg.addr, f"/v2/{garbage_repo}/blobs/{digest_of(shared)}")[1] == digest_of(shared)
    s3 = Minio(seaweed.endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False)
    stored = {o.object_name.rsplit("/", 1)[-1] for o in s3.list_objects(S3_BUCKET, prefix=f"{reg.namespace}/",
                                                                           recursive=True) if o.object_name}
    assert not {digest_of(b).split(":")[1] for b in garbage} & stored, "garbage blobs left in S3"
    for tag, manifest, blobs in live:
        assert_pullable(reg, live_repo, tag, manifest, blobs)
    assert_events(reg, kafka, [digest_of(m) for _, m, _ in live])
