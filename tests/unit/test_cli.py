"""The `hanzo-registry` command line: fast to start (no heavy imports for --help), the registry found like docker
finds it, exit codes documented, a missing key explained."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.cli import tag
from services.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("aiohttp", "pydantic", "pydantic_settings", "grpc", "opentelemetry", "prometheus_client", "yaml")


def _imported(*args: str) -> set[str]:
    proc = subprocess.run(
        # what the `hanzo-registry` console script does
        [sys.executable, "-X", "importtime", "-c", "import sys; from services.cli.main import main; sys.exit(main())",
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip())
    return modules


@pytest.mark.parametrize("args", [("--help",), ("tag", "--help"), ("push", "--help"), ("model", "push", "--help"),
                                  ("ls", "--help"), ("inspect", "--help")])
def test_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    modules = _imported(*args)
    assert "services.cli.main" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], heavy


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tag", "--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "HANZO_REGISTRY_URL" in out and "HANZO_REGISTRY_ADDR" in out
    for code in ("0", "1", "2", "3"):
        assert f"\n  {code}  " in out


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:5000", ["https://127.0.0.1:5000", "http://127.0.0.1:5000"]),
        ("localhost:5000", ["https://localhost:5000", "http://localhost:5000"]),
        ("[::1]:5000", ["https://[::1]:5000", "http://[::1]:5000"]),
        ("0.0.0.0:5000", ["https://127.0.0.1:5000", "http://127.0.0.1:5000"]),
        ("cr.example.com:443", ["https://cr.example.com:443"]),
        ("cr.example.com", ["https://cr.example.com"]),
        ("http://cr.example.com:5000/", ["http://cr.example.com:5000"]),
    ],
)
def test_host_port_is_https_first_and_http_only_for_loopback(given: str, expected: list[str]) -> None:
    assert tag.candidates(given) == expected


def test_registry_comes_from_argument_then_url_then_addr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HANZO_REGISTRY_API_KEY", raising=False)
    assert tag.target_from(None, "u", None).registry == "https://127.0.0.1:5000"
    monkeypatch.setenv("HANZO_REGISTRY_ADDR", "127.0.0.1:6000")
    assert tag.target_from(None, "u", None).fallbacks == ("http://127.0.0.1:6000",)
    monkeypatch.setenv("HANZO_REGISTRY_URL", "https://cr.example")
    assert tag.target_from(None, "u", None).registry == "https://cr.example"
    assert tag.target_from("http://other:1", "u", None).registry == "http://other:1"


class _Wants401(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}'
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def plain_http_registry() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Wants401)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def test_a_missing_key_says_how_to_give_one(
    plain_http_registry: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HANZO_REGISTRY_API_KEY", raising=False)
    # host:port on loopback: https is tried first, then plain http answers
    code = main(["tag", "--registry", f"127.0.0.1:{plain_http_registry}", "team/app", "v1", "v2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "401" in err and "HANZO_REGISTRY_API_KEY" in err and "--key" in err


def test_an_unreachable_registry_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["tag", "--registry", f"127.0.0.1:{port}", "team/app", "v1", "v2"]) == 3
    assert "cannot reach" in capsys.readouterr().err


# --- the OCI commands (services/cli/oci.py) ---


def test_references_default_to_the_local_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.cli import oci

    for name in ("HANZO_REGISTRY_URL", "HANZO_REGISTRY_ADDR"):
        monkeypatch.delenv(name, raising=False)
    assert str(oci.parse_reference("team/llama:v1")) == "127.0.0.1:5000/team/llama:v1"
    assert str(oci.parse_reference("cr.example.com/team/llama")) == "cr.example.com/team/llama:latest"
    monkeypatch.setenv("HANZO_REGISTRY_ADDR", "0.0.0.0:6000")
    assert str(oci.parse_reference("team/llama@sha256:" + "a" * 64)).startswith("127.0.0.1:6000/team/llama@")
    monkeypatch.setenv("HANZO_REGISTRY_URL", "http://reg.internal:5000")
    assert oci.parse_reference("team/llama").repository.registry == "reg.internal:5000"
    assert oci.default_registry() == ("reg.internal:5000", True)


@pytest.mark.parametrize("bad", ["Team/App:v1", "https://cr.example.com/a:b", "team/app:bad tag", "a@sha256:xyz"])
def test_bad_references_exit_2(bad: str) -> None:
    from services.cli import oci

    with pytest.raises(oci.CliError) as info:
        oci.parse_reference(bad)
    assert info.value.exit_code == 2 and "bad reference" in str(info.value)


def test_plain_http_follows_docker_and_the_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import argparse
    import io

    from services.cli import oci
    from services.core.client.transport import base_url

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("HANZO_REGISTRY_URL", raising=False)
    monkeypatch.delenv("HANZO_REGISTRY_API_KEY", raising=False)
    args = argparse.Namespace(plain_http=False, insecure=False, ca_file=None, username=None, password_stdin=False)
    opts = oci.options(args, ["127.0.0.1:5000", "cr.example.com"], io.StringIO())
    assert str(base_url("127.0.0.1:5000", opts.for_registry("127.0.0.1:5000"))) == "http://127.0.0.1:5000"
    assert str(base_url("cr.example.com", opts.for_registry("cr.example.com"))) == "https://cr.example.com"
    args.plain_http, args.insecure = True, True
    opts = oci.options(args, ["cr.example.com"], io.StringIO())
    assert opts.for_registry("cr.example.com").plain_http is True
    assert opts.for_registry("cr.example.com").insecure is True


def test_credentials_come_from_the_key_then_the_docker_config(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    import argparse
    import io
    import json

    from services.cli import dockerconfig, oci

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("HANZO_REGISTRY_API_KEY", raising=False)
    args = argparse.Namespace(username=None, password_stdin=False)
    assert oci.credentials(args, "reg:5000", io.StringIO()) is None
    path = dockerconfig.store("reg:5000", "alice", "s3cret")
    assert path == tmp_path / "config.json" and (path.stat().st_mode & 0o777) == 0o600
    assert json.loads(path.read_text())["auths"]["reg:5000"]["auth"] == "YWxpY2U6czNjcmV0"
    creds = oci.credentials(args, "reg:5000", io.StringIO())
    assert creds is not None and (creds.username, creds.password) == ("alice", "s3cret")
    monkeypatch.setenv("HANZO_REGISTRY_API_KEY", "hzr_key")
    creds = oci.credentials(args, "reg:5000", io.StringIO())
    assert creds is not None and (creds.username, creds.password) == ("hanzo", "hzr_key")
    args = argparse.Namespace(username="bob", password_stdin=True)
    creds = oci.credentials(args, "reg:5000", io.StringIO("from-stdin\n"))
    assert creds is not None and (creds.username, creds.password) == ("bob", "from-stdin")
    assert dockerconfig.erase("reg:5000") and dockerconfig.get("reg:5000") is None


def test_model_files_get_the_products_media_types(tmp_path: Path) -> None:
    from services.cli import oci

    for name in ("model.safetensors", "adapter_model.safetensors", "model.gguf", "model.onnx", "pytorch_model.bin",
                 "config.json", "README.md", ".hidden"):
        (tmp_path / name).write_bytes(b"x")
    types = {f.title: f.media_type for f in oci.model_files(tmp_path)}
    assert types == {
        "model.safetensors": "application/vnd.hanzo.safetensors",
        "adapter_model.safetensors": "application/vnd.hanzo.lora",
        "model.gguf": "application/vnd.hanzo.gguf",
        "model.onnx": "application/vnd.hanzo.onnx",
        "pytorch_model.bin": "application/vnd.hanzo.pytorch",
        "config.json": "application/json",
        "README.md": "application/octet-stream",
    }


@pytest.mark.parametrize("title", ["../evil", "a/b", "..", "", "x\\y"])
def test_pulled_titles_must_be_plain_names(title: str) -> None:
    from services.cli import oci

    with pytest.raises(oci.CliError):
        oci._check_title(title)


def test_oci_commands_explain_errors_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["push", f"127.0.0.1:{port}/team/x:v1", str(tmp_path / "missing")]) == 2
    assert main(["ls", f"127.0.0.1:{port}/team/x"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "no such file" in err[0] and "cannot reach" in err[1]
