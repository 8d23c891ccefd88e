"""Webhook matching: repository globs, namespaces of patterns, tag patterns, event filters."""

from __future__ import annotations

import pytest

from services.core.webhooks.model import (
    REGISTRY_WIDE,
    Requirements,
    Webhook,
    check_repository_pattern,
    from_doc,
    pattern_namespace,
    repository_glob,
    to_doc,
)


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("my-org/**", "my-org/app", True),
    ("my-org/**", "my-org/a/b/c", True),
    ("my-org/**", "my-orgx/app", False),
    ("my-org/**", "other/my-org/app", False),
    ("my-org/*", "my-org/app", True),
    ("my-org/*", "my-org/a/b", False),
    ("**", "anything/at/all", True),
    ("*/app", "team/app", True),
    ("*/app", "team/sub/app", False),
    ("**/app", "team/sub/app", True),
    ("**/app", "app", True),
    ("team/ap?", "team/api", True),
    ("team/ap?", "team/a/i", False),
    ("team/app", "team/app", True),
    ("team/a.p", "team/axp", False),
])
def test_repository_glob(pattern: str, name: str, matches: bool) -> None:
    assert (repository_glob(pattern).fullmatch(name) is not None) is matches


def test_pattern_namespace() -> None:
    assert pattern_namespace("my-org/**") == "my-org"
    assert pattern_namespace("my-org/app") == "my-org"
    assert pattern_namespace("**") == REGISTRY_WIDE
    assert pattern_namespace("*/app") == REGISTRY_WIDE
    assert pattern_namespace("te?m/app") == REGISTRY_WIDE


@pytest.mark.parametrize("bad", ["", "My-Org/**", "a//b", "/a", "a/", "a b", "a/(x)", "x" * 300])
def test_bad_repository_patterns(bad: str) -> None:
    with pytest.raises(ValueError):
        check_repository_pattern(bad)


def test_tags_events_and_round_trip() -> None:
    hook = Webhook(id="h", name="n", url="https://example.com", events=("tag.updated",), repositories="t/**",
                   tag_pattern="v*", require=Requirements("high", True), namespace="t")
    assert hook.matching_tags(["v1", "latest", "v2.0"]) == ["v1", "v2.0"]
    assert hook.wants("tag.updated") and not hook.wants("tag.deleted")
    assert not hook.matches_repository("")  # registry-wide facts go to registry-wide webhooks only
    assert from_doc(to_doc(hook)) == hook
    with pytest.raises(ValueError):
        Requirements("severe")


def test_registry_wide_webhooks_get_registry_wide_events() -> None:
    hook = Webhook(id="h", name="n", url="https://example.com", events=("gc.completed",), repositories="**",
                   tag_pattern=None)
    assert hook.registry_wide and hook.matches_repository("") and hook.matches_repository("a/b")
