"""The four registries under test as child processes: start on free loopback ports, wait, measure, stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from minio import Minio

ROOT = Path(__file__).resolve().parent.parent
TOOLS_ENV = Path.home() / ".cache/hanzo-registry/infra/run/tools.env"
TARGETS = ("embedded", "distributed", "distribution", "distribution-s3")
S3_CHUNK_SIZE = 16 * 1024 * 1024
"""Distribution's s3 `chunksize` (its default is 10 MiB): our S3 store's default part size."""
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a registry never outlives a killed benchmark.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def docker_registry_binary() -> str:
    path = os.environ.get("HANZO_TOOL_DOCKER_REGISTRY")
    if not path and TOOLS_ENV.exists():
        for line in TOOLS_ENV.read_text().splitlines():
            if line.startswith("HANZO_TOOL_DOCKER_REGISTRY="):
                path = line.split("=", 1)[1].strip()
    path = path or shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(path).exists():
        raise RuntimeError(f"CNCF Distribution not found at {path}: run `make tools`")
    return path


def distributed_env(namespace: str) -> dict[str, str]:
    """The environment scripts/distributed_env.sh exports for `namespace`."""
    out = subprocess.run(
        ["bash", "-c", f'source scripts/distributed_env.sh "{namespace}" && env -0'],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


# process-tree accounting from /proc


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return pids


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def hwm_bytes(pid: int) -> int:
    return _status_kib(pid, "VmHWM:") * 1024


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / TICKS


class RssSampler:
    """Samples the summed VmRSS of a process tree every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        pids, refreshed = tree(self.pid), time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - refreshed > 1.0:
                pids, refreshed = tree(self.pid), time.monotonic()
            self.peak = max(self.peak, rss_bytes(pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Target:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    workdir: Path
    namespace: str | None = None
    """The distributed target's namespace: Mongo database, S3 prefix and Kafka topics to drop afterwards."""
    s3_prefix: str | None = None
    """The distribution-s3 target's S3 prefix (its `rootdirectory`) to delete afterwards, in the bucket of `s3`."""
    s3: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child until it exits
        self.proc = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with session.get(f"{self.base}/v2/", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return
                        last = f"HTTP {r.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = repr(exc)
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def new_namespace() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def _distribution_config(addr: str, storage: str) -> str:
    """Distribution 2.8's config.yml: `storage` is the driver section (indented by 2), the rest is shared."""
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"{storage}"
        "  cache:\n    blobdescriptor: inmemory\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: {addr}\n"
    )


def make_target(name: str, root: Path, namespace: str | None = None, *, mongo_uri: str | None = None) -> Target:
    """`namespace` (default: a new one) names the S3 prefix, database and topics of the S3-backed targets;
    `mongo_uri` replaces infra.env's MongoDB (FerretDB) for the distributed target, e.g. a second FerretDB on
    another backend (deploy/local/README.md)."""
    namespace = namespace or new_namespace()
    workdir = root / name
    workdir.mkdir(parents=True)
    port = free_port()
    addr = f"127.0.0.1:{port}"
    venv_bin = ROOT / ".venv" / "bin"
    hanzo = [str(venv_bin / "hanzo-registry")]
    common = {
        "HANZO_REGISTRY_ADDR": addr,
        "HANZO_REGISTRY_DATA_DIR": str(workdir / "data"),
        "HANZO_REGISTRY_AUTH__MODE": "none",
        "HANZO_REGISTRY_TELEMETRY__LOG_LEVEL": "WARNING",
    }
    if name == "embedded":
        env = {k: v for k, v in os.environ.items() if not k.startswith("HANZO_REGISTRY_")}
        return Target(name, [*hanzo, "serve"], {**env, **common}, port, workdir)
    if name == "distributed":
        env = {k: v for k, v in distributed_env(namespace).items()}
        if mongo_uri:
            env["HANZO_REGISTRY_METADATA__URI"] = mongo_uri
        return Target(name, [*hanzo, "distribution"], {**env, **common}, port, workdir, namespace=namespace)
    if name == "distribution":
        config = workdir / "config.yml"
        config.write_text(_distribution_config(addr, f"  filesystem:\n    rootdirectory: {workdir / 'storage'}\n"))
        return Target(name, [docker_registry_binary(), "serve", str(config)], dict(os.environ), port, workdir)
    if name == "distribution-s3":
        # The S3 endpoint, keys and bucket of the distributed target, under a prefix of its own.
        s3 = _s3_settings(distributed_env(namespace))
        prefix = f"{namespace}-distribution"
        config = workdir / "config.yml"
        config.write_text(
            _distribution_config(
                addr,
                "  s3:\n"
                "    region: us-east-1\n"
                f"    regionendpoint: http://{s3['endpoint']}\n"
                f"    bucket: {s3['bucket']}\n"
                f"    accesskey: {s3['access_key']}\n"
                f"    secretkey: {s3['secret_key']}\n"
                "    secure: false\n"
                "    v4auth: true\n"
                f"    chunksize: {S3_CHUNK_SIZE}\n"
                f"    rootdirectory: /{prefix}\n"
                # Pulls are proxied through the registry, as in the distributed target's default.
                "  redirect:\n    disable: true\n",
            )
        )
        # AWS_CA_BUNDLE in the environment makes the AWS SDK of Distribution 2.8's s3 driver panic at startup
        # ("LoadCustomCABundleError ... unsupported transport"); the endpoint is plain HTTP, so drop all AWS_*.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        cmd = [docker_registry_binary(), "serve", str(config)]
        return Target(name, cmd, env, port, workdir, s3_prefix=prefix, s3=s3)
    raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")


async def cleanup(target: Target) -> list[str]:
    """Remove what an S3-backed target left outside its temp dir; return what failed."""
    if target.namespace:
        return await cleanup_distributed(target)
    if target.s3_prefix:
        try:
            await asyncio.to_thread(_delete_s3_prefix, target.s3, target.s3_prefix)
        except Exception as exc:
            return [f"s3: {exc!r}"]
    return []


async def drop_database(uri: str, name: str) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        await client.drop_database(name)
    finally:
        await client.close()


async def cleanup_distributed(target: Target) -> list[str]:
    """Drop the namespace's Mongo database, S3 prefix and Kafka topics; return what failed."""
    problems: list[str] = []
    env, ns = target.env, target.namespace
    assert ns is not None
    try:
        await drop_database(env["HANZO_REGISTRY_METADATA__URI"], env["HANZO_REGISTRY_METADATA__DATABASE"])
    except Exception as exc:
        problems.append(f"mongo: {exc!r}")
    try:
        s3 = _s3_settings(env)
        await asyncio.to_thread(_delete_s3_prefix, s3, env["HANZO_REGISTRY_STORAGE__BLOBS__PREFIX"])
    except Exception as exc:
        problems.append(f"s3: {exc!r}")
    try:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=env["HANZO_REGISTRY_EVENTS__BOOTSTRAP_SERVERS"])
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith(f"{ns}.")]
            if topics:
                await admin.delete_topics(topics)
        finally:
            await admin.close()
    except Exception as exc:
        problems.append(f"kafka: {exc!r}")
    return problems


def drop_namespace(namespace: str) -> int:
    """`cleanup_distributed` of the namespace whose settings scripts/distributed_env.sh exported into this
    process's environment (scripts/with_registry.sh, once its registry stopped); 1 if anything was left."""
    env = {k: v for k, v in os.environ.items() if k.startswith("HANZO_REGISTRY_")}
    target = Target(name="distributed", command=[], env=env, port=0, workdir=Path("."), namespace=namespace)
    problems = asyncio.run(cleanup_distributed(target))
    for problem in problems:
        print(f"namespace {namespace} not dropped: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _s3_settings(env: dict[str, str]) -> dict[str, str]:
    """Endpoint (host:port), keys and bucket of the distributed environment `env`."""
    keys = ("endpoint", "access_key", "secret_key", "bucket")
    return {k: env[f"HANZO_REGISTRY_STORAGE__BLOBS__{k.upper()}"] for k in keys}


def _minio(s3: dict[str, str]) -> Minio:
    from minio import Minio

    return Minio(s3["endpoint"], access_key=s3["access_key"], secret_key=s3["secret_key"], secure=False)


def _delete_s3_prefix(s3: dict[str, str], prefix: str) -> None:
    """Delete every object under `<prefix>/` in the bucket, then SeaweedFS's leftover directory entries."""
    from minio.deleteobjects import DeleteObject

    client, bucket = _minio(s3), s3["bucket"]
    objects = (DeleteObject(o.object_name) for o in client.list_objects(bucket, prefix=f"{prefix}/", recursive=True))
    errors = list(client.remove_objects(bucket, objects))
    if errors:
        raise RuntimeError(f"{len(errors)} objects not deleted, first: {errors[0]}")

    # SeaweedFS keeps the emptied directories as `<dir>/` entries: remove them deepest first.
    def directories(prefix: str) -> list[str]:
        found: list[str] = []
        for o in client.list_objects(bucket, prefix=prefix):
            if o.is_dir and o.object_name:
                found += [*directories(o.object_name), o.object_name]
        return found

    for name in [*directories(f"{prefix}/"), f"{prefix}/"]:
        client.remove_object(bucket, name)


INFRA_MARK = "/.cache/hanzo-registry/infra/"


def infra_pids() -> list[int]:
    """The local Kafka, FerretDB and SeaweedFS processes (make infra-up), found by their command lines, and
    every PostgreSQL server process (FerretDB's postgresql backend; its backends rename their command lines),
    found by its executable."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if INFRA_MARK.encode() in f.read():
                        pids.append(int(entry))
                        continue
                if os.readlink(f"/proc/{entry}/exe").startswith("/usr/lib/postgresql/"):
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def scratch_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="hanzo-bench-"))
