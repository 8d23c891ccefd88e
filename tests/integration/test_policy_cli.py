"""`hanzo-registry policy get|set|rm` against a real registry process, and what it imports."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import yaml

from tests.integration.registry_process import registry_process

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = f"hzr_{secrets.token_hex(6)}_{secrets.token_hex(32)}"


def _cli(addr: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "HANZO_REGISTRY_API_KEY": ADMIN_KEY}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "policy", *args, "--registry", f"http://{addr}",
         "--user", "admin"],
        cwd=ROOT, env=env, input=stdin, capture_output=True, timeout=60, check=False,
    )


def test_policy_get_set_rm(tmp_path: Path) -> None:
    env = {"HANZO_REGISTRY_AUTH__MODE": "token", "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": ADMIN_KEY}
    with registry_process("embedded", tmp_path, env=env) as reg:
        missing = _cli(reg.addr, "get", "ml")
        assert missing.returncode == 1 and b"NOT_FOUND" in missing.stderr
        document = tmp_path / "registry.yaml"
        document.write_text("scan: {enabled: true, severity_gate: high}\nretention: {keep_last: 2}\n")
        done = _cli(reg.addr, "set", "ml", str(document))
        assert done.returncode == 0, done.stderr
        assert yaml.safe_load(done.stdout) == {"scan": {"enabled": True, "severity_gate": "high"},
                                               "retention": {"keep_last": 2}}
        done = _cli(reg.addr, "set", "ml/app", "-", stdin=b'{"scan": {"severity_gate": "critical"}}')
        assert done.returncode == 0, done.stderr
        got = _cli(reg.addr, "get", "ml/app", "--effective")
        effective = yaml.safe_load(got.stdout)
        assert effective["scan"]["severity_gate"] == "critical" and effective["scan"]["enabled"] is True
        assert effective["retention"]["keep_last"] == 2
        bad = _cli(reg.addr, "set", "ml", "-", stdin=b"scan: {severity_gate: severe}")
        assert bad.returncode == 1 and b"scan.severity_gate" in bad.stderr
        assert _cli(reg.addr, "rm", "ml/app").returncode == 0
        assert _cli(reg.addr, "get", "ml/app").returncode == 1
        assert _cli(reg.addr, "set", "ml", str(tmp_path / "nope.yaml")).returncode == 2
    unreachable = _cli(reg.addr, "get", "ml")
    assert unreachable.returncode == 3
