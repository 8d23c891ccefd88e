"""`hanzo-registry tag --force` moves an immutable tag for an admin, and is refused without --force."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from tests.integration.registry_process import registry_process, request

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = f"hzr_{secrets.token_hex(6)}_{secrets.token_hex(32)}"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _auth() -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_KEY}".encode()).decode()}


def _push_image(addr: str, repo: str, tag: str, payload: bytes) -> str:
    config = b"{}"
    for blob in (config, payload):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        resp = request(
            addr,
            "POST",
            f"/v2/{repo}/blobs/uploads/?digest={digest}",
            body=blob,
            headers={**_auth(), "Content-Type": "application/octet-stream"},
        )
        assert resp.status == 201, resp.body
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": "sha256:" + hashlib.sha256(payload).hexdigest(),
                    "size": len(payload),
                }
            ],
        }
    ).encode()
    resp = request(
        addr, "PUT", f"/v2/{repo}/manifests/{tag}", body=manifest, headers={**_auth(), "Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, resp.body
    return str(resp.header("Docker-Content-Digest"))


def _cli(addr: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HANZO_REGISTRY_API_KEY": ADMIN_KEY}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "tag", "--registry", f"http://{addr}", "--user", "admin", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_tag_command_respects_and_forces_immutable_tags(tmp_path: Path) -> None:
    env = {"HANZO_REGISTRY_AUTH__MODE": "token", "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": ADMIN_KEY}
    with registry_process("embedded", tmp_path, env=env) as reg:
        first = _push_image(reg.addr, "team/app", "v1.0.0", b"first")
        second = _push_image(reg.addr, "team/app", "candidate", b"second")
        refused = _cli(reg.addr, "team/app", "candidate", "v1.0.0")
        assert refused.returncode == 1 and "immutable" in refused.stderr, refused.stderr
        assert ADMIN_KEY not in refused.stderr + refused.stdout
        moved = _cli(reg.addr, "--force", "team/app", "candidate", "v1.0.0")
        assert moved.returncode == 0, moved.stderr
        assert second in moved.stdout
        resp = request(reg.addr, "HEAD", "/v2/team/app/manifests/v1.0.0", headers={**_auth(), "Accept": OCI_MANIFEST})
        assert resp.header("Docker-Content-Digest") == second != first
        latest = _cli(reg.addr, "team/app", "v1.0.0", "latest")
        assert latest.returncode == 0, latest.stderr
