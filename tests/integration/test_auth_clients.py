"""Real clients log in to a real registry process with token auth (the default), on both assemblies:
crane, skopeo and oras; roles seen through them; failed-login limits per source address; and the
process's (DEBUG) logs never contain a key or a token."""

from __future__ import annotations

import base64
import http.client
import json
import os
import stat
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import infra
from tests.integration import images
from tests.integration.registry_process import ASSEMBLIES, RegistryProcess, registry_process

pytestmark = pytest.mark.client

TOKEN_AUTH = {"HANZO_REGISTRY_AUTH__MODE": "token", "HANZO_REGISTRY_TELEMETRY__LOG_LEVEL": "DEBUG"}


@pytest.fixture(scope="module", params=ASSEMBLIES)
def registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with registry_process(request.param, tmp_path_factory.mktemp(f"auth-{request.param}"), env=TOKEN_AUTH) as reg:
        yield reg


SECRETS: list[str] = []
"""Every key and token the tests of this module handled; the last test greps the logs for them."""


def admin_key(reg: RegistryProcess) -> str:
    key = (reg.data_dir / "bootstrap-admin.key").read_text().strip()
    SECRETS.append(key)
    return key


def call(reg: RegistryProcess, method: str, path: str, *, headers: Mapping[str, str] | None = None,
         body: bytes | None = None, source: str | None = None) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection(reg.host, reg.port, timeout=30,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        raw = resp.read()
        data = json.loads(raw) if raw and "json" in (resp.getheader("Content-Type") or "") else raw
        return resp.status, dict(resp.getheaders()), data
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def make_user(reg: RegistryProcess, name: str, namespace: str, role: str) -> str:
    admin = {"Authorization": f"Bearer {admin_key(reg)}", "Content-Type": "application/json"}
    status, _, _ = call(reg, "POST", "/v1/registry/users", headers=admin, body=json.dumps({"name": name}).encode())
    assert status == 201
    status, _, created = call(reg, "POST", f"/v1/registry/users/{name}/keys", headers=admin, body=b"{}")
    assert status == 201
    status, _, _ = call(reg, "POST", f"/v1/registry/{namespace}/permissions", headers=admin,
                        body=json.dumps({"user": name, "role": role}).encode())
    assert status == 201
    SECRETS.append(created["key"])
    return str(created["key"])


def run(reg: RegistryProcess, *cmd: str | Path, env: Mapping[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    args = [str(c) for c in cmd]
    proc = subprocess.run(args, capture_output=True, env={**os.environ, **(env or {})}, timeout=180, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"$ {' '.join(a if 'hzr_' not in a else '<key>' for a in args)}\nexit {proc.returncode}\n"
                    f"{proc.stdout.decode(errors='replace')[-3000:]}\n{proc.stderr.decode(errors='replace')[-3000:]}"
                    f"\n--- registry log\n{reg.log_tail(30)}")
    return proc


def test_bootstrap_admin_key_file_is_private_and_not_logged(registry: RegistryProcess) -> None:
    path = registry.data_dir / "bootstrap-admin.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    log = registry.log.read_text()
    assert str(path) in log and admin_key(registry) not in log
    status, headers, _ = call(registry, "GET", "/v2/")
    assert status == 401 and headers["WWW-Authenticate"].startswith('Bearer realm="http://')


def test_crane_login_push_pull(registry: RegistryProcess, tmp_path: Path) -> None:
    crane = infra("HANZO_TOOL_CRANE")
    env = {"DOCKER_CONFIG": str(tmp_path / "docker"), "HOME": str(tmp_path)}
    src = images.multi_layer_image(tmp_path / "src")
    ref = f"{registry.addr}/crane/app:v1"
    denied = run(registry, crane, "push", "--insecure", src.path, ref, env=env, check=False)
    assert denied.returncode != 0 and b"401" in denied.stderr
    run(registry, crane, "auth", "login", registry.addr, "-u", "admin", "-p", admin_key(registry), env=env)
    assert registry.addr in json.loads((tmp_path / "docker" / "config.json").read_text())["auths"]
    pushed = run(registry, crane, "push", "--insecure", src.path, ref, env=env).stdout.decode().strip()
    assert pushed.endswith(src.digest)
    assert run(registry, crane, "manifest", "--insecure", ref, env=env).stdout == src.top
    run(registry, crane, "copy", "--insecure", ref, f"{registry.addr}/crane/copy:v1", env=env)
    catalog = run(registry, crane, "catalog", "--insecure", registry.addr, env=env).stdout.decode().split()
    assert {"crane/app", "crane/copy"} <= set(catalog)
    # a reader pulls but cannot push (DENIED), and cannot touch another namespace
    reader_env = {"DOCKER_CONFIG": str(tmp_path / "reader"), "HOME": str(tmp_path)}
    run(registry, crane, "auth", "login", registry.addr, "-u", "reader", "-p",
        make_user(registry, "reader", "crane", "reader"), env=reader_env)
    assert run(registry, crane, "manifest", "--insecure", ref, env=reader_env).stdout == src.top
    denied = run(registry, crane, "tag", "--insecure", ref, "v2", env=reader_env, check=False)
    assert denied.returncode != 0 and b"DENIED" in denied.stderr
    assert run(registry, crane, "catalog", "--insecure", registry.addr, env=reader_env).stdout.decode().split() == [
        "crane/app", "crane/copy"]


def test_skopeo_login_copy(registry: RegistryProcess, tmp_path: Path) -> None:
    skopeo = infra("HANZO_TOOL_SKOPEO")
    authfile = tmp_path / "auth.json"
    src = images.multi_layer_image(tmp_path / "src")
    bad = run(registry, skopeo, "login", "--tls-verify=false", "--authfile", authfile, "-u", "admin",
              "-p", "hzr_000000000000_" + "0" * 64, registry.addr, check=False)
    assert bad.returncode != 0
    run(registry, skopeo, "login", "--tls-verify=false", "--authfile", authfile, "-u", "admin",
        "-p", admin_key(registry), registry.addr)
    dest = f"docker://{registry.addr}/skopeo/app:v1"
    run(registry, skopeo, "copy", "--authfile", authfile, "--dest-tls-verify=false", "--preserve-digests",
        src.oci_ref, dest)
    raw = run(registry, skopeo, "inspect", "--raw", "--tls-verify=false", "--authfile", authfile, dest).stdout
    assert raw == src.top
    run(registry, skopeo, "copy", "--authfile", authfile, "--src-tls-verify=false", dest,
        f"oci:{tmp_path / 'back'}:v1")
    assert images.read_layout(tmp_path / "back", "v1")[0] == src.top
    anonymous = run(registry, skopeo, "inspect", "--raw", "--tls-verify=false", "--no-creds", dest, check=False)
    assert anonymous.returncode != 0


def test_oras_login_push_pull(registry: RegistryProcess, tmp_path: Path) -> None:
    oras = infra("HANZO_TOOL_ORAS")
    config = tmp_path / "oras.json"
    (tmp_path / "model.safetensors").write_bytes(images.safetensors_bytes())
    run(registry, oras, "login", "--plain-http", "--registry-config", config, "-u", "hanzo",
        "-p", admin_key(registry), registry.addr)
    ref = f"{registry.addr}/models/tiny:v1"
    proc = subprocess.run([oras, "push", "--plain-http", "--registry-config", str(config), ref, "model.safetensors"],
                          cwd=tmp_path, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    run(registry, oras, "pull", "--plain-http", "--registry-config", config, "-o", tmp_path / "out", ref)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == images.safetensors_bytes()
    # a writer of another namespace may not push here
    writer = make_user(registry, "writer", "elsewhere", "writer")
    run(registry, oras, "login", "--plain-http", "--registry-config", tmp_path / "w.json", "-u", "writer",
        "-p", writer, registry.addr)
    proc = subprocess.run([oras, "push", "--plain-http", "--registry-config", str(tmp_path / "w.json"),
                           f"{registry.addr}/models/tiny:v2", "model.safetensors"],
                          cwd=tmp_path, capture_output=True, timeout=120, check=False)
    assert proc.returncode != 0 and b"403" in proc.stderr


def test_docker_style_login_with_refresh_token(registry: RegistryProcess) -> None:
    key = admin_key(registry)
    status, _, body = call(registry, "GET", "/token?service=hanzo-registry&account=admin&offline_token=true"
                           "&client_id=docker", headers=basic("admin", key))
    assert status == 200 and "refresh_token" in body
    SECRETS.extend([body["token"], body["refresh_token"]])
    status, _, _ = call(registry, "GET", "/v2/", headers={"Authorization": f"Bearer {body['token']}"})
    assert status == 200
    form = f"grant_type=refresh_token&service=hanzo-registry&client_id=docker&refresh_token={body['refresh_token']}"
    status, _, refreshed = call(registry, "POST", "/token", body=(form + "&scope=repository:crane/app:pull").encode(),
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and refreshed["scope"] == "repository:crane/app:pull"
    SECRETS.append(refreshed["access_token"])


def test_secrets_never_appear_in_the_logs(registry: RegistryProcess) -> None:
    # Runs last in this module: every key and token the tests above used went through this process.
    assert len(SECRETS) >= 5
    log = registry.log.read_text(errors="replace")
    assert "DEBUG" in log  # the registry logged at its most verbose
    for secret in SECRETS:
        assert secret not in log
        if secret.startswith("hzr_"):
            assert secret.rsplit("_", 1)[-1] not in log  # not even the secret part of a key
        else:  # a JWT: its signature is what makes it a credential
            assert secret.rsplit(".", 1)[-1] not in log
        assert base64.b64encode(f"admin:{secret}".encode()).decode() not in log


@pytest.mark.parametrize("assembly", ASSEMBLIES)
def test_failed_logins_are_limited_per_source_address(assembly: str, tmp_path: Path) -> None:
    env = {**TOKEN_AUTH, "HANZO_REGISTRY_AUTH__LOGIN_FAILURE_LIMIT": "5"}
    with registry_process(assembly, tmp_path, env=env) as reg:
        key = admin_key(reg)
        wrong = basic("admin", "hzr_000000000000_" + "1" * 64)
        for _ in range(5):
            assert call(reg, "GET", "/token?service=hanzo-registry", headers=wrong)[0] == 401
        status, headers, body = call(reg, "GET", "/token?service=hanzo-registry", headers=wrong)
        assert status == 429 and body["errors"][0]["code"] == "TOOMANYREQUESTS" and int(headers["Retry-After"]) > 0
        assert call(reg, "GET", "/v2/", headers=basic("admin", key))[0] == 429  # this source waits
        assert call(reg, "GET", "/v2/", headers={"Authorization": f"Bearer {key}"})[0] == 429
        # other sources are not locked out, not even the account that was attacked
        elsewhere = call(reg, "GET", "/token?service=hanzo-registry", headers=basic("admin", key), source="127.0.0.2")
        assert elsewhere[0] == 200
        assert call(reg, "GET", "/v2/", headers=basic("admin", key), source="127.0.0.3")[0] == 200
        assert call(reg, "GET", "/v2/", headers=wrong, source="127.0.0.3")[0] == 401
        # the failures are in the audit log, with their source address
        status, _, page = call(reg, "GET", "/v1/registry/audit?action=auth.login", headers=basic("admin", key),
                               source="127.0.0.2")
        assert status == 200
        failures = [e for e in page["entries"] if e["outcome"] == "failure"]
        assert len(failures) == 6 and {e["source_address"] for e in failures} == {"127.0.0.1", "127.0.0.3"}


def test_oras_python_pushes_and_pulls_with_its_default_token_auth(registry: RegistryProcess, tmp_path: Path) -> None:
    """oras-py (0.2.x) logs in with Basic, takes a token for the scope of the first challenge (a HEAD of a
    blob or manifest) and re-sends that token on a later 401; it fetches a new one only after a 403."""
    import oras.client

    files = images.model_artifact(tmp_path / "model")
    client = oras.client.OrasClient(hostname=registry.addr, insecure=True)
    client.login(username="admin", password=admin_key(registry), hostname=registry.addr,
                 config_path=str(tmp_path / "oras-py.json"))
    target = f"{registry.addr}/oraspy/auth:v1"
    response = client.push(
        target,
        files=[f"{tmp_path / 'model' / name}:{media_type}" for name, media_type in images.MODEL_FILES.items()],
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201, response.text
    pulled = client.pull(target, outdir=str(tmp_path / "out"))
    assert sorted(Path(p).name for p in pulled) == sorted(files)
    # A reader's default flow pulls, and is refused a push with DENIED, not left looping on 401s.
    reader = oras.client.OrasClient(hostname=registry.addr, insecure=True)
    reader.login(username="oraspy-reader", password=make_user(registry, "oraspy-reader", "oraspy", "reader"),
                 hostname=registry.addr, config_path=str(tmp_path / "reader-oras-py.json"))
    assert sorted(Path(p).name for p in reader.pull(target, outdir=str(tmp_path / "r"))) == sorted(files)


def test_podman_and_buildah_log_in_push_and_pull_with_token_auth(registry: RegistryProcess, tmp_path: Path) -> None:
    """Their default flow: `login` stores the key in an auth file; push and pull then run the token dance."""
    import shutil
    import tempfile

    podman_bin, buildah_bin = infra("HANZO_TOOL_PODMAN"), infra("HANZO_TOOL_BUILDAH")
    runroot = Path(tempfile.mkdtemp(prefix="hzr-run-"))  # podman refuses a runroot over 50 characters
    store = ["--root", str(tmp_path / "storage"), "--runroot", str(runroot), "--storage-driver", "vfs"]
    auth_file = tmp_path / "auth.json"
    auth_file.write_text('{"auths": {}}')  # they refuse an auth file path that does not exist
    # A home of its own: podman also reads ~/.docker/config.json and $XDG_RUNTIME_DIR/containers/auth.json.
    (tmp_path / "home").mkdir()
    env = {"STORAGE_DRIVER": "vfs", "TMPDIR": str(tmp_path), "REGISTRY_AUTH_FILE": str(auth_file),
           "HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "home"),
           "DOCKER_CONFIG": str(tmp_path / "home")}
    try:
        started = run(registry, buildah_bin, *store, "from", "scratch", env=env, check=False)
        if started.returncode != 0:
            reason = started.stderr.decode(errors="replace").strip()[-500:]
            if "user namespace" in reason.lower() or "unshare" in reason.lower():
                pytest.skip(f"buildah cannot use user namespaces here: {reason}")
            pytest.fail(f"buildah from scratch failed: {reason}")
        container = started.stdout.decode().strip()
        (tmp_path / "hello.txt").write_bytes(os.urandom(16).hex().encode())
        run(registry, buildah_bin, *store, "copy", container, tmp_path / "hello.txt", "/hello.txt", env=env)
        run(registry, buildah_bin, *store, "commit", "--quiet", container, "localhost/hanzo-auth:1", env=env)
        ref = f"{registry.addr}/containers/app:v1"
        # Without a login: refused (its first request is a HEAD, whose 401 carries no body to quote).
        denied = run(registry, podman_bin, *store, "push", "--tls-verify=false", "localhost/hanzo-auth:1",
                     f"docker://{ref}", env=env, check=False)
        assert denied.returncode != 0 and b"401" in denied.stderr
        run(registry, podman_bin, *store, "login", "--tls-verify=false", "-u", "admin", "-p", admin_key(registry),
            registry.addr, env=env)
        assert registry.addr in json.loads(auth_file.read_text())["auths"]
        run(registry, podman_bin, *store, "push", "--tls-verify=false", "--digestfile", tmp_path / "p.digest",
            "localhost/hanzo-auth:1", f"docker://{ref}", env=env)
        run(registry, buildah_bin, *store, "push", "--tls-verify=false", "--digestfile", tmp_path / "b.digest",
            "localhost/hanzo-auth:1", f"docker://{registry.addr}/containers/built:v1", env=env)
        digest = (tmp_path / "p.digest").read_text().strip()
        assert (tmp_path / "b.digest").read_text().strip() == digest
        run(registry, podman_bin, *store, "rmi", "--all", "--force", env=env)
        run(registry, podman_bin, *store, "pull", "--tls-verify=false", f"{ref.rsplit(':', 1)[0]}@{digest}", env=env)
        # A reader of the namespace pulls with its own login but cannot push.
        reader_auth = tmp_path / "reader.json"
        reader_auth.write_text('{"auths": {}}')
        reader_env = {**env, "REGISTRY_AUTH_FILE": str(reader_auth)}
        reader_key = make_user(registry, "containers-reader", "containers", "reader")
        run(registry, podman_bin, *store, "login", "--tls-verify=false", "-u", "containers-reader", "-p", reader_key,
            registry.addr, env=reader_env)
        run(registry, podman_bin, *store, "pull", "--tls-verify=false", ref, env=reader_env)
        refused = run(registry, podman_bin, *store, "push", "--tls-verify=false", ref,
                      f"docker://{registry.addr}/containers/other:v1", env=reader_env, check=False)
        assert refused.returncode != 0 and (b"denied" in refused.stderr.lower() or b"403" in refused.stderr)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
