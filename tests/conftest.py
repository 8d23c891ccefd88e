"""Shared test plumbing: where the real servers from `make infra-up` are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

INFRA_STATE = Path(
    os.environ.get("HANZO_INFRA_STATE", Path.home() / ".cache" / "hanzo-registry" / "infra" / "run")
)


@pytest.fixture(autouse=True)
def _hermetic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from each test, never from the shell that ran pytest (env beats arguments)."""
    for name in list(os.environ):
        if name.startswith("HANZO_REGISTRY_"):
            monkeypatch.delenv(name)


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip('"')
    return values


def infra(name: str) -> str:
    """A value from infra.env/tools.env (or the environment). Fails loudly when the infra is not up:
    a test that needs Kafka talks to Kafka, it does not quietly skip."""
    value = os.environ.get(name) or {
        **_read_env_file(INFRA_STATE / "infra.env"),
        **_read_env_file(INFRA_STATE / "tools.env"),
    }.get(name)
    if not value:
        if os.environ.get("HANZO_SKIP_INFRA") == "1":
            pytest.skip(f"{name} not set and HANZO_SKIP_INFRA=1")
        pytest.fail(f"{name} is not set: run `make infra-up` (or `make tools`) first")
    return value
