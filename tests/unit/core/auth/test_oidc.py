"""IdP token verification (pure), names from claims, the JWKS cache's refetch rules, and external users."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from services.core.auth.errors import AuthenticationError
from services.core.auth.model import MembershipSource
from services.core.auth.oidc import (
    IdpIdentity,
    IdpTokenError,
    OidcProvider,
    fit_name,
    identity_of,
    looks_like_jwt,
    parse_jwks,
    unverified_issuer,
    verify_idp_token,
)
from services.core.auth.service import AuthService
from services.core.auth.store import AuthStore
from services.core.events.outbox import Outbox
from services.core.settings import AuthSettings, OidcSettings, SettingsError, TopicSettings, load_settings
from services.core.storage.sqlite import SqliteDocumentStore

ISSUER = "http://127.0.0.1:5556/dex"
NOW = 1_900_000_000.0

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
KEYS: dict[str, tuple[str, Any]] = {"rsa-1": ("RS256", RSA_KEY), "ec-1": ("ES256", EC_KEY), "ed-1": ("EdDSA", ED_KEY)}


def jwk_of(kid: str, alg: str, private: Any) -> dict[str, Any]:
    algorithm = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[alg]
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(private.public_key()))  # type: ignore[attr-defined]
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


JWKS = {"keys": [jwk_of(kid, alg, key) for kid, (alg, key) in KEYS.items()]}


def claims(**changes: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": "registry", "sub": "CiQxMjM", "exp": NOW + 600, "iat": NOW - 5,
            "nbf": NOW - 5, "preferred_username": "alice", "groups": ["ml-engineers"]}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(kid: str = "rsa-1", **changes: Any) -> str:
    alg, key = KEYS[kid]
    return jwt.encode(claims(**changes), key, algorithm=alg, headers={"kid": kid})


def verify(token: str, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"keys": parse_jwks(JWKS), "issuer": ISSUER, "audiences": ["registry"], "now": NOW}
    return verify_idp_token(token, **(args | kw))


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("kid", sorted(KEYS))
def test_rs256_es256_and_eddsa_tokens_verify(kid: str) -> None:
    assert verify(sign(kid))["preferred_username"] == "alice"


def test_audience_may_be_one_of_several_and_a_list_in_the_token() -> None:
    assert verify(sign(aud=["other", "registry"]), audiences=["x", "registry"])["sub"] == "CiQxMjM"


@pytest.mark.parametrize(
    ("token_changes", "reason"),
    [
        ({"exp": NOW - 31}, "token has expired"),
        ({"nbf": NOW + 60}, "not valid yet"),
        ({"iss": "http://evil.example"}, "token issuer is not"),
        ({"aud": "someone-else"}, "audience is not accepted"),
        ({"sub": None}, "no 'sub' claim"),
        ({"exp": None}, "no 'exp' claim"),
        ({"sub": ""}, "malformed claims"),
    ],
)
def test_claims_are_checked_with_the_reason_named(token_changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(IdpTokenError, match=reason):
        verify(sign(**token_changes))


def test_small_clock_skew_is_tolerated() -> None:
    assert verify(sign(exp=NOW - 20, nbf=NOW + 20))


def test_tampered_payload_fails_the_signature() -> None:
    header, _, signature = sign().split(".")
    forged = b64(claims(preferred_username="admin", groups=["admins"]))
    with pytest.raises(IdpTokenError, match="signature verification failed"):
        verify(f"{header}.{forged}.{signature}")


def test_alg_none_is_refused() -> None:
    token = f"{b64({'alg': 'none', 'kid': 'rsa-1'})}.{b64(claims())}."
    with pytest.raises(IdpTokenError, match="algorithm 'none' is not accepted"):
        verify(token)


def test_hs256_with_the_public_key_as_secret_is_refused() -> None:
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"})
    payload = b64(claims())
    import hashlib
    import hmac

    mac = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(IdpTokenError, match="algorithm 'HS256' is not accepted"):
        verify(token)


def test_an_algorithm_must_match_its_keys_type() -> None:
    # An ES256 header naming the RSA key's kid: never verified with the wrong kind of key.
    token = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "rsa-1"})
    with pytest.raises(IdpTokenError, match="is not a ES256 key"):
        verify(token)


def test_unknown_kid_is_flagged_for_a_refetch() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(), other, algorithm="ES256", headers={"kid": "rotated"})
    with pytest.raises(IdpTokenError, match="unknown key") as caught:
        verify(token)
    assert caught.value.unknown_key


def test_nonce_must_match_when_asked() -> None:
    assert verify(sign(nonce="n1"), nonce="n1")
    with pytest.raises(IdpTokenError, match="nonce"):
        verify(sign(nonce="n1"), nonce="n2")
    with pytest.raises(IdpTokenError, match="nonce"):
        verify(sign(), nonce="n2")


def test_jwks_keeps_only_usable_signing_keys() -> None:
    doc = {"keys": [
        *JWKS["keys"],
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
        {**jwk_of("enc", "RS256", RSA_KEY), "use": "enc"},
        {**jwk_of("rs512", "RS256", RSA_KEY), "alg": "RS512"},
        {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not a key",
    ]}
    assert sorted(parse_jwks(doc)) == ["ec-1", "ed-1", "rsa-1"]


def test_shapes_and_unverified_issuer() -> None:
    token = sign()
    assert looks_like_jwt(token) and unverified_issuer(token) == ISSUER
    assert not looks_like_jwt("hzr_abcdef012345_" + "a" * 64)
    assert not looks_like_jwt("a.b.c") and not looks_like_jwt("not-a-token")


@pytest.mark.parametrize(
    ("text", "fitted"),
    [("ml-engineers", "ml-engineers"), ("ML Engineers", "ml-engineers"), ("alice@example.com", "alice-example.com"),
     ("/org/team", "org-team"), ("__x__", "x"), ("Ünïcode", "n-code"), ("@@@", None), ("", None),
     ("a" * 100, "a" * 64)],
)
def test_fit_name(text: str, fitted: str | None) -> None:
    assert fit_name(text) == fitted


def identity(**changes: Any) -> IdpIdentity:
    return identity_of(claims(**changes), issuer=ISSUER, username_claim="preferred_username",
                       groups_claim="groups", admin_groups=["Registry Admins"])


def test_identity_names_teams_and_admin() -> None:
    who = identity(groups=["ML Engineers", "Registry Admins", "@@", 7, "ml-engineers"])
    assert who.user_name == "alice" and who.subject == "CiQxMjM"
    assert who.teams == ("ml-engineers", "registry-admins")
    assert who.admin and who.ignored_groups == ("@@",)
    assert identity(groups="solo").teams == ("solo",)
    assert identity(groups=None).teams == () and not identity(groups=None).admin


@pytest.mark.parametrize("name", [None, "hanzo", "@@@", 42])
def test_user_name_falls_back_to_sub(name: Any) -> None:
    assert identity(preferred_username=name, sub="User-7").user_name == "user-7"


def test_no_usable_user_name_is_refused() -> None:
    with pytest.raises(IdpTokenError, match="makes a registry user name"):
        identity(preferred_username="@@", sub="@@")


# settings


def test_settings_turn_on_with_the_issuer_and_default_the_audience_to_the_client() -> None:
    assert not OidcSettings().enabled
    oidc = OidcSettings(issuer=ISSUER, client_id="registry")
    assert oidc.enabled and oidc.audiences == ("registry",)
    assert OidcSettings(issuer=ISSUER, audience="a,b").audiences == ("a", "b")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HANZO_REGISTRY_AUTH__OIDC__ISSUER": ISSUER}, "needs auth.oidc.audience or auth.oidc.client_id"),
        ({"HANZO_REGISTRY_AUTH__OIDC__ISSUER": "ftp://x", "HANZO_REGISTRY_AUTH__OIDC__AUDIENCE": "a"}, "http"),
        ({"HANZO_REGISTRY_AUTH__OIDC__ISSUER": "hanzo-registry"}, "http"),
        ({"HANZO_REGISTRY_AUTH__OIDC__CLIENT_SECRET": "s"}, "needs auth.oidc.client_id"),
    ],
)
def test_bad_oidc_settings_name_the_fix(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_env_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANZO_REGISTRY_AUTH__OIDC__ISSUER", ISSUER)
    monkeypatch.setenv("HANZO_REGISTRY_AUTH__OIDC__AUDIENCE", "registry, console")
    monkeypatch.setenv("HANZO_REGISTRY_AUTH__OIDC__ADMIN_GROUPS", '["ops team"]')
    oidc = load_settings().auth.oidc
    assert oidc.audiences == ("registry", "console") and oidc.admin_groups == ["ops team"]


# the provider: discovery, JWKS cache, refetch on an unknown kid (rate-limited)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def idp() -> AsyncIterator[tuple[TestServer, dict[str, Any]]]:
    state: dict[str, Any] = {"jwks": JWKS, "jwks_fetches": 0}
    app = web.Application()

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response({"issuer": state["issuer"], "jwks_uri": f"{state['issuer']}/keys"})

    async def keys(request: web.Request) -> web.Response:
        state["jwks_fetches"] += 1
        return web.json_response(state["jwks"])

    app.router.add_get("/dex/.well-known/openid-configuration", discovery)
    app.router.add_get("/dex/keys", keys)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state["issuer"] = str(server.make_url("/dex"))
    yield server, state
    await server.close()


async def test_provider_caches_keys_and_refetches_for_an_unknown_kid_at_most_once_per_interval(
    idp: tuple[TestServer, dict[str, Any]],
) -> None:
    _, state = idp
    clock = Clock()
    provider = OidcProvider(OidcSettings(issuer=state["issuer"], audience=["registry"], jwks_refetch_seconds=10),
                            clock=clock)
    try:
        token = sign(iss=state["issuer"])
        assert (await provider.verify(token))["sub"] == "CiQxMjM"
        await provider.verify(token)
        assert state["jwks_fetches"] == 1
        rotated = ec.generate_private_key(ec.SECP256R1())
        new = jwt.encode(claims(iss=state["issuer"]), rotated, algorithm="ES256", headers={"kid": "ec-2"})
        state["jwks"] = {"keys": [*JWKS["keys"], jwk_of("ec-2", "ES256", rotated)]}
        with pytest.raises(IdpTokenError, match="unknown key"):  # fetched less than 10 s ago: not again
            await provider.verify(new)
        assert state["jwks_fetches"] == 1
        clock.now += 11
        assert (await provider.verify(new))["sub"] == "CiQxMjM"
        assert state["jwks_fetches"] == 2
        made_up = jwt.encode(claims(iss=state["issuer"]), rotated, algorithm="ES256", headers={"kid": "nope"})
        for _ in range(5):
            with pytest.raises(IdpTokenError, match="unknown key"):
                await provider.verify(made_up)
        assert state["jwks_fetches"] == 2
    finally:
        await provider.close()


async def test_provider_refuses_a_discovery_document_for_another_issuer(
    idp: tuple[TestServer, dict[str, Any]],
) -> None:
    server, state = idp
    provider = OidcProvider(OidcSettings(issuer=str(server.make_url("/dex")), audience=["registry"]))
    state["issuer"] = "http://elsewhere.example/dex"
    from services.core.auth.oidc import IdpUnavailableError

    try:
        with pytest.raises(IdpUnavailableError, match="does not name the issuer"):
            await provider.metadata()
    finally:
        await provider.close()


# external users over a real (SQLite) store


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[AuthService]:
    docs = SqliteDocumentStore(tmp_path / "meta.db")
    outbox = Outbox(docs)
    await outbox.setup()
    auth = AuthService(store=AuthStore(docs), outbox=outbox, settings=AuthSettings(), topics=TopicSettings(),
                       upload_grace_seconds=3600)
    await auth.setup()
    yield auth
    await docs.close()


async def test_first_login_makes_an_external_user_and_its_teams(service: AuthService) -> None:
    user = await service.sync_external_user(identity(groups=["ML Engineers", "Registry Admins"]), source="t")
    assert user.external and user.external_issuer == ISSUER and user.external_subject == "CiQxMjM"
    assert user.admin
    assert await service.store.memberships_of("alice") == {
        "ml-engineers": MembershipSource.IDP, "registry-admins": MembershipSource.IDP}
    actions = [r.action for r in await service.store.audit()]
    assert actions.count("team.member.add") == 2 and "user.create" in actions


async def test_group_changes_sync_but_admin_made_memberships_stay(service: AuthService) -> None:
    await service.sync_external_user(identity(groups=["a", "b", "Registry Admins"]), source="t")
    await service.create_team("c", description="", actor="admin", source="t")
    await service.add_member("c", "alice", actor="admin", source="t")
    await service.add_member("b", "alice", actor="admin", source="t")  # an admin makes the IdP one theirs
    user = await service.sync_external_user(identity(groups=["a"]), source="t")
    assert not user.admin
    assert await service.store.memberships_of("alice") == {
        "a": MembershipSource.IDP, "b": MembershipSource.ADMIN, "c": MembershipSource.ADMIN}
    subject = await service.subject("alice")
    assert subject.teams == {"a", "b", "c"} and not subject.admin


async def test_a_local_user_or_another_identity_cannot_be_taken_over(service: AuthService) -> None:
    await service.create_user("alice", email=None, admin=True, actor="admin", source="t")
    with pytest.raises(AuthenticationError, match="belongs to a local user"):
        await service.sync_external_user(identity(), source="t")
    await service.sync_external_user(identity(preferred_username="bob", sub="s-bob"), source="t")
    with pytest.raises(AuthenticationError, match="belongs to another identity"):
        await service.sync_external_user(identity(preferred_username="bob", sub="s-mallory"), source="t")


async def test_an_external_users_keys_pause_without_a_sign_in_and_work_again_after_one(tmp_path: Path) -> None:
    now = [NOW]
    month = 30 * 86400.0
    settings = AuthSettings(oidc=OidcSettings(issuer=ISSUER, audience=["registry"], key_signin_max_age_seconds=month))
    docs = SqliteDocumentStore(tmp_path / "meta.db")
    outbox = Outbox(docs)
    await outbox.setup()
    auth = AuthService(store=AuthStore(docs), outbox=outbox, settings=settings, topics=TopicSettings(),
                       upload_grace_seconds=3600, clock=lambda: now[0])
    await auth.setup()
    try:
        await auth.sync_external_user(identity(), source="t")
        await auth.create_user("bob", email=None, admin=False, actor="admin", source="t")
        key = await auth.create_key("alice", name="ci", expires_in=None, namespaces=None, role=None, actor="t",
                                    source="t")
        local = await auth.create_key("bob", name="ci", expires_in=None, namespaces=None, role=None, actor="t",
                                      source="t")
        # A sign-in within the hour of the last one is not written again: the month still counts from the first
        now[0] += 1800
        await auth.sync_external_user(identity(), source="t")
        now[0] = NOW + month - 60
        assert (await auth.authenticate_key(key.secret, username=None)).user.name == "alice"
        assert (await auth.subject("alice", key_prefix=key.key.prefix)).user == "alice"
        now[0] += 120
        with pytest.raises(AuthenticationError, match="has not signed in through the identity provider for 30 days"):
            await auth.authenticate_key(key.secret, username=None)
        assert (await auth.subject("alice", key_prefix=key.key.prefix)).user is None  # its tokens too
        assert (await auth.subject("alice")).user == "alice"  # an IdP token of its own is a sign-in
        assert (await auth.authenticate_key(local.secret, username=None)).user.name == "bob"  # local users: never
        await auth.sync_external_user(identity(), source="t")  # signs in again
        assert (await auth.authenticate_key(key.secret, username=None)).user.name == "alice"
        assert (await auth.subject("alice", key_prefix=key.key.prefix)).user == "alice"
        # 0 turns the pause off; a user record from before sign-ins were recorded counts from its creation
        now[0] += 2 * month
        auth.settings = AuthSettings(oidc=settings.oidc.model_copy(update={"key_signin_max_age_seconds": 0}))
        assert (await auth.authenticate_key(key.secret, username=None)).user.name == "alice"
    finally:
        await docs.close()


async def test_session_tokens_are_no_access_tokens(service: AuthService) -> None:
    from services.core.auth.tokens import TokenInvalidError

    session = await service.sign_purpose_token("session", subject="alice", ttl_seconds=600, claims={"csrf": "x"})
    assert (await service.verify_purpose_token("session", session.token)).claims["csrf"] == "x"
    with pytest.raises(TokenInvalidError):
        await service.verify_token(session.token)
    with pytest.raises(TokenInvalidError):
        await service.verify_purpose_token("oidc-login", session.token)
