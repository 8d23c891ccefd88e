"""Private FerretDB, SeaweedFS and Kafka servers for fault injection: each on its own free loopback ports
and data directory, started, stopped and restarted by the test that owns it (never the shared servers of
`make infra-up`, which other tests use at the same time). Binaries and jars come from the infra cache
(`deploy/local/infra-up.sh` installs them); the command lines are the ones that script uses."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "deploy" / "local" / "infra_check.py"
CACHE = Path(os.environ.get("HANZO_CACHE", Path.home() / ".cache" / "hanzo-registry")) / "infra"
S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET = "hanzo", "hanzo-secret-key", "hanzo-registry-faults"


def _common(name: str) -> str:
    """A version pinned in deploy/local/common.sh."""
    for line in (ROOT / "deploy" / "local" / "common.sh").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].split("#")[0].strip().strip('"')
    raise KeyError(name)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, grpc_offset: int | None = None) -> list[int]:
    """`count` free loopback ports in 20000-29999 (and each + `grpc_offset` free too: SeaweedFS's gRPC)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(20000, 29999)
        extra = [port + grpc_offset] if grpc_offset else []
        if port not in chosen and all(_bindable(p) for p in [port, *extra]):
            chosen.append(port)
    return chosen


class PrivateServer:
    """One server process (its own session, so its children go with it), restartable on the same ports
    and data."""

    name = "server"

    def __init__(self, root: Path) -> None:
        self.root = root / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def probe(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def healthy(self) -> bool:
        check = subprocess.run([sys.executable, str(CHECK), *self.probe()], capture_output=True, timeout=15)
        return check.returncode == 0

    def start(self, *, timeout: float = 120.0, ready: Callable[[], bool] | None = None) -> None:
        """Start the server and wait until `ready` (default: `healthy`) says yes."""
        ready = ready or self.healthy
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.root, env=self.env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not healthy after {timeout}s:\n{self.tail()}")

    def stop(self, *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Signal our process group (ours only: the group this process leads) and wait for it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        self.stop(sig=signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


class PrivateFerretDB(PrivateServer):
    name = "ferretdb"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.port, self.debug_port = free_ports(2)
        self.binary = CACHE / "bin" / f"ferretdb-{_common('FERRETDB_VERSION')}"

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        (self.root / "data").mkdir(exist_ok=True)
        (self.root / "state").mkdir(exist_ok=True)
        return [str(self.binary), f"--listen-addr=127.0.0.1:{self.port}", "--handler=sqlite",
                f"--sqlite-url=file:{self.root / 'data'}/", f"--state-dir={self.root / 'state'}",
                f"--debug-addr=127.0.0.1:{self.debug_port}", "--telemetry=disable", "--log-level=warn"]

    def probe(self) -> list[str]:
        return ["mongo", f"127.0.0.1:{self.port}"]


class PrivateSeaweedFS(PrivateServer):
    name = "seaweedfs"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        # Every port below the kernel's ephemeral range (32768+), gRPC ones included: SeaweedFS's default gRPC
        # port is the HTTP one + 10000, which an outgoing connection could hold when the server restarts.
        (self.s3_port, self.master_port, self.volume_port, self.filer_port,
         self.s3_grpc, self.master_grpc, self.volume_grpc, self.filer_grpc) = free_ports(8)
        self.binary = CACHE / "bin" / f"weed-{_common('SEAWEEDFS_VERSION')}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "2"}

    def command(self) -> list[str]:
        (self.root / "data").mkdir(exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "hanzo", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        return [str(self.binary), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.root / 'data'}",
                f"-master.port={self.master_port}", f"-master.port.grpc={self.master_grpc}",
                "-master.volumeSizeLimitMB=64", "-master.telemetry=false", "-master.electionTimeout=1s",
                f"-volume.port={self.volume_port}", f"-volume.port.grpc={self.volume_grpc}", "-volume.max=0",
                "-volume.preStopSeconds=0",
                "-filer", f"-filer.port={self.filer_port}", f"-filer.port.grpc={self.filer_grpc}",
                "-s3", f"-s3.port={self.s3_port}", f"-s3.port.grpc={self.s3_grpc}",
                f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0"]

    def probe(self) -> list[str]:
        return ["s3", self.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, "--create", S3_BUCKET]

    def healthy(self) -> bool:
        """Listing answers and a write goes through: after a restart SeaweedFS serves reads within ~3 s but
        holds every write until its master is raft leader again and the volume server has re-registered
        (~15 s with -master.electionTimeout=1s, ~28 s with the default 10s), so "back" means writable."""
        return self.readable() and self.writable()

    def readable(self) -> bool:
        """The S3 API answers a listing (writes may still be held)."""
        return super().healthy()

    def writable(self) -> bool:
        """A small PUT is stored within 2 s."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=2), retries=urllib3.Retry(total=0))
        client = Minio(self.endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False,
                       region="us-east-1", http_client=http)
        try:
            client.put_object(S3_BUCKET, "faults-probe", io.BytesIO(b"probe"), 5)
        except Exception:
            return False
        finally:
            http.clear()
        return True


class PrivateKafka(PrivateServer):
    name = "kafka"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.port, self.controller_port = free_ports(2)
        version = _common("KAFKA_VERSION")
        self.home = CACHE / f"kafka-{version}"
        self._formatted = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self) -> list[str]:
        return ["java", "-Xms256m", "-Xmx256m", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}",
                "-cp", f"{self.home / 'libs'}/*"]

    def command(self) -> list[str]:
        config = self.root / "server.properties"
        if not self._formatted:
            config.write_text("\n".join([
                "process.roles=broker,controller", "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER", "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={self.root / 'data'}", "auto.create.topics.enable=true", "num.partitions=3",
                "offsets.topic.replication.factor=1", "offsets.topic.num.partitions=3",
                "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1", "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0", "",
            ]))
            (self.root / "log4j2.properties").write_text(
                "status = warn\nappender.out.type = Console\nappender.out.name = OUT\n"
                "appender.out.layout.type = PatternLayout\nappender.out.layout.pattern = [%d] %p %m (%c)%n\n"
                "rootLogger.level = WARN\nrootLogger.appenderRef.out.ref = OUT\n"
            )
            cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            with self.log.open("ab") as out:
                subprocess.run([*self._java(), "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(config),
                                "--ignore-formatted"], check=True, stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=120)
            self._formatted = True
        return [*self._java(), "kafka.Kafka", str(config)]

    def probe(self) -> list[str]:
        return ["kafka", self.bootstrap]


def installed() -> str | None:
    """Why private servers cannot run here, or None."""
    missing = [str(p) for p in (CACHE / "bin" / f"ferretdb-{_common('FERRETDB_VERSION')}",
                                CACHE / "bin" / f"weed-{_common('SEAWEEDFS_VERSION')}",
                                CACHE / f"kafka-{_common('KAFKA_VERSION')}" / ".complete") if not p.exists()]
    return f"run `make infra-up` once to install {', '.join(missing)}" if missing else None


@contextlib.contextmanager
def private_servers(root: Path) -> Iterator[tuple[PrivateFerretDB, PrivateSeaweedFS, PrivateKafka]]:
    """The three servers started, and stopped at the end whatever happened."""
    if reason := installed():
        pytest.skip(reason)
    servers = (PrivateFerretDB(root), PrivateSeaweedFS(root), PrivateKafka(root))
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def registry_env(ferret: PrivateFerretDB, seaweed: PrivateSeaweedFS, kafka: PrivateKafka) -> dict[str, str]:
    """Settings overrides pointing a distributed registry process at the private servers."""
    return {
        "HANZO_REGISTRY_METADATA__URI": ferret.uri,
        "HANZO_REGISTRY_STORAGE__BLOBS__ENDPOINT": seaweed.endpoint,
        "HANZO_REGISTRY_STORAGE__BLOBS__ACCESS_KEY": S3_ACCESS_KEY,
        "HANZO_REGISTRY_STORAGE__BLOBS__SECRET_KEY": S3_SECRET_KEY,
        "HANZO_REGISTRY_STORAGE__BLOBS__BUCKET": S3_BUCKET,
        "HANZO_REGISTRY_EVENTS__BOOTSTRAP_SERVERS": kafka.bootstrap,
    }
