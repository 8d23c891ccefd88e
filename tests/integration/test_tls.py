"""HTTPS with the registry's own certificate: skopeo, crane and oras with verification on; a certificate rotated
while a client pulls; client certificates required for mutual TLS."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import infra
from tests.integration import images
from tests.integration.certs import Issued, TestCA, serial_of
from tests.integration.registry_process import EXECUTABLE, free_port

READY_TIMEOUT = 60.0


@dataclass
class TlsRegistry:
    addr: str
    ca: TestCA
    server: Issued
    proc: subprocess.Popen[bytes]
    log: Path

    def context(self, client: Issued | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.path))
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        return context

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def _status(addr: str, path: str, context: ssl.SSLContext) -> int:
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=3)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@contextlib.contextmanager
def tls_registry(tmp_path: Path, *, env: Mapping[str, str] | None = None, client_ca: Path | None = None,
                 ready_client: Issued | None = None) -> Iterator[TlsRegistry]:
    """`hanzo-registry serve` over HTTPS with a certificate of a fresh CA; waits for /readyz (presenting
    `ready_client`'s certificate, for mutual TLS), then SIGTERM and exit code 0."""
    ca = TestCA.create(tmp_path / "ca")
    server = ca.issue(tmp_path / "server", "registry")
    addr = f"127.0.0.1:{free_port()}"
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HANZO_REGISTRY_")},
        "HANZO_REGISTRY_DATA_DIR": str(tmp_path / "data"),
        "HANZO_REGISTRY_ADDR": addr,
        "HANZO_REGISTRY_AUTH__MODE": "none",
        "HANZO_REGISTRY_TELEMETRY__LOG_FORMAT": "console",
        "HANZO_REGISTRY_SERVER__TLS__CERT_FILE": str(server.cert),
        "HANZO_REGISTRY_SERVER__TLS__KEY_FILE": str(server.key),
        "HANZO_REGISTRY_SERVER__TLS__RELOAD_INTERVAL_SECONDS": "0.5",
        **({"HANZO_REGISTRY_SERVER__TLS__CLIENT_CA_FILE": str(client_ca)} if client_ca else {}),
        **(env or {}),
    }
    log = tmp_path / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(EXECUTABLE), "serve"], env=full_env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    reg = TlsRegistry(addr, ca, server, proc, log)
    context = reg.context(ready_client)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"registry exited with {proc.returncode}:\n{reg.log_tail()}")
            with contextlib.suppress(OSError):
                if _status(addr, "/readyz", context) == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"registry not ready:\n{reg.log_tail()}")
            time.sleep(0.1)
        yield reg
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, reg.log_tail()


def run(
    reg: TlsRegistry, *cmd: str | Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    args = [str(c) for c in cmd]
    proc = subprocess.run(
        args, capture_output=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=120, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"$ {' '.join(args)}\nexit {proc.returncode}\n{proc.stderr.decode(errors='replace')[-3000:]}"
                    f"\n--- registry log\n{reg.log_tail()}")
    return proc


@pytest.mark.client
def test_clients_push_and_pull_with_verification_on(tmp_path: Path) -> None:
    src = images.multi_layer_image(tmp_path / "src")
    with tls_registry(tmp_path / "reg") as reg:
        cert_dir = tmp_path / "certs.d"
        cert_dir.mkdir()
        (cert_dir / "ca.crt").write_bytes(reg.ca.path.read_bytes())
        skopeo = infra("HANZO_TOOL_SKOPEO")
        run(reg, skopeo, "copy", "--preserve-digests", "--dest-cert-dir", cert_dir, "--dest-tls-verify=true",
            src.oci_ref, f"docker://{reg.addr}/tls/skopeo:v1")
        inspected = run(reg, skopeo, "inspect", "--raw", "--cert-dir", cert_dir, "--tls-verify=true",
                        f"docker://{reg.addr}/tls/skopeo:v1")
        assert inspected.stdout == src.top

        crane, ca_env = infra("HANZO_TOOL_CRANE"), {"SSL_CERT_FILE": str(reg.ca.path)}
        pushed = run(reg, crane, "push", src.path, f"{reg.addr}/tls/crane:v1", env=ca_env).stdout.decode().strip()
        assert pushed == f"{reg.addr}/tls/crane@{src.digest}"
        assert run(reg, crane, "digest", f"{reg.addr}/tls/skopeo:v1", env=ca_env).stdout.decode().strip() == src.digest

        oras = infra("HANZO_TOOL_ORAS")
        (tmp_path / "model.bin").write_bytes(b"weights" * 1000)
        run(reg, oras, "push", "--ca-file", reg.ca.path, f"{reg.addr}/tls/oras:v1", "model.bin", cwd=tmp_path)
        out = tmp_path / "pulled"
        run(reg, oras, "pull", "--ca-file", reg.ca.path, "-o", out, f"{reg.addr}/tls/oras:v1")
        assert (out / "model.bin").read_bytes() == b"weights" * 1000

        # verification is really on: without our CA every client refuses the registry
        strangers = subprocess.run([crane, "digest", f"{reg.addr}/tls/crane:v1"], capture_output=True, timeout=60,
                                   env={**os.environ, "SSL_CERT_FILE": "/dev/null"})
        assert strangers.returncode != 0 and b"certificate" in strangers.stderr


def _push_blob(reg: TlsRegistry, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    host, _, port = reg.addr.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), context=reg.context(), timeout=60)
    try:
        conn.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", body=data,
                     headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 201
    finally:
        conn.close()
    return digest


def _served_serial(reg: TlsRegistry) -> int:
    host, _, port = reg.addr.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), context=reg.context(), timeout=10)
    try:
        conn.connect()
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        return serial_of(ssl.DER_cert_to_PEM_cert(der).encode())
    finally:
        conn.close()


@pytest.mark.parametrize("trigger", ["file change", "SIGHUP"])
def test_certificate_rotation_does_not_break_a_pull(tmp_path: Path, trigger: str) -> None:
    data = os.urandom(24 << 20)
    with tls_registry(tmp_path, env={"HANZO_REGISTRY_SERVER__TLS__RELOAD_INTERVAL_SECONDS": (
            "0.5" if trigger == "file change" else "3600")}) as reg:
        digest = _push_blob(reg, "tls/big", data)
        before = _served_serial(reg)
        host, _, port = reg.addr.rpartition(":")
        conn = http.client.HTTPSConnection(host, int(port), context=reg.context(), timeout=60)
        conn.request("GET", f"/v2/tls/big/blobs/{digest}")
        resp = conn.getresponse()
        assert resp.status == 200
        sha = hashlib.sha256()
        sha.update(resp.read(1 << 20))
        # rotate while the pull is in flight: a new certificate (same CA) written over the old files
        fresh = reg.ca.issue(tmp_path / "fresh", "registry")
        reg.server.key.write_bytes(fresh.key.read_bytes())
        reg.server.cert.write_bytes(fresh.cert.read_bytes())
        if trigger == "SIGHUP":
            reg.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while _served_serial(reg) == before:
            assert time.monotonic() < deadline, f"certificate not reloaded:\n{reg.log_tail()}"
            sha.update(resp.read(256 << 10))  # keep pulling, slowly
            time.sleep(0.2)
        assert _served_serial(reg) == serial_of(fresh.cert.read_bytes())
        while chunk := resp.read(1 << 20):
            sha.update(chunk)
        conn.close()
        assert "sha256:" + sha.hexdigest() == digest
        assert "TLS certificate reloaded" in reg.log.read_text()
        # a pull on a new connection after the rotation works too
        assert _status(reg.addr, f"/v2/tls/big/blobs/{digest}", reg.context()) == 200


def test_a_half_written_rotation_keeps_the_old_certificate(tmp_path: Path) -> None:
    with tls_registry(tmp_path) as reg:
        before = _served_serial(reg)
        other = TestCA.create(tmp_path / "other-ca").issue(tmp_path / "other", "registry")
        reg.server.cert.write_bytes(other.cert.read_bytes())  # the new certificate, but not its key (yet)
        time.sleep(2.5)
        assert _served_serial(reg) == before
        assert "TLS files not reloaded" in reg.log.read_text()


def test_client_certificates_are_required_with_a_client_ca(tmp_path: Path) -> None:
    clients = TestCA.create(tmp_path / "clients-ca", "clients CA")
    good = clients.issue(tmp_path / "client", "ci-runner", server=False)
    stranger = TestCA.create(tmp_path / "stranger-ca", "stranger CA").issue(tmp_path / "s", "x", server=False)
    with tls_registry(tmp_path / "reg", client_ca=clients.path, ready_client=good) as reg:

        async def get(client: Issued | None) -> int:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"https://{reg.addr}/v2/", ssl=reg.context(client)) as resp,
            ):
                return resp.status

        assert asyncio.run(get(good)) == 200
        for who in (None, stranger):
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                asyncio.run(get(who))
