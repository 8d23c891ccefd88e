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


def _infra_value(name: str) -> str | None:
    """A value from the environment, else infra.env/tools.env; None when neither has it."""
    return os.environ.get(name) or {
        **_read_env_file(INFRA_STATE / "infra.env"),
        **_read_env_file(INFRA_STATE / "tools.env"),
    }.get(name)


def infra(name: str) -> str:
    """A value from infra.env/tools.env (or the environment). Fails loudly when the infra is not up:
    a test that needs Kafka talks to Kafka, it does not quietly skip."""
    value = _infra_value(name)
    if not value:
        if os.environ.get("HANZO_SKIP_INFRA") == "1":
            pytest.skip(f"{name} not set and HANZO_SKIP_INFRA=1")
        pytest.fail(f"{name} is not set: run `make infra-up` (or `make tools`) first")
    return value


# What a session creates on the shared servers: each distributed test has its own Kafka topics and MongoDB
# database, and servers that kept them all grew to 11,000 partitions (the broker ran out of heap in the middle of
# `make test`) and 1,800 databases. Listed when the session starts, the new ones are deleted when it ends (a
# killed session leaves them; infra-up starts the broker empty).
_BEFORE: dict[str, set[str]] = {}


def _reachable(address: str) -> bool:
    import socket

    host, _, port = address.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


async def _topics(bootstrap: str) -> set[str]:
    from services.core.events.kafka import KafkaEventLog

    return {t for t in await KafkaEventLog(bootstrap).list_topics() if not t.startswith("__")}


def _databases(uri: str, *, drop_all_but: set[str] | None = None) -> set[str]:
    """The databases on the server (not its own); with `drop_all_but`, those not in it are dropped first."""
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        names = set(client.list_database_names()) - {"admin", "config", "local"}
        if drop_all_but is not None:
            for name in names - drop_all_but:
                client.drop_database(name)
            names &= drop_all_but
        return names
    finally:
        client.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    import asyncio

    bootstrap, mongo = _infra_value("HANZO_TEST_KAFKA"), _infra_value("HANZO_TEST_MONGO_URI")
    try:
        if bootstrap and _reachable(bootstrap):
            _BEFORE["topics"] = asyncio.run(asyncio.wait_for(_topics(bootstrap), 10))
        if mongo and _reachable(mongo.split("//", 1)[-1].split("/", 1)[0]):
            _BEFORE["databases"] = _databases(mongo)
    except Exception:  # a server that is not up: the tests that need it say so themselves
        pass


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import asyncio
    import warnings

    from services.core.events.kafka import KafkaEventLog

    bootstrap, mongo = _infra_value("HANZO_TEST_KAFKA"), _infra_value("HANZO_TEST_MONGO_URI")

    async def delete_topics(before: set[str]) -> None:
        assert bootstrap is not None
        new = sorted(await _topics(bootstrap) - before)
        for i in range(0, len(new), 500):
            await KafkaEventLog(bootstrap).delete_topics(new[i : i + 500], timeout=120)

    try:
        if bootstrap and "topics" in _BEFORE:
            asyncio.run(delete_topics(_BEFORE["topics"]))
        if mongo and "databases" in _BEFORE:
            _databases(mongo, drop_all_but=_BEFORE["databases"])
    except Exception as exc:
        warnings.warn(f"what the session created on the shared servers was not all deleted: {exc!r}", stacklevel=1)
