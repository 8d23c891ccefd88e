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


@pytest.mark.parametrize("args", [("--help",), ("tag", "--help")])
def test_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    modules = _imported(*args)
    assert "services.cli.main" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], heavy


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["tag", "--help"])
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
