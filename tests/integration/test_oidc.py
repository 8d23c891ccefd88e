"""External identity against an OIDC provider on loopback, with a real registry process on both assemblies.

The provider is made here (Dex cannot be built from the Go module proxy this project reaches: it serves
only github.com/dexidp/dex v2.13.0+incompatible of 2018, which has no password grant, no PKCE and no
groups for static users): an aiohttp server in a thread with a discovery document, a JWKS (RS256, ES256
and Ed25519 keys, rotatable), an authorization endpoint that answers with a redirect carrying a code
(PKCE S256 checked at the code exchange), and a token endpoint with the authorization_code and password
grants for static users in groups.

Covered: skopeo and oras log in with an IdP token as password and push where the group's team has writer,
refused where it has reader; bad tokens (expired, another issuer, wrong audience, tampered signature,
`alg: none`, HS256 keyed with the public key) get 401 naming the reason at every entry point; a key rotated
at the IdP is fetched; group removal drops the IdP membership (and admin) at the next login but keeps
an admin's; an IdP token manages its own user's keys only; the PKCE browser login and its session cookie
with CSRF protection; the console's single sign-on through it (in Chromium too, across sites).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as until
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import infra
from tests.integration import browser, images
from tests.integration.registry_process import ASSEMBLIES, RegistryProcess, free_port, registry_process
from tests.integration.test_auth_clients import admin_key, basic, call

pytestmark = pytest.mark.client

CLIENT_ID = "hanzo-registry"
CLIENT_SECRET = "test-client-secret"
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}
ISSUED: list[str] = []
"""Every IdP token these tests sent; the last test greps the registry's (DEBUG) log for them."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(kid: str, alg: str, private: Any) -> dict[str, Any]:
    algorithm = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[alg]
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(private.public_key()))  # type: ignore[attr-defined]
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


class TestIdp:
    """The OIDC provider of these tests (module docstring), served from its own thread and event loop."""

    __test__ = False

    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/idp"
        self.keys: dict[str, tuple[str, Any]] = {
            "rsa-1": ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "ec-1": ("ES256", ec.generate_private_key(ec.SECP256R1())),
            "ed-1": ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
        }
        self.signing_kid = "rsa-1"
        self.form_login = False
        """The authorization endpoint shows a sign-in form (submitted by the browser) instead of redirecting."""
        self.groups: dict[str, list[str]] = {"alice": ["ml-engineers", "Viewers"], "bob": [], "carol": []}
        self.codes: dict[str, dict[str, Any]] = {}
        self.jwks_fetches = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # tokens

    def token(self, user: str, *, kid: str | None = None, **changes: Any) -> str:
        kid = kid or self.signing_kid
        alg, key = self.keys[kid]
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "sub": f"sub-{user}", "preferred_username": user,
                  "groups": self.groups.get(user, []), "iat": now, "nbf": now, "exp": now + 600,
                  "email": f"{user}@example.com"}
        claims.update(changes)
        token = jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm=alg,
                           headers={"kid": kid})
        ISSUED.append(token)
        return token

    def rotate(self) -> str:
        """A new signing key, published (the old ones stay) and used from now on."""
        kid = f"ec-{len(self.keys) + 1}"
        self.keys[kid] = ("ES256", ec.generate_private_key(ec.SECP256R1()))
        self.signing_kid = kid
        return kid

    # HTTP

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.issuer, "jwks_uri": f"{self.issuer}/keys",
            "authorization_endpoint": f"{self.issuer}/auth", "token_endpoint": f"{self.issuer}/token",
            "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        })

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response({"keys": [jwk_of(kid, alg, key) for kid, (alg, key) in self.keys.items()]})

    async def _authorize(self, request: web.Request) -> web.Response:
        """Logs in `login_hint` (default alice) and redirects back with a code: at once, or (`form_login`) once
        the browser submits the sign-in form this answers with, as at a real IdP."""
        q: Mapping[str, Any]
        if request.method == "POST":
            q = {k: str(v) for k, v in (await request.post()).items()}
        elif self.form_login:
            fields = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">'
                             for k, v in request.query.items())
            return web.Response(content_type="text/html", text=f'<!doctype html><title>IdP</title><form method="post" '
                                f'action="/idp/auth">{fields}<button type="submit">Sign in</button></form>')
        else:
            q = request.query
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
            return web.json_response({"error": "unauthorized_client"}, status=400)
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.json_response({"error": "invalid_request", "error_description": "PKCE required"}, status=400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"user": q.get("login_hint", "alice"), "nonce": q.get("nonce"),
                            "challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"]}
        location = str(q["redirect_uri"]) + "?" + urlencode({"code": code, "state": q.get("state", "")})
        return web.Response(status=302, headers={"Location": location})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        auth = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        client_ok = hmac.compare_digest(auth, expected) or (
            form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET)
        if not client_ok:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") == "password":
            user = str(form.get("username", ""))
            if PASSWORDS.get(user) != form.get("password"):
                return web.json_response({"error": "invalid_grant"}, status=401)
            token = self.token(user)
            return web.json_response({"access_token": token, "id_token": token, "token_type": "bearer"})
        if form.get("grant_type") == "authorization_code":
            grant = self.codes.pop(str(form.get("code", "")), None)
            verifier = str(form.get("code_verifier", ""))
            if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
                return web.json_response({"error": "invalid_grant"}, status=400)
            if b64(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]:
                return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
            token = self.token(grant["user"], nonce=grant["nonce"])
            return web.json_response({"access_token": "opaque", "id_token": token, "token_type": "bearer"})
        return web.json_response({"error": "unsupported_grant_type"}, status=400)

    def password_grant(self, user: str) -> str:
        """A token from the password grant, as a CLI user would get one (`hanzo auth token`)."""
        async def get() -> str:
            client = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            async with aiohttp.ClientSession() as session, session.post(
                f"{self.issuer}/token", headers={"Authorization": client},
                data={"grant_type": "password", "username": user, "password": PASSWORDS[user],
                      "scope": "openid profile groups"},
            ) as response:
                assert response.status == 200, await response.text()
                return str((await response.json())["id_token"])

        return self.run(get())  # type: ignore[no-any-return]

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def start(self) -> None:
        self._thread.start()
        app = web.Application()
        app.router.add_get("/idp/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/idp/keys", self._jwks)
        app.router.add_get("/idp/auth", self._authorize)
        app.router.add_post("/idp/auth", self._authorize)
        app.router.add_post("/idp/token", self._token)

        async def up() -> None:
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self.run(up())

    def stop(self) -> None:
        if self._runner is not None:
            self.run(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIdp]:
    provider = TestIdp()
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module", params=ASSEMBLIES)
def registry(request: pytest.FixtureRequest, idp: TestIdp,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    env = {
        "HANZO_REGISTRY_AUTH__MODE": "token",
        "HANZO_REGISTRY_TELEMETRY__LOG_LEVEL": "DEBUG",
        "HANZO_REGISTRY_AUTH__OIDC__ISSUER": idp.issuer,
        "HANZO_REGISTRY_AUTH__OIDC__CLIENT_ID": CLIENT_ID,
        "HANZO_REGISTRY_AUTH__OIDC__CLIENT_SECRET": CLIENT_SECRET,
        "HANZO_REGISTRY_AUTH__OIDC__ADMIN_GROUPS": "Registry Admins",
        "HANZO_REGISTRY_AUTH__OIDC__JWKS_REFETCH_SECONDS": "1",
        # Every case below fails a login on purpose; the limit is not what these tests are about.
        "HANZO_REGISTRY_AUTH__LOGIN_FAILURE_LIMIT": "1000",
    }
    with registry_process(request.param, tmp_path_factory.mktemp(f"oidc-{request.param}"), env=env) as reg:
        yield reg


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin(reg: RegistryProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key(reg)}", "Content-Type": "application/json"}


def grant(reg: RegistryProcess, namespace: str, team: str, role: str) -> None:
    status, _, body = call(reg, "POST", f"/v1/registry/namespaces/{namespace}/permissions", headers=admin(reg),
                           body=json.dumps({"team": team, "role": role}).encode())
    assert status == 201, body


def me(reg: RegistryProcess, token: str) -> dict[str, Any]:
    status, _, body = call(reg, "GET", "/v1/registry/me", headers=bearer(token))
    assert status == 200, body
    return dict(body)


def run(reg: RegistryProcess, *cmd: str | Path, cwd: Path | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=180, check=False, cwd=cwd)
    if check and proc.returncode != 0:
        pytest.fail(f"$ {cmd[0]} {cmd[1]} ... exit {proc.returncode}\n{proc.stderr.decode(errors='replace')[-3000:]}"
                    f"\n--- registry log\n{reg.log_tail(30)}")
    return proc


def test_first_login_makes_the_user_and_teams_then_clients_push_by_the_teams_roles(
    registry: RegistryProcess, idp: TestIdp, tmp_path: Path,
) -> None:
    token = idp.password_grant("alice")
    # The first login (at /token, Basic with any user name) makes alice and the teams of her groups.
    status, _, body = call(registry, "GET", "/token?service=hanzo-registry", headers=basic("hanzo", token))
    assert status == 200 and body["token"] != token
    who = me(registry, token)
    assert who["name"] == "alice" and sorted(who["teams"]) == ["ml-engineers", "viewers"] and not who["admin"]
    assert who["external_issuer"] == idp.issuer and who["signed_in"]  # when its keys would pause counts from
    grant(registry, "ml", "ml-engineers", "writer")
    grant(registry, "view", "viewers", "reader")

    skopeo, authfile = infra("HANZO_TOOL_SKOPEO"), tmp_path / "auth.json"
    src = images.multi_layer_image(tmp_path / "src")
    run(registry, skopeo, "login", "--tls-verify=false", "--authfile", authfile, "-u", "hanzo", "-p", token,
        registry.addr)
    run(registry, skopeo, "copy", "--authfile", authfile, "--dest-tls-verify=false", src.oci_ref,
        f"docker://{registry.addr}/ml/app:v1")
    refused = run(registry, skopeo, "copy", "--authfile", authfile, "--dest-tls-verify=false", src.oci_ref,
                  f"docker://{registry.addr}/view/app:v1", check=False)
    assert refused.returncode != 0 and b"denied" in refused.stderr.lower()

    oras, config = infra("HANZO_TOOL_ORAS"), tmp_path / "oras.json"
    (tmp_path / "model.safetensors").write_bytes(images.safetensors_bytes())
    run(registry, oras, "login", "--plain-http", "--registry-config", config, "-u", "alice", "-p", token,
        registry.addr)
    run(registry, oras, "push", "--plain-http", "--registry-config", config, f"{registry.addr}/ml/model:v1",
        "model.safetensors", cwd=tmp_path)
    refused = run(registry, oras, "push", "--plain-http", "--registry-config", config,
                  f"{registry.addr}/view/model:v1", "model.safetensors", cwd=tmp_path, check=False)
    assert refused.returncode != 0 and b"denied" in refused.stderr
    run(registry, oras, "pull", "--plain-http", "--registry-config", config, "-o", tmp_path / "out",
        f"{registry.addr}/ml/model:v1")
    # The IdP token also works as Bearer on /v2 itself, checked against the live grants.
    assert call(registry, "GET", "/v2/ml/model/tags/list", headers=bearer(token))[0] == 200
    assert call(registry, "GET", "/v2/view/app/tags/list", headers=bearer(token))[0] == 404  # reader, no repo


def _bad_tokens(idp: TestIdp) -> dict[str, tuple[str, str]]:
    """name -> (token, the reason the registry must name)."""
    good = idp.token("bob")
    header, payload, signature = good.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["groups"] = ["Registry Admins"]
    tampered = f"{header}.{b64(json.dumps(forged).encode())}.{signature}"
    none = f"{b64(json.dumps({'alg': 'none', 'kid': 'rsa-1'}).encode())}.{payload}."
    pem = idp.keys["rsa-1"][1].public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    mac = hmac.new(pem, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest()
    foreign = jwt.encode({**forged, "iss": "https://idp.elsewhere.example"}, ec.generate_private_key(ec.SECP256R1()),
                         algorithm="ES256", headers={"kid": "ec-1"})
    return {
        "expired": (idp.token("bob", exp=int(time.time()) - 3600, iat=int(time.time()) - 7200,
                              nbf=int(time.time()) - 7200), "token has expired"),
        "another issuer": (foreign, "token issuer is not"),
        "wrong audience": (idp.token("bob", aud="someone-else"), "audience is not accepted"),
        "tampered signature": (tampered, "signature verification failed"),
        "alg none": (none, "algorithm 'none' is not accepted"),
        "HS256 with the public key": (f"{hs_header}.{payload}.{b64(mac)}", "algorithm 'HS256' is not accepted"),
    }


def test_bad_idp_tokens_get_401_naming_the_reason_everywhere(registry: RegistryProcess, idp: TestIdp) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for name, (token, reason) in _bad_tokens(idp).items():
        attempts = {
            "/v2 Basic": call(registry, "GET", "/v2/", headers=basic("hanzo", token)),
            "/v2 Bearer": call(registry, "GET", "/v2/", headers=bearer(token)),
            "/v1 Bearer": call(registry, "GET", "/v1/registry/me", headers=bearer(token)),
            "/token GET": call(registry, "GET", "/token?service=hanzo-registry", headers=basic("bob", token)),
            "/token POST": call(registry, "POST", "/token", headers=form,
                                body=urlencode({"grant_type": "password", "username": "bob",
                                                "password": token}).encode()),
        }
        for where, (status, headers, body) in attempts.items():
            assert status == 401, (name, where, body)
            message = body["errors"][0]["message"]
            assert reason in message, (name, where, message)
            assert "invalid_token" in headers.get("WWW-Authenticate", ""), (name, where)
    # none of them made a user
    status, _, body = call(registry, "GET", "/v1/registry/users/bob", headers=admin(registry))
    assert status == 404, body


def test_a_key_rotated_at_the_idp_is_fetched(registry: RegistryProcess, idp: TestIdp) -> None:
    assert call(registry, "GET", "/v2/", headers=bearer(idp.token("carol", kid="ed-1")))[0] == 200
    kid = idp.rotate()
    token = idp.token("carol")
    assert jwt.get_unverified_header(token)["kid"] == kid
    deadline = time.monotonic() + 10  # the registry refetches at most once a second (jwks_refetch_seconds)
    while True:
        status, _, body = call(registry, "GET", "/token?service=hanzo-registry", headers=basic("hanzo", token))
        if status == 200 or time.monotonic() > deadline:
            break
        assert "unknown key" in body["errors"][0]["message"]
        time.sleep(0.3)
    assert status == 200, body


def test_group_changes_apply_at_the_next_login(registry: RegistryProcess, idp: TestIdp) -> None:
    idp.groups["bob"] = ["Registry Admins", "Data Science", "ops"]
    first = idp.password_grant("bob")
    who = me(registry, first)
    assert who["admin"] and sorted(who["teams"]) == ["data-science", "ops", "registry-admins"]
    # an admin adds bob to a team of their own; a login never removes that
    assert call(registry, "POST", "/v1/registry/teams", headers=admin(registry),
                body=json.dumps({"name": "reviewers"}).encode())[0] == 201
    assert call(registry, "PUT", "/v1/registry/teams/reviewers/members/bob", headers=admin(registry))[0] == 204
    idp.groups["bob"] = ["ops"]
    time.sleep(1.1)  # a new token (its iat differs)
    second = idp.password_grant("bob")
    assert call(registry, "GET", "/token?service=hanzo-registry", headers=basic("hanzo", second))[0] == 200
    who = me(registry, second)
    assert not who["admin"] and sorted(who["teams"]) == ["ops", "reviewers"]
    # the old token still verifies (it has not expired) but syncs nothing back: bob's rights are the new ones
    assert not me(registry, first)["admin"]


def test_an_idp_token_manages_its_own_keys_only(registry: RegistryProcess, idp: TestIdp) -> None:
    token = idp.password_grant("carol")
    headers = {**bearer(token), "Content-Type": "application/json"}
    status, _, created = call(registry, "POST", "/v1/registry/users/carol/keys", headers=headers,
                              body=json.dumps({"name": "ci"}).encode())
    assert status == 201, created
    assert call(registry, "GET", "/v2/", headers=bearer(created["key"]))[0] == 200  # the key works
    status, _, body = call(registry, "POST", "/v1/registry/users/admin/keys", headers=headers, body=b"{}")
    assert status == 403, body
    # a registry token obtained with the IdP token stays read-only on the management API
    status, _, issued = call(registry, "GET", "/token?service=hanzo-registry", headers=basic("hanzo", token))
    assert status == 200
    assert call(registry, "POST", "/v1/registry/users/carol/keys", body=b"{}",
                headers={**bearer(issued["token"]), "Content-Type": "application/json"})[0] == 403


@pytest.mark.parametrize("assembly", ASSEMBLIES)
def test_an_external_users_keys_pause_without_a_sign_in(
    assembly: str, idp: TestIdp, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = {
        "HANZO_REGISTRY_AUTH__MODE": "token",
        "HANZO_REGISTRY_AUTH__OIDC__ISSUER": idp.issuer,
        "HANZO_REGISTRY_AUTH__OIDC__CLIENT_ID": CLIENT_ID,
        "HANZO_REGISTRY_AUTH__OIDC__KEY_SIGNIN_MAX_AGE_SECONDS": "4",
    }
    with registry_process(assembly, tmp_path_factory.mktemp(f"oidc-pause-{assembly}"), env=env) as reg:
        token = idp.token("frank")
        status, _, created = call(reg, "POST", "/v1/registry/users/frank/keys", body=b'{"name": "ci"}',
                                  headers={**bearer(token), "Content-Type": "application/json"})
        assert status == 201, created
        key = created["key"]
        status, _, issued = call(reg, "GET", "/token?service=hanzo-registry", headers=basic("frank", key))
        assert status == 200
        # No sign-in for longer than the setting (4 s): the key pauses, with a reason a person can act on
        deadline = time.monotonic() + 30
        while (answer := call(reg, "GET", "/token?service=hanzo-registry", headers=basic("frank", key)))[0] == 200:
            assert time.monotonic() < deadline, "the key never paused"
            time.sleep(0.2)
        status, _, body = answer
        assert status == 401 and "has not signed in through the identity provider" in json.dumps(body), body
        assert call(reg, "GET", "/v2/", headers=bearer(key))[0] == 401
        status, _, body = call(reg, "GET", "/v2/", headers=bearer(issued["token"]))  # a token made from it too
        assert status == 401 and "paused" in json.dumps(body), body
        # A sign-in (a new IdP token used here) brings it back
        assert call(reg, "GET", "/v1/registry/me", headers=bearer(idp.token("frank")))[0] == 200
        assert call(reg, "GET", "/token?service=hanzo-registry", headers=basic("frank", key))[0] == 200
        assert call(reg, "GET", "/v2/", headers=bearer(key))[0] == 200


def test_a_local_user_name_cannot_be_taken_through_the_idp(registry: RegistryProcess, idp: TestIdp) -> None:
    token = idp.token("admin", sub="someone-else")
    status, _, body = call(registry, "GET", "/v1/registry/me", headers=bearer(token))
    assert status == 401 and "belongs to a local user" in body["errors"][0]["message"]


def test_browser_login_with_pkce_makes_a_session_with_csrf(registry: RegistryProcess, idp: TestIdp) -> None:
    base = f"http://{registry.addr}"
    assert call(registry, "POST", "/v1/registry/namespaces/ml/permissions", headers=admin(registry),
                body=json.dumps({"user": "dave", "role": "reader"}).encode())[0] == 404  # dave is not yet

    async def flow() -> None:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            async with browser.get(f"{base}/v1/registry/auth/oidc/login?return_to=/v1/registry/me",
                                   allow_redirects=False) as r:
                assert r.status == 302, await r.text()
                authorize = r.headers["Location"]
                login_cookie = r.cookies["hzr_oidc"]
                assert login_cookie["httponly"] and login_cookie["samesite"] == "Lax"
            q = parse_qs(urlsplit(authorize).query)
            assert authorize.startswith(f"{idp.issuer}/auth?") and q["code_challenge_method"] == ["S256"]
            assert q["client_id"] == [CLIENT_ID] and q["state"] and q["nonce"]
            idp.groups["dave"] = ["ml-engineers"]
            async with browser.get(authorize + "&login_hint=dave", allow_redirects=False) as r:
                assert r.status == 302
                callback = r.headers["Location"]
            assert callback.startswith(f"{base}/v1/registry/auth/oidc/callback?")
            # a forged state (another browser's login) is refused
            forged = callback.replace("state=", "state=x")
            async with browser.get(forged, allow_redirects=False) as r:
                assert r.status == 401 and "state" in (await r.json())["errors"][0]["message"]
            async with browser.get(callback, allow_redirects=False) as r:
                assert r.status == 302, await r.text()
                assert r.headers["Location"] == "/v1/registry/me"
                session, csrf = r.cookies["hzr_session"], r.cookies["hzr_csrf"]
                assert session["httponly"] and session["samesite"] == "Lax" and not session["secure"]
                assert not csrf["httponly"]
            # the session reads /v1/registry and /v2
            async with browser.get(f"{base}/v1/registry/me") as r:
                assert r.status == 200
                who = await r.json()
                assert who["name"] == "dave" and who["teams"] == ["ml-engineers"]
            async with browser.get(f"{base}/v2/ml/app/tags/list") as r:
                assert r.status == 200, await r.text()
            # writes need the CSRF header matching the session
            url = f"{base}/v1/registry/users/dave/keys"
            async with browser.post(url, json={"name": "laptop"}) as r:
                assert r.status == 403 and "X-CSRF-Token" in (await r.json())["errors"][0]["message"]
            async with browser.post(url, json={"name": "laptop"}, headers={"X-CSRF-Token": "guess"}) as r:
                assert r.status == 403
            async with browser.post(url, json={"name": "laptop"}, headers={"X-CSRF-Token": csrf.value}) as r:
                assert r.status == 201, await r.text()
            # /v2 writes never take the cookie: the client is challenged as if it sent nothing
            async with browser.post(f"{base}/v2/ml/app/blobs/uploads/", headers={"X-CSRF-Token": csrf.value}) as r:
                assert r.status == 401
            # nor does the session work as a bearer token
            async with aiohttp.ClientSession() as other, other.get(
                f"{base}/v2/", headers={"Authorization": f"Bearer {session.value}"}) as r:
                assert r.status == 401
            async with browser.post(f"{base}/v1/registry/auth/oidc/logout") as r:
                assert r.status == 204
            async with browser.get(f"{base}/v1/registry/me") as r:
                assert r.status == 401

    asyncio.run(flow())


def test_console_single_sign_on_makes_a_console_session_and_logout_ends_both(
    registry: RegistryProcess, idp: TestIdp,
) -> None:
    base = f"http://{registry.addr}"
    home = "/console/repositories"

    async def flow() -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(f"{base}/console/login") as r:
                assert r.status == 200
                assert f'href="/console/login/sso?next={home.replace("/", "%2F")}"' in await r.text()
            # Not signed on: to the registry's browser login, which comes back to .../done
            async with browser.get(f"{base}/console/login/sso?next={home}", allow_redirects=False) as r:
                assert r.status == 303
                login = r.headers["Location"]
            assert login.startswith("/v1/registry/auth/oidc/login?return_to=")
            async with browser.get(base + login, allow_redirects=False) as r:
                assert r.status == 302
                authorize = r.headers["Location"]
            idp.groups["erin"] = ["ml-engineers"]
            async with browser.get(authorize + "&login_hint=erin", allow_redirects=False) as r:
                callback = r.headers["Location"]
            async with browser.get(callback, allow_redirects=False) as r:
                assert r.status == 302, await r.text()
                done = r.headers["Location"]
            assert done == f"/console/login/sso/done?next={home.replace('/', '%2F')}"
            # Done: a console session, and a page of ours that goes on (a redirect at the end of the IdP's
            # chain would not carry the SameSite=Strict console cookie)
            async with browser.get(base + done, allow_redirects=False) as r:
                assert r.status == 200, await r.text()
                page = await r.text()
                cookie = r.cookies["hzr_console"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console/"
            assert f'<meta http-equiv="refresh" content="0; url={home}">' in page
            async with browser.get(base + home, allow_redirects=False) as r:
                assert r.status == 200, r.headers.get("Location")
                text = await r.text()
                assert "Signed in as <strong>erin</strong>" in text
            # The console session ends (15 minutes) while the registry session lasts: renewed, no login page
            browser.cookie_jar.clear(lambda cookie: cookie.key == "hzr_console")
            async with browser.get(base + home, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == done, r.headers["Location"]
            async with browser.get(base + done, allow_redirects=False, headers={"Sec-Fetch-Site": "same-origin"}) as r:
                assert r.status == 303 and r.headers["Location"] == home and "hzr_console" in r.cookies
            async with browser.get(base + home, allow_redirects=False) as r:
                assert r.status == 200
                text = await r.text()
            csrf = re.search(r'name="csrf" value="([^"]+)"', text)
            assert csrf is not None
            # Signed on, no key: the keys page makes one for docker (as Harbor's CLI secret)
            async with browser.post(f"{base}/console/keys", data={"csrf": csrf.group(1), "name": "laptop"}) as r:
                assert r.status == 201, await r.text()
                made = re.search(r'<code id="new-key">(hzr_[^<]+)</code>', await r.text())
            assert made is not None
            status, _, _ = call(registry, "GET", "/token?service=hanzo-registry", headers=basic("erin", made.group(1)))
            assert status == 200
            # Signed on still: the console's SSO link goes straight to done, without the IdP
            async with browser.get(f"{base}/console/login/sso?next={home}", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"].startswith("/console/login/sso/done?")
            # Logging out of the console ends the registry session too
            async with browser.post(f"{base}/console/logout", data={"csrf": csrf.group(1)},
                                    allow_redirects=False) as r:
                assert r.status == 303
            async with browser.get(f"{base}/v1/registry/me") as r:
                assert r.status == 401
            async with browser.get(base + home, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"].startswith("/console/login?")
            async with browser.get(base + done, allow_redirects=False) as r:
                assert r.status == 401 and "Single sign-on did not complete" in await r.text()
            assert "hzr_console" not in {c.key for c in browser.cookie_jar}
        # A forged registry session is not one
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar, cookies={"hzr_session": "forged.value.x"}) as other:
            async with other.get(base + done, allow_redirects=False) as r:
                assert r.status == 401
            async with other.get(f"{base}/console/login/sso?next={home}", allow_redirects=False) as r:
                assert r.headers["Location"].startswith("/v1/registry/auth/oidc/login?")

    asyncio.run(flow())


def test_console_single_sign_on_in_chromium_across_sites(registry: RegistryProcess, idp: TestIdp) -> None:
    # The console on `localhost`, the IdP on 127.0.0.1: different sites. The user signs in on the IdP's form,
    # so the navigation back is one the IdP's page started, on which Chromium sends no SameSite=Strict cookie
    # (a redirect from .../sso/done straight to the console page would land on the login page again); the
    # console's own page after it starts a same-site navigation that does.
    browser.require_browser()
    port = registry.addr.rpartition(":")[2]
    base = f"http://localhost:{port}"
    idp.form_login = True
    with tempfile.TemporaryDirectory() as profile:
        driver = browser.start_chromium(Path(profile))
        try:
            driver.get(f"{base}/console/repositories")
            WebDriverWait(driver, 10).until(until.url_contains("/console/login"))
            violations = browser.axe_violations(driver, browser.axe_source())  # the login page with its SSO link
            assert not violations, violations
            driver.find_element(By.LINK_TEXT, "Log in with single sign-on").click()
            WebDriverWait(driver, 10).until(until.url_contains("/idp/auth"))
            driver.find_element(By.TAG_NAME, "button").click()
            WebDriverWait(driver, 20).until(until.url_to_be(f"{base}/console/repositories"))
            assert "Signed in as alice" in driver.find_element(By.TAG_NAME, "body").text
            browser.screenshot(driver, "sso-signed-in")
        except BaseException:
            browser.screenshot(driver, "sso-failure")
            raise
        finally:
            idp.form_login = False
            driver.quit()


def test_idp_tokens_never_appear_in_the_logs(registry: RegistryProcess) -> None:
    # Runs last in this module: every IdP token above went through this process, which logged at DEBUG.
    log = registry.log.read_text(errors="replace")
    assert "DEBUG" in log and len(ISSUED) > 10
    for token in ISSUED:
        assert token.rsplit(".", 1)[-1] not in log
    assert CLIENT_SECRET not in log
