"""CNCF Distribution (Debian's docker-registry 2.8) with Docker token auth, and the token server it trusts, on
loopback: an upstream that answers 401 with a Bearer challenge and only accepts JWTs its rootcertbundle vouches
for, as Docker Hub, GHCR or Harbor do.

Distribution 2.8 (registry/auth/token/token.go) takes the signing key from the JWT header's `x5c` chain, which
must verify against `rootcertbundle` (or from a `kid` naming the libtrust key id of a key in it); the claims must
name the configured issuer and service (`aud`), be inside exp/nbf (60 s leeway) and carry an `access` list
granting the actions the request needs. Here a self-signed P-256 certificate is both the bundle and the chain.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import infra
from tests.integration.registry_process import free_port

SERVICE: Final = "loopback-distribution"
ISSUER: Final = "loopback-token-issuer"
TOKEN_SECONDS: Final = 300


@dataclass
class SigningKey:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def self_signed(cls) -> SigningKey:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def mint(self, subject: str, access: list[dict[str, Any]], *, service: str = SERVICE) -> str:
        """A token Distribution accepts for `access` ([{type, name, actions}])."""
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": service, "exp": now + TOKEN_SECONDS, "nbf": now - 1,
                  "iat": now, "jti": secrets.token_hex(16), "access": access}
        chain = [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"x5c": chain})


@dataclass
class TokenServer:
    """The realm: GET /token?service=&scope=... with Basic credentials. Each user is granted the actions their
    entry lists (per repository name, `*` for any) among those the scopes ask for; unknown users and wrong
    passwords get 401, and so does a request without credentials."""

    signing: SigningKey
    users: Mapping[str, tuple[str, Mapping[str, frozenset[str]]]]
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def grant(self, user: str, scopes: list[str]) -> list[dict[str, Any]]:
        grants = self.users[user][1]
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            allowed = grants.get(name, grants.get("*", frozenset()))
            wanted = sorted(a for a in actions.split(",") if a in allowed)
            if wanted:
                access.append({"type": "repository", "name": name, "actions": wanted})
        return access

    async def handle(self, request: web.Request) -> web.Response:
        scopes = [s for value in request.query.getall("scope", []) for s in value.split(" ") if s]
        user = self._user(request.headers.get("Authorization", ""))
        self.requests.append({"user": user, "service": request.query.get("service"),
                              "account": request.query.get("account"), "scopes": scopes})
        if user is None:
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "wrong user name or password"}]}, status=401,
                headers={"WWW-Authenticate": 'Basic realm="token"'})
        if request.query.get("service") != SERVICE:
            return web.json_response({"errors": [{"code": "DENIED", "message": "unknown service"}]}, status=400)
        token = self.signing.mint(user, self.grant(user, scopes))
        issued = dt.datetime.now(dt.UTC).isoformat()
        return web.json_response({"token": token, "access_token": token, "expires_in": TOKEN_SECONDS,
                                  "issued_at": issued})

    def _user(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except ValueError:
            return None
        known = self.users.get(user)
        return user if known is not None and secrets.compare_digest(known[0], password) else None


@contextlib.asynccontextmanager
async def token_server(users: Mapping[str, tuple[str, Mapping[str, frozenset[str]]]]
                       ) -> AsyncIterator[TokenServer]:
    server = TokenServer(SigningKey.self_signed(), users)
    app = web.Application()
    app.router.add_get("/token", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/token"
    try:
        yield server
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def token_distribution(tmp_path: Path, tokens: TokenServer) -> AsyncIterator[str]:
    """Debian's docker-registry with `auth: token` trusting `tokens`' certificate; yields `host:port`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    bundle = tmp_path / "rootcertbundle.pem"
    bundle.write_bytes(tokens.signing.pem())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "AWS_"))}
    log_path = tmp_path / "registry.log"
    # Another process may take the free port between our probe and the registry's bind: a few tries.
    for _attempt in range(3):
        port = free_port()
        config = tmp_path / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
            f"auth:\n  token:\n    realm: {tokens.url}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
            f"    rootcertbundle: {bundle}\n"
        )
        log = log_path.open("ab")
        proc = await asyncio.create_subprocess_exec(infra("HANZO_TOOL_DOCKER_REGISTRY"), "serve", str(config),
                                                    stdout=log, stderr=log, env=env)
        try:
            if await _listening(proc, port):
                yield f"127.0.0.1:{port}"
                return
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            log.close()
    raise RuntimeError(f"docker-registry did not start: {log_path.read_text()[-3000:]}")


async def _listening(proc: asyncio.subprocess.Process, port: int) -> bool:
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return True
        if proc.returncode is not None:
            return False
        await asyncio.sleep(0.05)
    return False
