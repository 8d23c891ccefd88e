"""HTTP to registries: per-registry options (plain HTTP, TLS), the token dance, redirects, trace headers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from services.core.client.auth import (
    Challenge,
    Credentials,
    Token,
    TokenCache,
    merge_scopes,
    parse_challenges,
    pick_challenge,
    token_from_response,
)
from services.core.client.errors import (
    OciAuthenticationError,
    OciConnectionError,
    OciResponseError,
    parse_error_body,
    response_error,
)
from services.core.client.reference import api_host
from services.core.ssrf import UrlPolicy, UrlRefusedError, check_url_syntax
from services.core.telemetry import inject_headers

MAX_ERROR_BODY: Final = 64 * 1024
"""Bytes of an error response read to explain it."""
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_KEPT_ON_REDIRECT: Final = frozenset({"range", "accept", "accept-encoding", "user-agent"})
_SHOWN_QUERY: Final = frozenset({"n", "last", "digest", "mount", "from", "artifactType"})

Body: TypeAlias = bytes | AsyncIterable[bytes] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryOptions:
    """How to reach one registry. `plain_http=None` follows Docker: plain HTTP for loopback hosts
    (localhost, 127.0.0.0/8, ::1), HTTPS for everything else. `insecure` skips TLS verification; `ca_file`
    adds a CA bundle to trust."""

    credentials: Credentials | None = None
    plain_http: bool | None = None
    insecure: bool = False
    ca_file: str | None = None
    basic_always: bool = False
    """Send the credentials as Basic on every request, without waiting for a challenge or trading them for a
    token: for APIs that take API keys but refuse registry access tokens (our management API's writes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    """Client-wide settings; `registries` maps `host[:port]` to its options (others get `default`)."""

    registries: Mapping[str, RegistryOptions] = field(default_factory=dict)
    default: RegistryOptions = field(default_factory=RegistryOptions)
    connect_timeout: float = 30.0
    read_timeout: float = 300.0
    """Longest wait for the next bytes of a response (not a limit on the whole transfer)."""
    max_manifest_bytes: int = 4 * 1024 * 1024
    max_resumes: int = 5
    """Range requests a blob pull may make after dropped connections before it gives up."""
    resume_delay: float = 0.5
    chunk_size: int = 8 * 1024 * 1024
    """Size of PATCH requests of chunked pushes (raised to the registry's OCI-Chunk-Min-Length)."""
    read_chunk_size: int = 256 * 1024
    max_redirects: int = 5
    token_refresh_margin: float = 30.0
    """Seconds before expiry (at most half its lifetime) a token is replaced for new requests."""
    user_agent: str = "hanzo-registry"
    trace_headers: bool = True
    url_policy: UrlPolicy | None = None
    """When set, every URL the client fetches (the registry, its token realm, every redirect) must pass the
    SSRF guard (services/core/ssrf.py), and connections go only to addresses it allowed."""

    def for_registry(self, registry: str) -> RegistryOptions:
        return self.registries.get(registry, self.default)


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(registry: str, options: RegistryOptions) -> URL:
    """`http(s)://host[:port]` of a registry."""
    host = api_host(registry)
    plain = options.plain_http if options.plain_http is not None else is_loopback(URL(f"http://{host}").host or "")
    return URL(f"{'http' if plain else 'https'}://{host}")


def shown(url: URL) -> str:
    """A URL for messages: query parameters other than the API's own (e.g. presigned signatures) dropped."""
    return str(url.with_query({k: v for k, v in url.query.items() if k in _SHOWN_QUERY}))


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    return url.scheme, url.host, url.port


def basic_header(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class Transport:
    """Sends requests to registries and answers their challenges. One per client; shares one aiohttp session.

    Every request names the token scopes it needs. The first 401 of a registry teaches its challenge;
    later requests authenticate up front (a cached token covering the scopes, or a new one for their union
    with what is already held on the same repositories). A 401 is answered once: by fetching a token with
    the challenge's scopes added (`insufficient_scope`, or a token the registry no longer accepts), or by
    Basic credentials; then the request is repeated once, if its body can be sent again.
    """

    def __init__(self, options: ClientOptions, session: aiohttp.ClientSession, tokens: TokenCache) -> None:
        self.options, self.session, self.tokens = options, session, tokens
        self._challenges: dict[str, Challenge] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ssl: dict[str, ssl.SSLContext | bool] = {}

    def base_url(self, registry: str) -> URL:
        return base_url(registry, self.options.for_registry(registry))

    def _ssl_for(self, registry: str) -> ssl.SSLContext | bool:
        if registry not in self._ssl:
            opts = self.options.for_registry(registry)
            if opts.insecure:
                self._ssl[registry] = False
            elif opts.ca_file:
                context = ssl.create_default_context()  # the system's CAs, and this one too
                context.load_verify_locations(cafile=opts.ca_file)
                self._ssl[registry] = context
            else:
                self._ssl[registry] = True
        return self._ssl[registry]

    # ------------------------------------------------------------------------------------------ auth

    async def _authorization(self, registry: str, scopes: Sequence[str], *, refresh: bool = False) -> str | None:
        challenge = self._challenges.get(registry)
        options = self.options.for_registry(registry)
        credentials = options.credentials
        if options.basic_always and credentials is not None:
            return basic_header(credentials)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return basic_header(credentials) if credentials else None
        token = None if refresh else self.tokens.find(registry, scopes)
        if token is None:
            lock = self._locks.setdefault(registry, asyncio.Lock())
            async with lock:
                token = None if refresh else self.tokens.find(registry, scopes)
                if token is None:
                    wanted = self.tokens.scopes_to_request(registry, scopes)
                    token = await self._fetch_token(registry, challenge, wanted, credentials)
                    self.tokens.store(registry, token)
        return f"Bearer {token.value}"

    async def _fetch_token(
        self, registry: str, challenge: Challenge, scopes: Sequence[str], credentials: Credentials | None
    ) -> Token:
        assert challenge.realm is not None
        realm = URL(challenge.realm)
        query: list[tuple[str, str]] = list(realm.query.items())
        if challenge.service:
            query.append(("service", challenge.service))
        query += [("scope", scope) for scope in scopes]
        headers = {"User-Agent": self.options.user_agent, "Accept-Encoding": "identity"}
        if credentials is not None:
            if realm.scheme != "https" and self.base_url(registry).scheme == "https":
                raise OciAuthenticationError(
                    f"registry {registry} (HTTPS) asks for credentials at a plain-HTTP realm {shown(realm)}; refused"
                )
            headers["Authorization"] = basic_header(credentials)
            query.append(("account", credentials.username))
        url = realm.with_query(query)
        self.check_url(url)
        try:
            # Under a URL policy a realm may not redirect: literal addresses in a Location never meet the resolver.
            async with self.session.get(
                url,
                headers=headers,
                ssl=self._ssl_for(registry),
                timeout=self._timeout(),
                allow_redirects=self.options.url_policy is None,
            ) as resp:
                body = await resp.content.read(MAX_ERROR_BODY)
                if resp.status != 200:
                    errors = parse_error_body(body)
                    why = "; ".join(f"{e.code}: {e.message}" for e in errors) or body[:300].decode(errors="replace")
                    raise OciAuthenticationError(
                        f"token endpoint {shown(url.with_query(None))} refused "
                        f"{'user ' + repr(credentials.username) if credentials else 'anonymous access'}: "
                        f"{resp.status} {why}".strip()
                    )
                try:
                    document = json.loads(body)
                except ValueError:
                    raise OciAuthenticationError(f"token endpoint {shown(realm)} answered invalid JSON") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OciConnectionError(f"token endpoint {shown(realm)}: {exc!r}") from exc
        return token_from_response(document, merge_scopes(scopes), now=time.time())

    def _learn(self, registry: str, resp: aiohttp.ClientResponse) -> Challenge | None:
        challenge = pick_challenge(parse_challenges(resp.headers.getall("WWW-Authenticate", [])))
        if challenge is not None:
            self._challenges[registry] = challenge
        return challenge

    # ------------------------------------------------------------------------------------------ requests

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None, sock_connect=self.options.connect_timeout, sock_read=self.options.read_timeout
        )

    def url(self, registry: str, path: str) -> URL:
        return self.base_url(registry).join(URL(path))

    async def request(
        self,
        registry: str,
        method: str,
        target: str | URL,
        *,
        scopes: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        params: Mapping[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send one request (authenticated, redirects followed for GET/HEAD) and return the final response,
        whatever its status; the caller releases it. `target` is a path or an absolute URL (e.g. an upload
        Location). Raises OciConnectionError when the registry cannot be reached."""
        url = target if isinstance(target, URL) else URL(target)
        if not url.is_absolute():
            url = self.base_url(registry).join(url)
        if params:
            url = url.update_query(params)
        replayable = body is None or isinstance(body, bytes)
        authorization = await self._authorization(registry, scopes)
        resp = await self._send(registry, method, url, headers, body, authorization, follow_redirects)
        if resp.status != 401 or not replayable:
            return resp
        challenge = self._learn(registry, resp)
        if challenge is None or not self._can_answer(registry, challenge, authorization):
            return resp
        resp.release()
        if authorization and authorization.startswith("Bearer "):
            self.tokens.discard(registry, authorization.removeprefix("Bearer "))
        needed = merge_scopes([*scopes, *challenge.scopes])
        retry_auth = await self._authorization(registry, needed, refresh=authorization is not None)
        return await self._send(registry, method, url, headers, body, retry_auth, follow_redirects)

    def _can_answer(self, registry: str, challenge: Challenge, sent: str | None) -> bool:
        """Whether a retry can send something new: a Basic challenge needs credentials we have not sent."""
        if challenge.scheme != "basic":
            return True
        return self.options.for_registry(registry).credentials is not None and not (sent or "").startswith("Basic ")

    async def _send(
        self,
        registry: str,
        method: str,
        url: URL,
        headers: Mapping[str, str] | None,
        body: Body,
        authorization: str | None,
        follow_redirects: bool,
    ) -> aiohttp.ClientResponse:
        origin = _origin(self.base_url(registry))
        request_headers = CIMultiDict(headers or {})
        request_headers.setdefault("User-Agent", self.options.user_agent)
        # Digests are of the stored bytes: never let a server or proxy re-encode them.
        request_headers.setdefault("Accept-Encoding", "identity")
        if self.options.trace_headers:
            for key, value in inject_headers().items():
                request_headers.setdefault(key, value)
        if authorization:
            request_headers["Authorization"] = authorization
        for _ in range(self.options.max_redirects + 1):
            self.check_url(url)
            try:
                resp = await self.session.request(
                    method,
                    url,
                    headers=request_headers,
                    data=body,
                    ssl=self._ssl_for(registry) if _origin(url) == origin else True,
                    timeout=self._timeout(),
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise OciConnectionError(f"{method} {shown(url)}: {exc!r}") from exc
            location = resp.headers.get("Location")
            if not (follow_redirects and resp.status in REDIRECTS and location and method in ("GET", "HEAD")):
                return resp
            resp.release()
            url = url.join(URL(location, encoded=True))
            if _origin(url) != origin:
                # A presigned URL or CDN: our credentials and trace headers are not for it.
                request_headers = CIMultiDict(
                    (k, v) for k, v in request_headers.items() if k.lower() in _KEPT_ON_REDIRECT
                )
        raise OciConnectionError(f"{method} {shown(url)}: more than {self.options.max_redirects} redirects")

    def check_url(self, url: URL) -> None:
        """Refuse a URL the policy forbids by its form alone (scheme, metadata host, a literal address); the
        guarded connector checks the addresses names resolve to."""
        if self.options.url_policy is None:
            return
        try:
            check_url_syntax(str(url), self.options.url_policy)
        except UrlRefusedError as exc:
            raise OciConnectionError(str(exc)) from None

    async def raise_for(self, resp: aiohttp.ClientResponse, *, method: str | None = None) -> OciResponseError:
        """The typed error for `resp` (its body read, bounded, and the response released), to raise."""
        try:
            body = await resp.content.read(MAX_ERROR_BODY) if resp.method != "HEAD" else b""
        except (aiohttp.ClientError, TimeoutError):
            body = b""
        finally:
            resp.release()
        # A copy: the response's own multidict goes with the released connection; headers repeat rarely.
        headers = {key: value for key, value in resp.headers.items()}
        return response_error(
            method=method or resp.method, url=shown(resp.url), status=resp.status, body=body, headers=headers
        )

    @contextlib.asynccontextmanager
    async def expect(
        self,
        registry: str,
        method: str,
        target: str | URL,
        *,
        ok: Collection[int],
        scopes: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A request whose status must be in `ok` (else its typed error is raised); released on exit."""
        resp = await self.request(registry, method, target, scopes=scopes, headers=headers, body=body, params=params)
        if resp.status not in ok:
            raise await self.raise_for(resp, method=method)
        try:
            yield resp
        finally:
            resp.release()
