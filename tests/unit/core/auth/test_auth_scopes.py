"""Scope grammar: parsing, merging, the access claim, challenges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.auth.scopes import (
    ResourceScope,
    ScopeInvalidError,
    access_from_claim,
    challenge_scope,
    parse_resource_scope,
    parse_scopes,
)


def test_parse_repository_scope() -> None:
    assert parse_resource_scope("repository:team/app:push,pull") == ResourceScope("repository", "team/app",
                                                                                   ("pull", "push"))


def test_name_may_contain_a_port_and_type_class_is_dropped() -> None:
    scope = parse_resource_scope("repository(plugin):localhost:5000/team/app:pull")
    assert scope == ResourceScope("repository", "localhost:5000/team/app", ("pull",))


def test_wildcard_and_empty_actions() -> None:
    assert parse_resource_scope("registry:catalog:*").actions == ("*",)
    assert parse_resource_scope("repository:a:").actions == ()


@pytest.mark.parametrize("text", ["repository", "repository:a", "Repo:a:pull", "repository:a:PULL", "repository::pull",
                                  "repository:a b:pull", "repository:a:pull;rm"])
def test_malformed_scopes_are_refused(text: str) -> None:
    with pytest.raises(ScopeInvalidError):
        parse_resource_scope(text)


def test_parse_scopes_splits_on_spaces_and_merges() -> None:
    scopes = parse_scopes(["repository:a/b:pull repository:c:pull", "repository:a/b:push"])
    assert scopes == [ResourceScope("repository", "a/b", ("pull", "push")), ResourceScope("repository", "c", ("pull",))]


def test_too_many_scopes() -> None:
    with pytest.raises(ScopeInvalidError):
        parse_scopes([" ".join(f"repository:r{i}:pull" for i in range(65))])


def test_access_claim_expands_wildcard_and_rejects_garbage() -> None:
    access = access_from_claim([{"type": "repository", "name": "a", "actions": ["*"]},
                                {"type": "registry", "name": "catalog", "actions": ["*"]}])
    assert access[("repository", "a")] == {"pull", "push", "delete"}
    assert access[("registry", "catalog")] == {"*"}
    for bad in ({"type": "repository"}, [1], [{"type": "repository", "name": "a", "actions": [1]}]):
        with pytest.raises(ScopeInvalidError):
            access_from_claim(bad)


def test_challenge_scope_orders_actions() -> None:
    assert challenge_scope("team/app", {"push", "pull"}) == "repository:team/app:pull,push"


_component = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)
_actions = st.lists(st.sampled_from(["pull", "push", "delete"]), min_size=1, unique=True)


@given(st.lists(_component, min_size=1, max_size=4), _actions)
def test_round_trip(components: list[str], actions: list[str]) -> None:
    scope = ResourceScope("repository", "/".join(components), tuple(actions))
    parsed = parse_resource_scope(str(scope))
    assert parsed.name == scope.name and set(parsed.actions) == set(actions)
    assert parse_resource_scope(str(parsed)) == parsed
