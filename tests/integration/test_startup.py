"""The real `hanzo-registry` entry point: a server that cannot start says why in one line on stderr (the setting and
the fix), exits 2 and writes nothing; `check-config` fails on the same; a server that starts first says where it
listens."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.integration.certs import TestCA
from tests.integration.registry_process import EXECUTABLE, free_port


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("HANZO_REGISTRY_")},
        "HANZO_REGISTRY_DATA_DIR": str(data_dir),
        "HANZO_REGISTRY_ADDR": f"127.0.0.1:{free_port()}",
        "HANZO_REGISTRY_SERVER__BACKEND_WAIT_SECONDS": "1",
        **extra,
    }


def _run(command: str, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXECUTABLE), command], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


CERT, KEY = "HANZO_REGISTRY_SERVER__TLS__CERT_FILE", "HANZO_REGISTRY_SERVER__TLS__KEY_FILE"
META = "HANZO_REGISTRY_METADATA__URI"


def _problems(tmp_path: Path, busy: int) -> dict[str, tuple[dict[str, str], str]]:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    (tmp_path / "a-file").write_text("")
    return {
        "bad addr": ({"HANZO_REGISTRY_ADDR": "http://127.0.0.1:5000"}, "HANZO_REGISTRY_ADDR"),
        "port in use": ({"HANZO_REGISTRY_ADDR": f"127.0.0.1:{busy}"}, "HANZO_REGISTRY_ADDR"),
        "unwritable data dir": (
            {"HANZO_REGISTRY_DATA_DIR": str(tmp_path / "a-file" / "data")},
            "HANZO_REGISTRY_DATA_DIR",
        ),
        "unreachable backend": (
            {"HANZO_REGISTRY_METADATA__KIND": "mongo", META: f"mongodb://127.0.0.1:{free_port()}"},
            META,
        ),
        "bad TLS file": ({CERT: str(not_pem), KEY: str(not_pem)}, CERT),
        "TLS key of another certificate": ({}, KEY),  # filled in below
    }


PROBLEMS = ["bad addr", "port in use", "unwritable data dir", "unreachable backend", "bad TLS file",
            "TLS key of another certificate"]


@pytest.mark.parametrize("command", ["serve", "check-config"])
@pytest.mark.parametrize("problem", PROBLEMS)
def test_a_server_that_cannot_start_says_why_in_one_line(
    problem: str, command: str, tmp_path: Path, busy_port: int
) -> None:
    extra, setting = _problems(tmp_path, busy_port)[problem]
    if problem == "TLS key of another certificate":
        ca = TestCA.create(tmp_path / "ca")
        one, other = ca.issue(tmp_path / "one", "one"), ca.issue(tmp_path / "other", "other")
        extra = {CERT: str(one.cert), KEY: str(other.key)}
    data = tmp_path / "data"
    env = {**_env(data), **extra}
    started = time.monotonic()
    proc = _run(command, env, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("hanzo-registry: ") and setting in lines[0], lines[0]
    assert proc.stdout == ""
    assert not data.exists(), "nothing is written for a server that cannot start"
    assert time.monotonic() - started < 30  # the backend retry is bounded


def _wait_healthy(addr: str, *, tls: bool = False) -> None:
    import ssl
    import urllib.request

    context = ssl._create_unverified_context() if tls else None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{'https' if tls else 'http'}://{addr}/healthz", timeout=2, context=context):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("not healthy")


def _start(env: Mapping[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(EXECUTABLE), "serve"], env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def test_the_first_line_says_where_it_listens(tmp_path: Path) -> None:
    env = _env(tmp_path / "data", HANZO_REGISTRY_TELEMETRY__LOG_FORMAT="json")
    proc = _start(env, tmp_path)
    try:
        assert proc.stderr is not None
        first = json.loads(proc.stderr.readline())
        _wait_healthy(env["HANZO_REGISTRY_ADDR"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert first["msg"].startswith(f"listening on http://{env['HANZO_REGISTRY_ADDR']} "), first
    assert proc.returncode == 0


def test_console_format_and_https_in_the_listening_line(tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path / "ca")
    server = ca.issue(tmp_path / "server", "registry")
    env = _env(
        tmp_path / "data",
        HANZO_REGISTRY_TELEMETRY__LOG_FORMAT="console",
        HANZO_REGISTRY_SERVER__TLS__CERT_FILE=str(server.cert),
        HANZO_REGISTRY_SERVER__TLS__KEY_FILE=str(server.key),
    )
    proc = _start(env, tmp_path)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        _wait_healthy(env["HANZO_REGISTRY_ADDR"], tls=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert f"INFO    hanzo-registry listening on https://{env['HANZO_REGISTRY_ADDR']} " in first, first
    assert not first.startswith("{")


def test_check_config_passes_when_serve_would_start(tmp_path: Path) -> None:
    proc = _run("check-config", _env(tmp_path / "data"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["addr"].startswith("127.0.0.1:")
    assert not (tmp_path / "data").exists()


def test_a_fixed_grpc_port_in_use_is_found_first(tmp_path: Path, busy_port: int) -> None:
    env = _env(tmp_path / "data", HANZO_REGISTRY_SERVER__GRPC_ADDR=f"127.0.0.1:{busy_port}")
    proc = _run("serve", env, tmp_path)
    assert proc.returncode == 2 and "HANZO_REGISTRY_SERVER__GRPC_ADDR" in proc.stderr, proc.stderr
    assert not (tmp_path / "data").exists()
