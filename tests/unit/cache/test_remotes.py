"""Mapping cached repositories to upstreams, containerd mirror hosts, and the settings' validation."""

from __future__ import annotations

import pytest

from services.core.errors import NameUnknownError
from services.core.settings import SettingsError, load_settings
from services.distribution.cache.remotes import Remote, Remotes

HUB = Remote(name="docker-hub", url="https://registry-1.docker.io")
GHCR = Remote(name="ghcr", url="https://ghcr.io")
LOCAL = Remote(name="local", url="http://127.0.0.1:5001", username="u", password="p")
REMOTES = Remotes({r.name: r for r in (HUB, GHCR, LOCAL)}, "docker-hub", "settings")


@pytest.mark.parametrize(("repository", "remote", "upstream"), [
    ("cache/library/nginx", "docker-hub", "registry-1.docker.io/library/nginx"),
    ("cache/nginx", "docker-hub", "registry-1.docker.io/library/nginx"),
    ("cache/bitnami/redis", "docker-hub", "registry-1.docker.io/bitnami/redis"),
    ("cache/ghcr/actions/runner", "ghcr", "ghcr.io/actions/runner"),
    ("cache/docker-hub/nginx", "docker-hub", "registry-1.docker.io/library/nginx"),
    ("cache/local/team/app", "local", "127.0.0.1:5001/team/app"),
    ("cache/ghcr", "docker-hub", "registry-1.docker.io/library/ghcr"),  # a remote's name alone is a path
])
def test_upstream_of(repository: str, remote: str, upstream: str) -> None:
    up = REMOTES.upstream_of("cache", repository)
    assert (up.remote.name, str(up.repository)) == (remote, upstream)


def test_no_default_remote_names_nothing() -> None:
    remotes = Remotes({"ghcr": GHCR}, "docker-hub", "api")
    with pytest.raises(NameUnknownError):
        remotes.upstream_of("cache", "cache/library/nginx")
    assert remotes.upstream_of("cache", "cache/ghcr/a/b").remote is GHCR
    with pytest.raises(NameUnknownError):
        REMOTES.upstream_of("cache", "cache")


def test_mirror_hosts() -> None:
    assert REMOTES.for_mirror("docker.io") is HUB
    assert REMOTES.for_mirror("ghcr.io") is GHCR
    assert REMOTES.for_mirror("127.0.0.1:5001") is LOCAL
    assert REMOTES.for_mirror("quay.io") is None


def test_remote_options_and_secrets_stay_out_of_reprs() -> None:
    options = LOCAL.options()
    assert options.plain_http is True and options.credentials is not None
    assert "password='p'" not in repr(LOCAL)
    assert "'p'" not in repr(options)
    assert HUB.options().plain_http is False and HUB.options().credentials is None


@pytest.mark.parametrize("url", ["http://169.254.169.254", "ftp://example.com", "https://u:p@example.com",
                                 "https://example.com/v2/", "http://metadata.google.internal"])
def test_settings_refuse_bad_urls(url: str) -> None:
    with pytest.raises(SettingsError):
        load_settings(proxy={"remotes": [{"name": "x", "url": url}]})


def test_settings_refuse_duplicate_names() -> None:
    with pytest.raises(SettingsError):
        load_settings(proxy={"remotes": [{"name": "x", "url": "https://a.io"}, {"name": "x", "url": "https://b.io"}]})
    settings = load_settings(proxy={"remotes": [{"name": "x", "url": "https://a.io/", "ttl": 60}]})
    assert settings.proxy.remotes[0].url == "https://a.io" and settings.proxy.remotes[0].ttl == 60
