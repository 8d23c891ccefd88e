"""Registry authentication, pure: WWW-Authenticate challenges, token scopes and their union, the token
response, and a cache of tokens per (registry, scope set) that refreshes them before they expire."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from services.core.client.errors import OciAuthenticationError

DEFAULT_TOKEN_SECONDS: Final = 60
"""Lifetime of a token whose response gives no `expires_in` (the Docker token spec's default)."""

_TOKEN_CHARS: Final = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password (or API key) for Basic auth and the token endpoint."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a `WWW-Authenticate` header: the scheme (lowercased) and its parameters (names
    lowercased)."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        """The challenge's `scope` (space-separated scopes in one parameter)."""
        return tuple(self.params.get("scope", "").split())

    @property
    def error(self) -> str | None:
        return self.params.get("error")


# ---------------------------------------------------------------------------------------------- challenges


class _Scanner:
    """A cursor over one header value."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def skip(self, chars: str = " \t") -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def token(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _TOKEN_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        """A quoted-string starting at the opening quote; backslash escapes the next character."""
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif char == '"':
                break
            else:
                out.append(char)
        return "".join(out)

    def value(self) -> str:
        if self.peek() == '"':
            return self.quoted()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ", \t":
            self.pos += 1
        return self.text[start : self.pos]


def _parse_one_header(text: str) -> list[Challenge]:
    scanner = _Scanner(text)
    challenges: list[Challenge] = []
    params: dict[str, str] | None = None
    while True:
        scanner.skip(" \t,")
        if not scanner.peek():
            break
        mark = scanner.pos
        name = scanner.token()
        if not name:  # garbage: skip one character and carry on
            scanner.pos += 1
            continue
        scanner.skip()
        if scanner.peek() == "=" and params is not None:
            scanner.pos += 1
            scanner.skip()
            params[name.lower()] = scanner.value()
            continue
        if scanner.peek() == "=":  # a parameter before any scheme, or token68 padding: not a challenge
            scanner.pos = max(scanner.pos + 1, mark + 1)
            scanner.value()
            continue
        params = {}
        challenges.append(Challenge(name.lower(), params))
    return challenges


def parse_challenges(headers: Iterable[str]) -> tuple[Challenge, ...]:
    """Every challenge of one or more `WWW-Authenticate` values (a value may hold several, comma-separated;
    quoted parameters may hold commas, e.g. `scope="repository:a:pull,push"`). Never raises."""
    return tuple(challenge for header in headers for challenge in _parse_one_header(header))


def pick_challenge(challenges: Sequence[Challenge]) -> Challenge | None:
    """The challenge to answer: Bearer (with a realm) before Basic; None when we speak neither."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme and (scheme == "basic" or challenge.realm):
                return challenge
    return None


# ---------------------------------------------------------------------------------------------- scopes


def _split_scope(scope: str) -> tuple[str, str, frozenset[str]] | None:
    """`type:name:actions` (the name may itself hold ':', e.g. a port); None when malformed."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not (sep and sep2 and kind and name):
        return None
    return kind, name, frozenset(a for a in actions.split(",") if a)


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The union of `scopes`: one scope per resource with the union of its actions, sorted. Malformed scopes
    are kept as they are (a registry may use its own forms)."""
    resources: dict[tuple[str, str], set[str]] = {}
    opaque: set[str] = set()
    for scope in scopes:
        parts = _split_scope(scope)
        if parts is None:
            opaque.add(scope)
            continue
        kind, name, actions = parts
        resources.setdefault((kind, name), set()).update(actions)
    merged = {f"{kind}:{name}:{','.join(sorted(actions))}" for (kind, name), actions in resources.items()}
    return tuple(sorted(merged | opaque))


def scopes_cover(held: Iterable[str], needed: Iterable[str]) -> bool:
    """Whether a token for `held` grants everything `needed` asks for (`*` grants every action)."""
    granted: dict[tuple[str, str], frozenset[str]] = {}
    opaque: set[str] = set()
    for scope in held:
        parts = _split_scope(scope)
        if parts is None:
            opaque.add(scope)
        else:
            granted[(parts[0], parts[1])] = granted.get((parts[0], parts[1]), frozenset()) | parts[2]
    for scope in needed:
        parts = _split_scope(scope)
        if parts is None:
            if scope not in opaque:
                return False
            continue
        have = granted.get((parts[0], parts[1]))
        if have is None or not ("*" in have or parts[2] <= have):
            return False
    return True


def scope_resources(scopes: Iterable[str]) -> frozenset[tuple[str, str]]:
    """The (type, name) resources `scopes` are about."""
    return frozenset((p[0], p[1]) for p in map(_split_scope, scopes) if p is not None)


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions)}"


# ---------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token for `scopes` (what we asked for), valid from `issued_at` until `expires_at` (epoch
    seconds, by our clock)."""

    value: str = field(repr=False)
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float

    def fresh(self, now: float, *, margin: float) -> bool:
        """Still usable for a new request: `margin` seconds (at most half its lifetime) before it expires."""
        lifetime = max(self.expires_at - self.issued_at, 0.0)
        return now < self.expires_at - min(margin, lifetime / 2)


def _rfc3339(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def token_from_response(body: Any, scopes: Sequence[str], *, now: float) -> Token:
    """The token of a token-endpoint response (`token` or `access_token`, `expires_in`, `issued_at`).

    The lifetime starts at the server's `issued_at` when that is not in our future (a server clock ahead of
    ours must not make a token look longer-lived); a token that would already be over by our clock gets its
    `expires_in` from now. Raises OciAuthenticationError when there is no token.
    """
    if not isinstance(body, dict):
        raise OciAuthenticationError("token endpoint answered something other than a JSON object")
    value = body.get("token") or body.get("access_token")
    if not isinstance(value, str) or not value:
        raise OciAuthenticationError("token endpoint answered without a token")
    expires_in = body.get("expires_in")
    lifetime = (
        float(expires_in)
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0
        else float(DEFAULT_TOKEN_SECONDS)
    )
    issued = _rfc3339(body.get("issued_at"))
    start = min(issued, now) if issued is not None else now
    if start + lifetime <= now:
        start = now
    return Token(value, tuple(scopes), start, start + lifetime)


class TokenCache:
    """Bearer tokens per (registry, scope set). `find` returns a fresh token whose scopes cover the request;
    `scopes_to_request` widens a request to the scopes already held on the same resources, so a push after a
    pull asks for `pull,push` once instead of juggling two tokens. Not thread-safe (one event loop)."""

    def __init__(
        self, *, refresh_margin: float = 30.0, max_entries: int = 256, clock: Callable[[], float] = time.time
    ) -> None:
        self.refresh_margin, self.max_entries, self.clock = refresh_margin, max_entries, clock
        self._tokens: dict[tuple[str, tuple[str, ...]], Token] = {}
        self.fetched = 0
        """Tokens stored so far (for metrics and tests)."""

    def find(self, registry: str, needed: Sequence[str]) -> Token | None:
        now = self.clock()
        usable = [
            token
            for (reg, _), token in self._tokens.items()
            if reg == registry and token.fresh(now, margin=self.refresh_margin) and scopes_cover(token.scopes, needed)
        ]
        return max(usable, key=lambda token: token.expires_at, default=None)

    def scopes_to_request(self, registry: str, needed: Sequence[str]) -> tuple[str, ...]:
        """`needed` plus the scopes of held tokens (fresh or not) about the same resources."""
        resources = scope_resources(needed)
        extra = [
            scope
            for (reg, scopes), _ in self._tokens.items()
            if reg == registry and scope_resources(scopes) & resources
            for scope in scopes
            if scope_resources([scope]) <= resources
        ]
        return merge_scopes([*needed, *extra])

    def store(self, registry: str, token: Token) -> None:
        now = self.clock()
        for key in [k for k, t in self._tokens.items() if t.expires_at <= now]:
            del self._tokens[key]
        self._tokens[(registry, merge_scopes(token.scopes))] = token
        while len(self._tokens) > self.max_entries:
            del self._tokens[next(iter(self._tokens))]
        self.fetched += 1

    def discard(self, registry: str, value: str) -> None:
        """Forget a token the registry refused."""
        for key in [k for k, t in self._tokens.items() if k[0] == registry and t.value == value]:
            del self._tokens[key]
