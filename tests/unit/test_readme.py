"""The README's generated references match the code: configuration settings and metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["scripts/config_reference.py", "scripts/metrics_reference.py"])
def test_generated_reference_is_current(script: str) -> None:
    result = subprocess.run(
        [sys.executable, script, "--check", "README.md"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
