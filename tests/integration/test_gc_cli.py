"""`hanzo-registry gc run|history` against real processes: `serve` (the gateway calls the gc servicer
in-process) and, distributed, `hanzo-registry distribution` with gc.grpc_addr pointing at a separate
`hanzo-registry gc` process."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.registry_process import ASSEMBLIES, EXECUTABLE, free_port, registry_process

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = f"hzr_{secrets.token_hex(6)}_{secrets.token_hex(32)}"


def _cli(addr: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HANZO_REGISTRY_API_KEY": ADMIN_KEY}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "gc", *args, "--registry", f"http://{addr}", "--user", "admin"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@contextlib.contextmanager
def gc_process(env: dict[str, str], grpc_addr: str, log: Path) -> Iterator[None]:
    full = {**env, "HANZO_REGISTRY_SERVER__GRPC_ADDR": grpc_addr, "HANZO_REGISTRY_SERVER__OPS_ADDR": "127.0.0.1:0"}
    with log.open("wb") as out:
        proc = subprocess.Popen([str(EXECUTABLE), "gc"], env=full, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        host, _, port = grpc_addr.rpartition(":")
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
                break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]


@pytest.mark.parametrize("assembly", ASSEMBLIES)
def test_gc_run_wait_and_history(assembly: str, tmp_path: Path) -> None:
    grpc_addr = f"127.0.0.1:{free_port()}"
    env = {"HANZO_REGISTRY_AUTH__MODE": "token", "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
           "HANZO_REGISTRY_GC__ENABLED": "false"}
    if assembly == "distributed":
        env["HANZO_REGISTRY_GC__GRPC_ADDR"] = grpc_addr
    with registry_process(assembly, tmp_path, env=env) as reg:
        gc = gc_process(reg.env, grpc_addr, tmp_path / "gc.log") if assembly == "distributed" \
            else contextlib.nullcontext()
        with gc:
            empty = _cli(reg.addr, "history")
            assert empty.returncode == 0 and empty.stdout == "no GC runs yet\n", empty.stderr
            done = _cli(reg.addr, "run", "--dry-run", "--wait")
            assert done.returncode == 0, done.stderr
            assert "succeeded (dry run)  cli" in done.stdout
            started = _cli(reg.addr, "run")
            assert started.returncode == 0 and started.stdout.startswith("GC run "), started.stderr
            run_id = started.stdout.split()[2]
            for _ in range(200):
                listed = _cli(reg.addr, "history", "--limit", "5")
                rows = [line.split() for line in listed.stdout.splitlines()[1:]]
                if rows and rows[0][1] != "running":
                    break
                time.sleep(0.2)
            assert rows[0][:4] == [run_id, "succeeded", "cli", "no"] and rows[1][3] == "yes", listed.stdout
    assert _cli(reg.addr, "history").returncode == 3
