"""Large files through the `hanzo-registry` CLI (issue 16, item 4): a multi-GB push killed with SIGKILL mid-way
continues its chunked upload from the registry's offset when run again (the session saved under
$XDG_CACHE_HOME/hanzo-registry/uploads/), and a pull killed mid-way continues its `.part` file with `Range`;
the pulled file has the pushed file's sha256. Both assemblies (the distributed one stores the chunks as S3
multipart parts; here 45 s embedded and 85 s distributed on an idle machine)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.registry_process import ASSEMBLIES, RegistryProcess, registry_process

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = f"hzr_{secrets.token_hex(6)}_{secrets.token_hex(32)}"
SIZE = int(os.environ.get("HANZO_TEST_LARGE_BYTES", str(2 * 1024**3)))
"""2 GiB by default; set smaller to iterate."""
BLOCK = 4 * 1024 * 1024
PUSH_CHUNK = 32 * 1024 * 1024  # services/cli/oci.py PUSH_CHUNK


@pytest.fixture(scope="module", params=ASSEMBLIES)
def registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    env = {"HANZO_REGISTRY_AUTH__MODE": "token", "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": ADMIN_KEY}
    with registry_process(request.param, tmp_path_factory.mktemp("large"), env=env) as reg:
        yield reg


def _write_pattern(path: Path, size: int, *, seed: int = 16) -> str:
    """A seeded random block, each copy rotated and stamped with its index (no two blocks alike); the sha256."""
    rng = random.Random(seed)
    view = memoryview(rng.randbytes(BLOCK))
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        written, index = 0, 0
        while written < size:
            shift = (index * 4099) % BLOCK
            left = size - written
            for piece in (index.to_bytes(8, "little"), view[shift:], view[:shift]):
                piece = piece[:left]
                handle.write(piece)
                digest.update(piece)
                written += len(piece)
                left -= len(piece)
            index += 1
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HANZO_REGISTRY_", "DOCKER_CONFIG"))}
    env.update({"HANZO_REGISTRY_API_KEY": ADMIN_KEY, "XDG_CACHE_HOME": str(cache),
                "DOCKER_CONFIG": "/nonexistent-docker-config"})
    return env


def _command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "services.cli.main", *map(str, args), "-u", "admin", "-o", "json"]


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], *, timeout: float = 600) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (it must not finish first)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the CLI finished before it could be killed: {proc.stderr.read()!r}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the transfer did not get far enough in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def _run(*args: str | Path, env: dict[str, str]) -> Any:
    proc = subprocess.run(_command(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_push_and_pull_resume_after_the_client_is_killed(registry: RegistryProcess, tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    expected = _write_pattern(source, SIZE)
    cache = tmp_path / "cache"
    env = _env(cache)
    ref = f"{registry.addr}/large/model:v1"
    uploads = cache / "hanzo-registry" / "uploads"

    def acknowledged() -> int:
        """Bytes the registry acknowledged, as the killed CLI saved them."""
        for state in uploads.glob("*.json"):
            try:
                return int(json.loads(state.read_text())["offset"])
            except (OSError, ValueError, KeyError):
                continue  # replaced while we read it
        return 0

    first = subprocess.Popen(_command("push", ref, f"{source}:application/octet-stream"), cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _kill_when(first, lambda: acknowledged() >= SIZE // 4)
    finally:
        if first.poll() is None:
            first.kill()
    acked = acknowledged()
    assert 0 < acked < SIZE

    pushed = _run("push", ref, f"{source}:application/octet-stream", env=env)
    sent = pushed["files"][0]
    assert sent["resumed_from"] >= acked, sent  # continued from the registry's offset, not from zero
    assert sent["bytes_sent"] == SIZE - sent["resumed_from"], sent
    # The killed run sent what the registry kept (at most `resumed_from`) plus at most the one chunk in flight
    # it lost, so both runs together sent less than SIZE + PUSH_CHUNK.
    assert sent["resumed_from"] + PUSH_CHUNK + sent["bytes_sent"] <= SIZE + PUSH_CHUNK
    assert sent["digest"] == f"sha256:{expected}"
    assert not list(uploads.glob("*.json")), "the finished upload's state is removed"

    out = tmp_path / "out"
    part = out / f".{source.name}.part"

    def part_size() -> int:
        try:
            return part.stat().st_size
        except FileNotFoundError:
            return 0

    second = subprocess.Popen(_command("pull", ref, "--dir", out), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        _kill_when(second, lambda: part_size() >= SIZE // 4)
    finally:
        if second.poll() is None:
            second.kill()
    held = part_size()
    assert 0 < held < SIZE and not (out / source.name).exists()

    pulled = _run("pull", ref, "--dir", out, env=env)
    got = pulled["files"][0]
    assert got["resumed_from"] == held, got
    assert got["bytes_received"] == SIZE - held, got
    assert not part.exists()
    assert _sha256(out / source.name) == expected
