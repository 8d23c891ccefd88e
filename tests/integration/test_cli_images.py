"""Images on disk through the `hanzo-registry` CLI (issue 16, item 5): `push --from` and `pull --to` with OCI image
layouts and `docker save` tarballs, against skopeo (which copies `oci:` and `docker-archive:` to and from the
registry) and umoci (which reads the layout the CLI wrote); then `scan` and `verify` of the pushed image
(the scanner's report and the signer's verdict through the management API). Embedded assembly."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import infra
from tests.integration.registry_process import RegistryProcess, registry_process, request

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = f"hzr_{secrets.token_hex(6)}_{secrets.token_hex(32)}"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

pytestmark = pytest.mark.client


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    env = {"HANZO_REGISTRY_AUTH__MODE": "token", "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
           "HANZO_REGISTRY_SIGNER__MASTER_KEY": "cli-images-master-key-0123456789"}
    with registry_process("embedded", tmp_path_factory.mktemp("images"), env=env) as reg:
        yield reg


def cli(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HANZO_REGISTRY_", "DOCKER_CONFIG"))}
    env.update({"HANZO_REGISTRY_API_KEY": ADMIN_KEY, "DOCKER_CONFIG": "/nonexistent-docker-config"})
    # The OCI commands take -u; the management commands (--registry ...) take --user.
    user = ["--user", "admin"] if "--registry" in args else ["-u", "admin"]
    proc = subprocess.run([sys.executable, "-m", "services.cli.main", *map(str, args), *user], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def cli_json(*args: str | Path) -> Any:
    return json.loads(cli(*args, "-o", "json").stdout)


def skopeo(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([infra("HANZO_TOOL_SKOPEO"), "--insecure-policy", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "HOME": str(cwd), "XDG_RUNTIME_DIR": str(cwd)})
    assert proc.returncode == 0, proc.stderr
    return proc


def creds(direction: str) -> list[str]:
    return [f"--{direction}-tls-verify=false", f"--{direction}-creds", f"admin:{ADMIN_KEY}"]


# ---------------------------------------------------------------------------------------------- images made here


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layout(root: Path, tag: str) -> dict[str, Any]:
    """An OCI image layout with one image (two gzip layers: a Debian dpkg status with an old openssl, and an
    npm package), as skopeo or umoci would write it."""
    status = (b"Package: openssl\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u1\nArchitecture: amd64\n\n")
    plain = [_tar({"var/lib/dpkg/status": status, "usr/lib/os-release": b'ID=debian\nVERSION_ID="12"\n'}),
             _tar({"app/node_modules/lodash/package.json": b'{"name":"lodash","version":"4.17.20"}',
                   "app/data.bin": os.urandom(300_000)})]
    layers = [gzip.compress(p, mtime=0) for p in plain]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [_digest(p) for p in plain]},
                         "config": {"Cmd": ["/bin/sh"]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _digest(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": _digest(b), "size": len(b)} for b in layers]}).encode()
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (config, manifest, *layers):
        (blobs / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": _digest(manifest), "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return {"manifest": _digest(manifest), "config": _digest(config), "layers": [_digest(b) for b in layers],
            "diff_ids": [_digest(p) for p in plain]}


def layout_blob(root: Path, digest: str) -> bytes:
    return (root / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def layout_image(root: Path, tag: str) -> dict[str, Any]:
    """The manifest (parsed) of `tag` in a layout, with its digest."""
    index = json.loads((root / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    return {"digest": entry["digest"], **json.loads(layout_blob(root, entry["digest"]))}


# ---------------------------------------------------------------------------------------------- tests


def test_oci_layouts_and_docker_archives_with_skopeo_and_umoci(registry: RegistryProcess, tmp_path: Path) -> None:
    addr = registry.addr
    made = make_layout(tmp_path / "made", "v1")
    originals = {d: layout_blob(tmp_path / "made", d) for d in [made["manifest"], made["config"], *made["layers"]]}

    # The CLI pushes a layout; skopeo copies it back out byte for byte.
    pushed = cli_json("push", f"{addr}/img/cli:v1", "--from", f"oci:{tmp_path / 'made'}:v1")
    assert pushed["digest"] == made["manifest"]
    skopeo("copy", *creds("src"), f"docker://{addr}/img/cli:v1", f"oci:{tmp_path / 'by-skopeo'}:v1", cwd=tmp_path)
    assert layout_image(tmp_path / "by-skopeo", "v1")["digest"] == made["manifest"]
    for digest, data in originals.items():
        assert layout_blob(tmp_path / "by-skopeo", digest) == data

    # skopeo pushes a layout; the CLI pulls it into a layout that umoci reads.
    skopeo("copy", *creds("dest"), f"oci:{tmp_path / 'made'}:v1", f"docker://{addr}/img/skopeo:v1", cwd=tmp_path)
    pulled = cli_json("pull", f"{addr}/img/skopeo:v1", "--to", f"oci:{tmp_path / 'by-cli'}:v1")
    assert pulled["digest"] == made["manifest"]
    for digest, data in originals.items():
        assert layout_blob(tmp_path / "by-cli", digest) == data
    stat = subprocess.run([infra("HANZO_TOOL_UMOCI"), "stat", "--json", "--image", f"{tmp_path / 'by-cli'}:v1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert stat.returncode == 0, stat.stderr
    assert len(json.loads(stat.stdout)["history"] or []) >= 0
    listed = subprocess.run([infra("HANZO_TOOL_UMOCI"), "ls", "--layout", tmp_path / "by-cli"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0 and listed.stdout.split() == ["v1"], listed.stderr

    # docker-archive, skopeo -> CLI: skopeo writes a `docker save` tarball, the CLI pushes it unchanged.
    archive = tmp_path / "saved.tar"
    skopeo("copy", f"oci:{tmp_path / 'made'}:v1", f"docker-archive:{archive}:img/saved:v1", cwd=tmp_path)
    from_archive = cli_json("push", f"{addr}/img/archive:v1", "--from", f"docker-archive:{archive}")
    skopeo("copy", *creds("src"), f"docker://{addr}/img/archive:v1", f"oci:{tmp_path / 'archive-out'}:v1",
           cwd=tmp_path)
    image = layout_image(tmp_path / "archive-out", "v1")
    assert from_archive["media_type"] == OCI_MANIFEST
    assert image["config"]["digest"] == made["config"]  # the config's bytes are kept
    stored = cli_json("inspect", f"{addr}/img/archive:v1")  # (skopeo compresses layers into its layout)
    assert [layer["digest"] for layer in stored["layers"]] == made["diff_ids"]  # the layer tars, as they were
    assert stored["config"]["digest"] == made["config"]

    # docker-archive, CLI -> skopeo: the CLI writes a tarball (layers uncompressed) that skopeo reads.
    written = tmp_path / "written.tar"
    result = cli_json("pull", f"{addr}/img/cli:v1", "--to", f"docker-archive:{written}")
    assert result["config"] == made["config"] and result["layers"] == made["diff_ids"]
    inspected = json.loads(skopeo("inspect", f"docker-archive:{written}", cwd=tmp_path).stdout)
    assert inspected["Layers"] == made["diff_ids"]
    skopeo("copy", f"docker-archive:{written}", f"oci:{tmp_path / 'from-written'}:v1", cwd=tmp_path)
    converted = layout_image(tmp_path / "from-written", "v1")  # (skopeo rewrites the config as OCI's)
    config = json.loads(layout_blob(tmp_path / "from-written", converted["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == made["diff_ids"]

    # Errors are one line: a layout without the tag, a path that is no layout.
    missing = cli("push", f"{addr}/img/cli:v2", "--from", f"oci:{tmp_path / 'made'}:nope", check=False)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no image tagged" in missing.stderr
    nothing = cli("push", f"{addr}/img/cli:v2", "--from", f"oci:{tmp_path / 'nowhere'}", check=False)
    assert nothing.returncode == 2 and "not an OCI image layout" in nothing.stderr


OSV_OPENSSL = {"id": "DSA-5532-1", "modified": "2023-10-25T00:00:00Z", "aliases": ["CVE-2023-5363"],
               "summary": "openssl: incorrect cipher key and IV length processing",
               "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
                             "ranges": [{"type": "ECOSYSTEM",
                                         "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]}]}],
               "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}]}


def _api(reg: RegistryProcess, method: str, path: str, body: object = None) -> tuple[int, Any]:
    auth = base64.b64encode(f"admin:{ADMIN_KEY}".encode()).decode()
    resp = request(reg.addr, method, path, body=None if body is None else json.dumps(body).encode(),
                   headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
    return resp.status, json.loads(resp.body) if resp.body else None


def test_scan_and_verify(registry: RegistryProcess, tmp_path: Path) -> None:
    addr = registry.addr
    (tmp_path / "osv.json").write_text(json.dumps([OSV_OPENSSL]))
    assert cli_json("vulndb", "import", tmp_path / "osv.json", "--registry", f"http://{addr}")["imported"] == 1
    made = make_layout(tmp_path / "made", "v1")
    cli("push", f"{addr}/chk/app:v1", "--from", f"oci:{tmp_path / 'made'}:v1")

    report = cli_json("scan", f"{addr}/chk/app:v1", "--rescan", "--wait", "120")
    assert report["status"] == "complete" and report["digest"] == made["manifest"], report
    assert {(f["id"], f["package"]) for f in report["vulnerabilities"]} >= {("DSA-5532-1", "openssl")}
    assert report["summary"]["high"] >= 1
    text = cli("scan", f"{addr}/chk/app:v1").stdout
    assert "DSA-5532-1" in text and "openssl" in text and "fixed in 3.0.11-1~deb12u2" in text

    unsigned = cli("verify", f"{addr}/chk/app:v1", check=False)
    assert unsigned.returncode == 1 and unsigned.stderr.count("\n") == 1 and "no signature verified" in \
        unsigned.stderr, unsigned.stderr
    status, key = _api(registry, "POST", "/v1/registry/namespaces/chk/keys", {"name": "release",
                                                                               "algorithm": "ecdsa-p256"})
    assert status == 201, key
    signed = cli_json("sign", "chk/app:v1", "--key", key["uri"], "--registry", f"http://{addr}")
    assert signed["digest"] == made["manifest"]
    status, body = _api(registry, "PUT", "/v1/registry/namespaces/chk/policy",
                        {"signing": {"keys": [key["public_key"]]}})
    assert status == 200, body
    verdict = cli_json("verify", f"{addr}/chk/app:v1", "--key", key["uri"])
    assert verdict["verified"] is True and verdict["digest"] == made["manifest"], verdict
    assert cli("verify", f"{addr}/chk/app:v1", "--key", "sha256:" + "0" * 64, check=False).returncode == 1
    bad = cli("verify", f"{addr}/chk/app:v1", "--key", "hanzo-kms://nonsense", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr


class _DropsBlobs(http.server.BaseHTTPRequestHandler):
    """A registry whose connection breaks 100 000 bytes into a blob, and at once on every retry."""

    blob = os.urandom(1_000_000)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [
        {"mediaType": "application/octet-stream", "digest": _digest(blob), "size": len(blob),
         "annotations": {"org.opencontainers.image.title": "f.bin"}}]}).encode()

    healthy = False
    """Then it serves blobs whole or from a Range, as a registry does."""

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self._send(b"{}", "application/json")
        elif "/manifests/" in self.path:
            self._send(self.manifest, OCI_MANIFEST)
        elif self.healthy:
            start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(self.blob) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(self.blob) - 1}/{len(self.blob)}")
            self.end_headers()
            self.wfile.write(self.blob[start:])
        elif "Range" in self.headers:
            self.close_connection = True  # lost again: no answer at all
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.blob)))
            self.end_headers()
            self.wfile.write(self.blob[:100_000])
            self.wfile.flush()
            # Let the client read what was sent before the connection goes: bytes still buffered in its HTTP
            # stack when the close arrives are dropped, so how much reached the file depended on the load.
            time.sleep(0.5)
            self.wfile.flush()
            self.close_connection = True

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Content-Digest", _digest(body))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_one_line_errors_for_a_denied_scope_and_a_lost_connection(registry: RegistryProcess, tmp_path: Path) -> None:
    addr = registry.addr
    status, _ = _api(registry, "POST", "/v1/registry/users", {"name": "viewer"})
    assert status == 201
    status, created = _api(registry, "POST", "/v1/registry/users/viewer/keys", {})
    assert status == 201
    status, _ = _api(registry, "POST", "/v1/registry/deny/permissions", {"user": "viewer", "role": "reader"})
    assert status == 201
    data = tmp_path / "f.bin"
    data.write_bytes(b"y" * 1000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HANZO_REGISTRY_", "DOCKER_CONFIG"))}
    env.update({"HANZO_REGISTRY_API_KEY": created["key"], "DOCKER_CONFIG": "/nonexistent-docker-config"})
    denied = subprocess.run([sys.executable, "-m", "services.cli.main", "push", f"{addr}/deny/app:v1", data,
                             "-u", "viewer"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert denied.returncode == 1 and denied.stderr.count("\n") == 1, denied.stderr
    assert "denied" in denied.stderr and created["key"] not in denied.stderr, denied.stderr

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DropsBlobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        lost = cli("pull", f"127.0.0.1:{port}/x/y:v1", "--dir", tmp_path / "out", check=False)
        assert lost.returncode == 3 and lost.stderr.count("\n") == 1, lost.stderr
        assert "connection was lost" in lost.stderr, lost.stderr
        kept = (tmp_path / "out" / ".f.bin.part").stat().st_size  # kept: the next run continues it
        assert 0 < kept <= 100_000
        _DropsBlobs.healthy = True
        resumed = cli_json("pull", f"127.0.0.1:{port}/x/y:v1", "--dir", tmp_path / "out")["files"][0]
        assert (resumed["resumed_from"], resumed["bytes_received"]) == (kept, 1_000_000 - kept)
        assert (tmp_path / "out" / "f.bin").read_bytes() == _DropsBlobs.blob
        # A part that is not the blob's head (another file's, damaged) is dropped and the blob pulled again.
        (tmp_path / "again").mkdir()
        (tmp_path / "again" / ".f.bin.part").write_bytes(b"x" * 50_000)
        again = cli_json("pull", f"127.0.0.1:{port}/x/y:v1", "--dir", tmp_path / "again")["files"][0]
        assert again["resumed_from"] == 0 and (tmp_path / "again" / "f.bin").read_bytes() == _DropsBlobs.blob
    finally:
        _DropsBlobs.healthy = False
        server.shutdown()
