"""Challenge parsing, scope unions and the token cache of the OCI client (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.core.client.auth import (
    Challenge,
    Token,
    TokenCache,
    merge_scopes,
    parse_challenges,
    pick_challenge,
    scopes_cover,
    token_from_response,
)
from services.core.client.errors import OciAuthenticationError


def test_bearer_challenge_with_commas_in_quoted_scope() -> None:
    [c] = parse_challenges(
        [
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:team/app:pull,push",error="insufficient_scope"'
        ]
    )
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.example/token"
    assert c.service == "registry.example"
    assert c.scopes == ("repository:team/app:pull,push",)
    assert c.error == "insufficient_scope"


def test_several_challenges_in_one_header_and_several_headers() -> None:
    challenges = parse_challenges(['Basic realm="Registry Realm", Bearer realm="https://a/t",service=x', "Negotiate"])
    assert [c.scheme for c in challenges] == ["basic", "bearer", "negotiate"]
    assert challenges[0].realm == "Registry Realm"
    assert challenges[1].params == {"realm": "https://a/t", "service": "x"}
    assert pick_challenge(challenges) == challenges[1]


def test_basic_only_and_escapes() -> None:
    [c] = parse_challenges([r'Basic realm="say \"hi\""'])
    assert c == Challenge("basic", {"realm": 'say "hi"'})
    assert pick_challenge([c]) == c
    assert pick_challenge(parse_challenges(["Bearer service=x"])) is None  # no realm: cannot answer
    assert pick_challenge(parse_challenges(["Negotiate"])) is None


def test_space_separated_scopes_and_case() -> None:
    [c] = parse_challenges(['BEARER Realm="r", Scope="repository:a:pull registry:catalog:*"'])
    assert c.scheme == "bearer" and c.realm == "r"
    assert c.scopes == ("repository:a:pull", "registry:catalog:*")


@given(st.text(max_size=200))
def test_parse_never_raises(text: str) -> None:
    parse_challenges([text])


def test_merge_scopes_unions_actions_per_resource() -> None:
    assert merge_scopes(["repository:a:pull", "repository:a:push", "repository:b:pull", "repository:a:pull"]) == (
        "repository:a:pull,push",
        "repository:b:pull",
    )
    # A port in the name, and an opaque scope, survive.
    assert merge_scopes(["repository:host:5000/x:pull", "weird"]) == ("repository:host:5000/x:pull", "weird")


def test_scopes_cover() -> None:
    assert scopes_cover(["repository:a:pull,push"], ["repository:a:pull"])
    assert not scopes_cover(["repository:a:pull"], ["repository:a:pull,push"])
    assert not scopes_cover(["repository:a:pull"], ["repository:b:pull"])
    assert scopes_cover(["registry:catalog:*"], ["registry:catalog:*"])
    assert scopes_cover(["repository:a:*"], ["repository:a:delete"])
    assert scopes_cover([], [])


def test_token_lifetime_from_response() -> None:
    token = token_from_response({"token": "t", "expires_in": 300, "issued_at": "2030-01-01T00:00:00Z"}, [], now=1000.0)
    assert (token.issued_at, token.expires_at) == (1000.0, 1300.0)  # issued in our future: counted from now
    issued = 1_700_000_000.0
    token = token_from_response(
        {"access_token": "t", "expires_in": 60, "issued_at": "2023-11-14T22:13:20Z"}, [], now=issued + 10
    )
    assert token.issued_at == issued and token.expires_at == issued + 60
    token = token_from_response({"token": "t"}, ["repository:a:pull"], now=5.0)
    assert token.expires_at == 65.0 and token.scopes == ("repository:a:pull",)
    # Already over by our clock (skewed server): its lifetime counts from now.
    token = token_from_response({"token": "t", "expires_in": 60, "issued_at": "2000-01-01T00:00:00Z"}, [], now=1e9)
    assert token.expires_at == 1e9 + 60


def test_token_response_without_token() -> None:
    bodies: list[object] = [{}, {"token": ""}, [], "x"]
    for body in bodies:
        try:
            token_from_response(body, [], now=0)
        except OciAuthenticationError:
            continue
        raise AssertionError(f"accepted {body!r}")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_finds_covering_fresh_tokens_and_refreshes_early() -> None:
    clock = Clock()
    cache = TokenCache(refresh_margin=30, clock=clock)
    cache.store("r", Token("t1", ("repository:a:pull,push",), 1000, 1300))
    assert cache.find("r", ["repository:a:pull"]) is not None
    assert cache.find("other", ["repository:a:pull"]) is None
    assert cache.find("r", ["repository:b:pull"]) is None
    clock.now = 1269
    assert cache.find("r", ["repository:a:pull"]) is not None
    clock.now = 1271  # within the margin: replaced for new requests
    assert cache.find("r", ["repository:a:pull"]) is None
    # A short-lived token is refreshed at half its life, not 30 s early.
    cache.store("r", Token("t2", ("repository:a:pull",), 1271, 1273))
    assert cache.find("r", ["repository:a:pull"]) is not None
    clock.now = 1272.1
    assert cache.find("r", ["repository:a:pull"]) is None
    assert cache.fetched == 2


def test_cache_widens_requests_on_the_same_resources() -> None:
    cache = TokenCache(clock=Clock())
    cache.store("r", Token("t", ("repository:a:pull", "repository:z:pull"), 1000, 1300))
    assert cache.scopes_to_request("r", ["repository:a:pull,push"]) == ("repository:a:pull,push",)
    assert cache.scopes_to_request("r", ["repository:a:push"]) == ("repository:a:pull,push",)
    assert cache.scopes_to_request("r", ["repository:b:pull"]) == ("repository:b:pull",)
    assert cache.scopes_to_request("other", ["repository:a:push"]) == ("repository:a:push",)


def test_cache_discard_and_bound() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock, max_entries=2)
    for i in range(3):
        cache.store("r", Token(f"t{i}", (f"repository:{i}:pull",), 1000, 1300))
    assert cache.find("r", ["repository:0:pull"]) is None  # evicted, oldest first
    cache.discard("r", "t2")
    assert cache.find("r", ["repository:2:pull"]) is None
    assert cache.find("r", ["repository:1:pull"]) is not None
    clock.now = 2000
    cache.store("r", Token("t3", ("repository:3:pull",), 2000, 2300))  # expired ones are dropped on store
    assert len(cache._tokens) == 1
