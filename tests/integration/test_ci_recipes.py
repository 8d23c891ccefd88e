"""docs/ci-cd.md's shell blocks (`# ci: login|push|sign|deploy-trigger`), run with bash and the real crane, oras
and cosign against `hanzo-registry serve` (the embedded assembly: scanner, signer and webhooks in-process): the
CI key logs in, pushes an image and a model, signs the digest; the deploy trigger's webhook then receives
image.deployable for the pushed tag once the scan and the signature are in, signed with its secret.
The registry here speaks plain HTTP, so the plain-HTTP flags are added to each client call."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.core.auth.apikeys import generate_key
from tests.conftest import infra
from tests.integration.registry_process import RegistryProcess, registry_process

pytestmark = pytest.mark.client
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ci-cd.md"
PLAIN_HTTP = [("crane auth login", "crane auth login --insecure"), ("crane push", "crane push --insecure"),
              ("crane digest", "crane digest --insecure"), ("oras login", "oras login --plain-http"),
              ("oras push", "oras push --plain-http"),
              ("cosign sign", "cosign sign --allow-insecure-registry --allow-http-registry "
                              "--use-signing-config=false --new-bundle-format=false")]


def blocks() -> dict[str, str]:
    found = re.findall(r"```sh\n# ci: ([a-z-]+)\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    return dict(found)


def tool(name: str) -> str:
    path = infra(f"HANZO_TOOL_{name.upper()}")
    if not Path(path).exists():
        pytest.skip(f"{name} is not built (deploy/local/tools.sh)")
    return path


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, dict[str, str], Path]]:
    tmp = tmp_path_factory.mktemp("ci")
    admin_key = generate_key().key
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    registry_env = {"HANZO_REGISTRY_AUTH__MODE": "token", "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": admin_key,
                    "HANZO_REGISTRY_SIGNER__MASTER_KEY": "ci-recipes-master-key-0123456789",
                    "HANZO_REGISTRY_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
                    "HANZO_REGISTRY_WEBHOOKS__POLL_INTERVAL_SECONDS": "0.2"}
    bins = tmp / "bin"
    bins.mkdir()
    for name in ("crane", "oras", "cosign"):
        (bins / name).symlink_to(tool(name))
    try:
        with registry_process("embedded", tmp, env=registry_env) as reg:
            shell = {**{k: v for k, v in os.environ.items() if not k.startswith("HANZO_REGISTRY_")},
                     "PATH": f"{bins}:{os.environ['PATH']}", "HOME": str(tmp), "DOCKER_CONFIG": str(tmp / "docker"),
                     "XDG_CONFIG_HOME": str(tmp / "xdg"), "REGISTRY": reg.addr, "REGISTRY_URL": f"http://{reg.addr}",
                     "HANZO_REGISTRY_USER": "admin", "HANZO_REGISTRY_KEY": admin_key, "REPO": "my-org/api",
                     "TAG": "v1.4.2", "COSIGN_PASSWORD": "ci-password",
                     "DEPLOY_HOOK_URL": f"http://127.0.0.1:{server.server_port}/deploy",
                     "DEPLOY_HOOK_SECRET": "deploy-hook-secret"}
            subprocess.run([tool("cosign"), "generate-key-pair"], cwd=tmp, env=shell, check=True,
                           capture_output=True, timeout=120)
            shell["COSIGN_PRIVATE_KEY"] = (tmp / "cosign.key").read_text()
            yield reg, shell, tmp
    finally:
        server.shutdown()


def run(block: str, shell: dict[str, str], cwd: Path) -> str:
    script = blocks()[block]
    for plain, insecure in PLAIN_HTTP:
        script = script.replace(plain, insecure)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=shell, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{block}:\n{script}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_doc_has_every_recipe() -> None:
    text = DOC.read_text()
    assert set(blocks()) == {"login", "push", "sign", "deploy-trigger"}
    assert 'deploy: {trigger: push, tag_pattern: "v*", scan_gate: high, verify_signature: true}' in text
    assert "## GitHub Actions" in text and "## GitLab CI" in text


def test_login_push_sign_and_the_deploy_trigger(env: tuple[RegistryProcess, dict[str, str], Path]) -> None:
    _reg, shell, tmp = env
    # The "build" output: an image tarball (what docker buildx/buildah write), made here with crane.
    (tmp / "f.txt").write_text("hello " + os.urandom(8).hex())
    subprocess.run(["tar", "cf", "layer.tar", "f.txt"], cwd=tmp, check=True)
    subprocess.run([tool("crane"), "append", "-f", "layer.tar", "-t", "local/api:build", "-o", "image.tar"],
                   cwd=tmp, env=shell, check=True, capture_output=True, timeout=120)
    (tmp / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")

    run("login", shell, tmp)
    run("deploy-trigger", shell, tmp)  # before the push: the trigger fires on what comes next
    out = run("push", shell, tmp)
    digest = re.search(r"@(sha256:[0-9a-f]{64})", out)
    assert digest, out
    shell["DIGEST"] = digest.group(1)
    run("sign", shell, tmp)

    deadline = time.monotonic() + 60
    while not [r for r in Receiver.received if r[0].get("X-Hanzo-Event") == "image.deployable"]:
        assert time.monotonic() < deadline, f"no image.deployable; {len(Receiver.received)} other deliveries"
        time.sleep(0.2)
    [(headers, body)] = [r for r in Receiver.received if r[0].get("X-Hanzo-Event") == "image.deployable"]
    expected = "sha256=" + hmac.new(b"deploy-hook-secret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Hanzo-Signature-256"], expected)
    data = json.loads(body)["data"]
    assert (data["repository"], data["tag"], data["digest"]) == ("my-org/api", "v1.4.2", shell["DIGEST"])
    assert data["checks"]["scan"]["gate"] == "high" and "signature" in data["checks"]
