"""Settings: sources, validation, the documented environment names."""

from __future__ import annotations

import pytest

from services.core.settings import SettingsError, load_settings

KEY = "hzr_0123456789ab_" + "a" * 64


def test_documented_bootstrap_key_variable_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANZO_REGISTRY_BOOTSTRAP_ADMIN_KEY", KEY)
    settings = load_settings()
    assert settings.auth.bootstrap_admin_key is not None
    assert settings.auth.bootstrap_admin_key.get_secret_value() == KEY


def test_nested_environment_selects_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANZO_REGISTRY_METADATA__KIND", "mongo")
    monkeypatch.setenv("HANZO_REGISTRY_EVENTS__KIND", "kafka")
    settings = load_settings()
    assert settings.metadata.kind == "mongo" and settings.events.kind == "kafka"


def test_invalid_values_name_the_field() -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(storage={"blobs": {"kind": "s3"}})
    assert "storage.blobs.s3.endpoint" in str(exc.value) or "endpoint" in str(exc.value)


def test_event_loop_auto_follows_the_blob_store() -> None:
    assert load_settings().event_loop == "asyncio"  # filesystem blobs: sendfile(2)
    s3 = {"blobs": {"kind": "s3", "endpoint": "127.0.0.1:8333", "bucket": "b", "access_key": "a", "secret_key": "s"}}
    assert load_settings(storage=s3).event_loop == "uvloop"
    assert load_settings(storage=s3, server={"event_loop": "asyncio"}).event_loop == "asyncio"
    assert load_settings(server={"event_loop": "uvloop"}).event_loop == "uvloop"
