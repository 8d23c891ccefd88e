"""The real cosign and notation clients against a registry process (`serve`, the embedded assembly, whose
signer runs in the same process): cosign signatures in tag mode and in referrers/bundle mode let pulls
through the signature gate; unsigned images and another key's signatures are refused; notation signatures
verify with the configured trust store and fail with another; a server-side signature made with a managed
key is accepted by `cosign verify --key`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.auth.apikeys import generate_key
from tests.conftest import infra
from tests.integration.registry_process import EXECUTABLE, RegistryProcess, registry_process, request
from tests.unit.signer import material as mk

pytestmark = pytest.mark.client
NS = "sig"


def tool(name: str) -> str:
    path = infra(f"HANZO_TOOL_{name.upper()}")
    if not path or not Path(path).exists():
        pytest.skip(f"{name} is not built (deploy/local/tools.sh)")
    return path


class Clients:
    def __init__(self, tmp: Path, key: str) -> None:
        self.tmp = tmp
        self.key = key
        self.env = {**os.environ, "DOCKER_CONFIG": str(tmp / "docker"), "XDG_CONFIG_HOME": str(tmp / "xdg"),
                    "COSIGN_PASSWORD": "test-password", "HOME": str(tmp)}

    def run(self, *cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=self.env, cwd=self.tmp,
                              timeout=180, check=False)
        if check and proc.returncode != 0:
            pytest.fail(f"$ {' '.join(map(str, cmd))}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n"
                        f"{proc.stderr[-3000:]}")
        return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, Clients]]:
    tmp = tmp_path_factory.mktemp("signer-clients")
    admin_key = generate_key().key
    clients = Clients(tmp, admin_key)
    cosign, notation = tool("cosign"), tool("notation")
    clients.run(cosign, "generate-key-pair")
    clients.run(cosign, "generate-key-pair", "--output-key-prefix", "other")
    clients.run(notation, "cert", "generate-test", "--default", "test")
    clients.run(notation, "cert", "generate-test", "stranger")
    store = tmp / "xdg" / "notation" / "truststore"
    (tmp / "trustpolicy.json").write_text(json.dumps(mk.trust_policy("test")))
    # The stranger's certificate is in notation's own store, not in the one the registry trusts.
    trusted = tmp / "registry-truststore" / "x509" / "ca" / "test"
    trusted.mkdir(parents=True)
    for cert in (store / "x509" / "ca" / "test").iterdir():
        (trusted / cert.name).write_bytes(cert.read_bytes())
    env = {"HANZO_REGISTRY_AUTH__MODE": "token", "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": admin_key,
           "HANZO_REGISTRY_SIGNER__MASTER_KEY": "interop-master-key-0123456789",
           "HANZO_REGISTRY_SIGNER__NOTATION_TRUST_STORE": str(tmp / "registry-truststore"),
           "HANZO_REGISTRY_SIGNER__NOTATION_TRUST_POLICY": str(tmp / "trustpolicy.json")}
    with registry_process("embedded", tmp, env=env) as reg:
        (tmp / "docker").mkdir()
        auth = base64.b64encode(f"admin:{admin_key}".encode()).decode()
        (tmp / "docker" / "config.json").write_text(json.dumps({"auths": {reg.addr: {"auth": auth}}}))
        yield reg, clients


def api(reg: RegistryProcess, clients: Clients, method: str, path: str, body: object = None) -> tuple[int, object]:
    resp = request(reg.addr, method, path, body=json.dumps(body).encode() if body is not None else None,
                   headers={"Authorization": f"Bearer {clients.key}", "Content-Type": "application/json"})
    return resp.status, json.loads(resp.body) if resp.body else None


def push(reg: RegistryProcess, clients: Clients, repo: str) -> str:
    layer = clients.tmp / f"{repo.replace('/', '_')}.tar"
    content = clients.tmp / "f.txt"
    content.write_text(repo + os.urandom(8).hex())
    clients.run("tar", "cf", layer, "-C", clients.tmp, "f.txt")
    out = clients.run(tool("crane"), "append", "--insecure", "-f", layer, "-t", f"{reg.addr}/{NS}/{repo}:v1")
    return out.stdout.strip().rpartition("@")[2]


def pull(reg: RegistryProcess, clients: Clients, repo: str) -> subprocess.CompletedProcess[str]:
    return clients.run(tool("crane"), "manifest", "--insecure", f"{reg.addr}/{NS}/{repo}:v1", check=False)


def wait_pull(reg: RegistryProcess, clients: Clients, repo: str, *, ok: bool, within: float = 10.0) -> str:
    deadline = time.monotonic() + within
    while True:
        proc = pull(reg, clients, repo)
        if (proc.returncode == 0) == ok:
            return proc.stderr
        assert time.monotonic() < deadline, f"{repo}: pull {'refused' if ok else 'allowed'}: {proc.stderr[-500:]}"
        time.sleep(0.2)


COSIGN_FLAGS = ("--tlog-upload=false", "--allow-insecure-registry", "--allow-http-registry",
                "--use-signing-config=false", "-y")


def test_cosign_and_notation_through_the_gate(setup: tuple[RegistryProcess, Clients]) -> None:
    reg, clients = setup
    cosign, notation = tool("cosign"), tool("notation")
    images = {repo: push(reg, clients, repo) for repo in ("tag", "bundle", "other", "unsigned", "notary", "stranger",
                                                          "cose")}
    ref = {repo: f"{reg.addr}/{NS}/{repo}@{digest}" for repo, digest in images.items()}
    # Signing reads the image, so it happens before the policy gates pulls (see the README).
    clients.run(cosign, "sign", "--key", "cosign.key", "--new-bundle-format=false", *COSIGN_FLAGS, ref["tag"])
    clients.run(cosign, "sign", "--key", "cosign.key", *COSIGN_FLAGS, ref["bundle"])
    clients.run(cosign, "sign", "--key", "other.key", *COSIGN_FLAGS, ref["other"])
    creds = ("-u", "admin", "-p", clients.key, "--insecure-registry")
    clients.run(notation, "sign", *creds, ref["notary"])
    clients.run(notation, "sign", *creds, "--signature-format", "cose", ref["cose"])
    clients.run(notation, "sign", *creds, "--key", "stranger", ref["stranger"])
    pub = (clients.tmp / "cosign.pub").read_text()
    status, body = api(reg, clients, "PUT", f"/v1/registry/namespaces/{NS}/policy",
                       {"signing": {"verify_signature": True, "keys": [pub]}})
    assert status == 200, body
    for repo in ("tag", "bundle", "notary", "cose"):
        wait_pull(reg, clients, repo, ok=True)
    assert "has no signature" in wait_pull(reg, clients, "unsigned", ok=False)
    assert "no trusted key verifies" in wait_pull(reg, clients, "other", ok=False)
    assert "trusted root" in wait_pull(reg, clients, "stranger", ok=False)
    # What the signer recorded, over the API.
    status, listed = api(reg, clients, "GET", f"/v1/registry/{NS}/bundle/v1/signatures")
    assert status == 200, listed
    [entry] = listed["signatures"]  # type: ignore[index]
    assert entry["format"] == "cosign-bundle" and entry["verified"] and entry["key_id"].startswith("sha256:")
    status, listed = api(reg, clients, "GET", f"/v1/registry/{NS}/cose/v1/signatures")
    assert listed["signatures"][0]["format"] == "notation" and "CN=test" in listed["signatures"][0]["identity"]  # type: ignore[index]
    # cosign itself agrees about the tag-mode signature.
    clients.run(cosign, "verify", "--key", "cosign.pub", "--insecure-ignore-tlog", "--allow-insecure-registry",
                "--allow-http-registry", ref["tag"])


def test_server_side_signature_verifies_with_cosign(setup: tuple[RegistryProcess, Clients]) -> None:
    reg, clients = setup
    cosign = tool("cosign")
    digest = push(reg, clients, "server")
    status, key = api(reg, clients, "POST", f"/v1/registry/namespaces/{NS}/keys",
                      {"name": "release", "algorithm": "ecdsa-p256"})
    assert status == 201, key
    assert key["uri"] == f"hanzo-kms://projects/{NS}/keys/release"  # type: ignore[index]
    status, signed = api(reg, clients, "POST", f"/v1/registry/{NS}/server/v1/sign", {"key": key["uri"]})  # type: ignore[index]
    assert status == 200 and signed["format"] == "cosign", signed  # type: ignore[index]
    (clients.tmp / "server.pub").write_text(key["public_key"])  # type: ignore[index]
    status, body = api(reg, clients, "PUT", f"/v1/registry/namespaces/{NS}/policy",
                       {"signing": {"verify_signature": True,
                                    "keys": [(clients.tmp / "cosign.pub").read_text(), key["public_key"]]}})  # type: ignore[index]
    assert status == 200, body
    wait_pull(reg, clients, "server", ok=True)
    ref = f"{reg.addr}/{NS}/server@{digest}"
    flags = ("--insecure-ignore-tlog", "--allow-insecure-registry", "--allow-http-registry")
    clients.run(cosign, "verify", "--key", "server.pub", *flags, ref)
    assert clients.run(cosign, "verify", "--key", "other.pub", *flags, ref, check=False).returncode != 0
    # Rotation: the new version signs, the old signature keeps verifying.
    status, rotated = api(reg, clients, "POST", f"/v1/registry/namespaces/{NS}/keys/release/versions")
    assert status == 200 and len(rotated["versions"]) == 2, rotated  # type: ignore[index]
    clients.run(cosign, "verify", "--key", "server.pub", *flags, ref)
    # The CLI signs with the new version; cosign verifies it with the new public key.
    out = clients.run(EXECUTABLE, "sign", f"{NS}/server:v1", "--key", key["uri"], "--registry",  # type: ignore[index]
                      f"http://{reg.addr}", "--user", "admin", "--api-key", clients.key)
    assert "signed: sha256:" in out.stdout
    (clients.tmp / "server2.pub").write_text(rotated["public_key"])  # type: ignore[index]
    clients.run(cosign, "verify", "--key", "server2.pub", *flags, ref)
    clients.run(cosign, "verify", "--key", "server.pub", *flags, ref)
