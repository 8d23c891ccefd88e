"""The `hanzo-registry` OCI commands against a registry process of each assembly (token auth): model push,
pull, inspect and ls; push/pull of files; ls, inspect, tag, rm; login into a docker config; the oras CLI and
oras-py pull what the CLI pushed and the CLI pulls what they pushed; one-line errors with their exit codes."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import infra
from tests.integration.registry_process import ASSEMBLIES, RegistryProcess, registry_process
from tests.unit.models import makers

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = f"hzr_{secrets.token_hex(6)}_{secrets.token_hex(32)}"


@pytest.fixture(scope="module", params=ASSEMBLIES)
def registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    env = {"HANZO_REGISTRY_AUTH__MODE": "token", "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": ADMIN_KEY}
    with registry_process(request.param, tmp_path_factory.mktemp(request.param), env=env) as reg:
        yield reg


def cli(*args: str | Path, key: str | None = ADMIN_KEY, env: dict[str, str] | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HANZO_REGISTRY_", "DOCKER_CONFIG"))}
    full["DOCKER_CONFIG"] = str(Path(os.environ.get("PYTEST_TMP_DOCKER", "/nonexistent-docker-config")))
    if key is not None:
        full["HANZO_REGISTRY_API_KEY"] = key
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "services.cli.main", *map(str, args), *(["-u", "admin"]
                           if key is not None and args and args[0] not in ("logout", "tag") else [])],
                          cwd=ROOT, env=full, capture_output=True, text=True, timeout=120, check=False, input=stdin)


def ok(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.lstrip().startswith(("{", "[")) else proc.stdout


def oras_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([infra("HANZO_TOOL_ORAS"), *map(str, args), "--plain-http", "-u", "admin", "-p",
                           ADMIN_KEY], cwd=cwd, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.startswith(".")}


def test_model_push_inspect_pull_ls_tag_rm(registry: RegistryProcess, tmp_path: Path) -> None:
    addr = registry.addr
    model = tmp_path / "model"
    model.mkdir()
    made = makers.safetensors_model(model / "model.safetensors")
    makers.hf_config(model / "config.json")
    makers.tokenizer_json(model / "tokenizer.json")
    ref = f"{addr}/cli/llama:v1"

    pushed = ok(cli("model", "push", model, ref, "-o", "json"))
    assert pushed["artifact_type"] == "application/vnd.hanzo.model.v1"
    media = {f["name"]: f["media_type"] for f in pushed["files"]}
    assert media == {"model.safetensors": "application/vnd.hanzo.safetensors", "config.json": "application/json",
                     "tokenizer.json": "application/json"}

    view = ok(cli("model", "inspect", ref, "-o", "json"))
    assert (view["status"], view["format"], view["parameters"]) == ("indexed", "safetensors", made.parameters)
    assert view["architecture"] == "LlamaForCausalLM"
    text = ok(cli("model", "inspect", ref))
    assert f"({made.parameters})" in text and "LlamaForCausalLM" in text

    inspected = ok(cli("inspect", ref, "-o", "json"))
    assert inspected["digest"] == pushed["digest"]
    assert inspected["total_size"] == 2 + sum(p.stat().st_size for p in model.iterdir())
    assert inspected["model"]["parameters"] == made.parameters

    ok(cli("model", "pull", ref, tmp_path / "pulled"))
    assert files_of(tmp_path / "pulled") == files_of(model)

    assert "cli/llama" in ok(cli("ls", addr, "-o", "json"))["repositories"]
    ok(cli("tag", "--registry", addr, "--user", "admin", "cli/llama", "v1", "stable"))
    assert sorted(ok(cli("ls", f"{addr}/cli/llama", "-o", "json"))["tags"]) == ["stable", "v1"]
    listed = ok(cli("model", "ls", addr, "-o", "json", "--format", "safetensors"))
    assert [(m["repository"], m["parameters"]) for m in listed] == [("cli/llama", made.parameters)]

    ok(cli("rm", f"{addr}/cli/llama:stable"))
    gone = cli("inspect", ref)
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1 and "not found" in gone.stderr, gone.stderr


def test_generic_files_and_errors(registry: RegistryProcess, tmp_path: Path) -> None:
    addr = registry.addr
    data = tmp_path / "notes.txt"
    data.write_bytes(os.urandom(3000))
    pushed = ok(cli("push", f"{addr}/cli/files:v1", f"{data}:text/plain", "-a", "team=ml", "-o", "json"))
    assert pushed["files"][0]["media_type"] == "text/plain"
    ok(cli("pull", f"{addr}/cli/files:v1", "--dir", tmp_path / "out"))
    assert (tmp_path / "out" / "notes.txt").read_bytes() == data.read_bytes()
    not_model = cli("model", "inspect", f"{addr}/cli/files:v1")
    assert not_model.returncode == 1 and "is not a model" in not_model.stderr

    def one_line(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
        assert proc.returncode == code, proc.stderr
        assert proc.stderr.count("\n") == 1 and text in proc.stderr, proc.stderr
        assert ADMIN_KEY not in proc.stderr

    one_line(cli("push", f"{addr}/Bad Name:v1", data), 2, "bad reference")
    one_line(cli("push", f"{addr}/cli/files:v2", tmp_path / "missing.bin"), 2, "no such file")
    one_line(cli("pull", f"{addr}/cli/files:v1", key="hzr_wrong_" + "0" * 64), 1, "authentication failed")
    one_line(cli("pull", f"{addr}/cli/files:nope"), 1, "not found")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one_line(cli("pull", f"127.0.0.1:{port}/cli/files:v1"), 3, "cannot reach")
    anonymous = cli("ls", f"{addr}/cli/files", key=None)
    assert anonymous.returncode == 1 and "login" in anonymous.stderr


def test_login_writes_a_docker_config_others_read(registry: RegistryProcess, tmp_path: Path) -> None:
    addr = registry.addr
    docker = tmp_path / "docker"
    env = {"DOCKER_CONFIG": str(docker)}
    login = subprocess.run([sys.executable, "-m", "services.cli.main", "login", addr, "-u", "admin",
                            "--password-stdin"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                           input=ADMIN_KEY + "\n",
                           env={**{k: v for k, v in os.environ.items() if not k.startswith("HANZO_")}, **env})
    assert login.returncode == 0, login.stderr
    config = json.loads((docker / "config.json").read_text())
    assert addr in config["auths"]
    assert (docker / "config.json").stat().st_mode & 0o077 == 0
    data = tmp_path / "f.bin"
    data.write_bytes(b"x" * 100)
    ok(cli("push", f"{addr}/cli/login:v1", data, key=None, env=env))
    # oras reads the same file
    proc = subprocess.run([infra("HANZO_TOOL_ORAS"), "pull", "--plain-http", f"{addr}/cli/login:v1", "-o",
                           str(tmp_path / "o")], env={**os.environ, **env}, capture_output=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "f.bin").read_bytes() == data.read_bytes()
    ok(cli("logout", addr, key=None, env=env))
    assert addr not in json.loads((docker / "config.json").read_text())["auths"]


def test_oras_cli_and_oras_py_interoperate_with_the_cli(registry: RegistryProcess, tmp_path: Path) -> None:
    import oras.client

    addr = registry.addr
    model = tmp_path / "model"
    model.mkdir()
    makers.gguf_model(model / "model.gguf")
    makers.hf_config(model / "config.json")
    ok(cli("model", "push", model, f"{addr}/interop/cli:v1"))

    oras_cli("pull", f"{addr}/interop/cli:v1", "-o", tmp_path / "by-oras")
    assert files_of(tmp_path / "by-oras") == files_of(model)
    client = oras.client.OrasClient(insecure=True)
    client.login("admin", ADMIN_KEY, hostname=addr, config_path=str(tmp_path / "oras-py.json"))
    client.pull(f"{addr}/interop/cli:v1", outdir=str(tmp_path / "by-oras-py"))
    assert files_of(tmp_path / "by-oras-py") == files_of(model)

    oras_cli("push", f"{addr}/interop/oras:v1", "--artifact-type", "application/vnd.hanzo.model.v1",
         "model.gguf:application/vnd.hanzo.gguf", "config.json:application/json", cwd=model)
    ok(cli("model", "pull", f"{addr}/interop/oras:v1", tmp_path / "from-oras"))
    assert files_of(tmp_path / "from-oras") == files_of(model)
    view = ok(cli("model", "inspect", f"{addr}/interop/oras:v1", "-o", "json"))
    assert (view["format"], view["architecture"]) == ("gguf", "llama")

    # a fresh client: oras-py 0.2 keeps its first token and does not ask for a new scope on a POST
    client = oras.client.OrasClient(insecure=True)
    client.login("admin", ADMIN_KEY, hostname=addr, config_path=str(tmp_path / "oras-py.json"))
    client.push(f"{addr}/interop/oraspy:v1", files=[f"{model / 'model.gguf'}:application/vnd.hanzo.gguf"],
                disable_path_validation=True, quiet=True)
    ok(cli("pull", f"{addr}/interop/oraspy:v1", "--dir", tmp_path / "from-oras-py"))
    assert (tmp_path / "from-oras-py" / "model.gguf").read_bytes() == (model / "model.gguf").read_bytes()


def test_a_pushed_model_is_indexed_without_being_viewed(registry: RegistryProcess, tmp_path: Path) -> None:
    """`serve` runs the scanner, whose consumer of the manifests topic indexes model views on push: the listing
    shows a model nobody has looked at yet. (The distributed registry process here is `distribution` alone.)"""
    import http.client
    import time

    if registry.assembly != "embedded":
        pytest.skip("only `serve` runs the scanner in the registry process of this module")
    model = tmp_path / "model"
    model.mkdir()
    makers.gguf_model(model / "model.gguf")
    oras_cli("push", f"{registry.addr}/indexed/oras:v1", "--artifact-type", "application/vnd.hanzo.model.v1",
             "model.gguf:application/vnd.hanzo.gguf", cwd=model)
    deadline = time.monotonic() + 30
    while True:
        conn = http.client.HTTPConnection(registry.host, registry.port, timeout=10)
        conn.request("GET", "/v1/registry/models?limit=100", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        body = json.loads(conn.getresponse().read())
        conn.close()
        if any(m.get("repository") == "indexed/oras" for m in body.get("models", [])):
            return
        assert time.monotonic() < deadline, body
        time.sleep(0.3)
