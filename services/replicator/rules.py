"""Replication rules, pure: what a rule matches (repository and tag globs, referrer tags), where it copies
to (target registry and repository), and how a rule is read from its stored document or the settings file.

The stored form lives in the `replication_rules` collection, written by the management API
(services/distribution/management_replication.py) and read here:
`{_id: name, name, repositories, tags, destination_prefix, mode, schedule, delete, enabled,
include_referrers, target: {url, username, password_sealed, insecure, ca_file}, created, updated}`.
The password is sealed with the master key (services/core/secrets.py) under `secret_context(name)`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from yarl import URL

from services.core.client import Credentials, RegistryOptions
from services.core.secrets import SecretBox
from services.core.settings import ReplicationRuleSettings

RULES: Final = "replication_rules"

REFERRER_TAG: Final = re.compile(r"^(sha256|sha512)-[0-9a-f]{64,128}(\.(sig|att|sbom))?$")
"""Tags that belong to another manifest: cosign's `sha256-<hex>.sig|.att|.sbom` and the referrers tag schema's
`sha256-<hex>`; replicated with their subject (include_referrers), whatever the rule's tag filter."""


def secret_context(rule: str) -> str:
    """The authenticated context of a rule's sealed password: a sealed value copied to another rule does not open."""
    return f"replication-rule:{rule}"


class RuleInvalidError(ValueError):
    """A rule that cannot be used; the message says why."""


@lru_cache(maxsize=256)
def _glob_regex(pattern: str, *, segments: bool) -> re.Pattern[str]:
    """`**` any characters; `*` any but '/' (for repositories; anything for tags); `?` one; `[...]` a class."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            # `a/**` also matches `a` itself? No: a repository below `a`. `**/x` matches `x` at any depth.
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
                continue
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*" if segments else ".*")
        elif ch == "?":
            out.append("[^/]" if segments else ".")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    try:
        return re.compile("".join(out) + r"\Z")
    except re.error as exc:
        raise RuleInvalidError(f"invalid pattern {pattern!r}: {exc}") from None


def repository_matches(pattern: str, repository: str) -> bool:
    return _glob_regex(pattern, segments=True).match(repository) is not None


def tag_matches(pattern: str, tag: str) -> bool:
    return _glob_regex(pattern, segments=False).match(tag) is not None


def check_pattern(pattern: str) -> None:
    """RuleInvalidError when `pattern` is not a usable glob."""
    if not pattern or len(pattern) > 255:
        raise RuleInvalidError("a pattern must have 1 to 255 characters")
    _glob_regex(pattern, segments=True)


@dataclass(frozen=True, slots=True)
class Target:
    """A target registry: its URL (scheme decides plain HTTP), credentials and TLS options."""

    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    insecure: bool = False
    ca_file: str | None = None

    @property
    def registry(self) -> str:
        """`host[:port]` of the target, as image references write it."""
        return registry_of(self.url)

    def options(self) -> RegistryOptions:
        credentials = Credentials(self.username, self.password) if self.username else None
        return RegistryOptions(credentials=credentials, plain_http=URL(self.url).scheme == "http",
                               insecure=self.insecure, ca_file=self.ca_file)


def registry_of(url: str) -> str:
    """`host[:port]` of an http(s) registry URL; RuleInvalidError for anything else."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise RuleInvalidError(f"target url {url[:200]!r} must be http(s)://host[:port]")
    if parsed.path not in ("", "/") or parsed.query_string or parsed.fragment:
        raise RuleInvalidError("the target url names a registry only (no path, query or fragment): put a "
                               "repository prefix in destination_prefix")
    if parsed.user or parsed.password:
        raise RuleInvalidError("credentials do not belong in the target url: use username and password")
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{host}:{parsed.explicit_port}" if parsed.explicit_port else host


@dataclass(frozen=True, slots=True)
class Rule:
    """One replication rule."""

    name: str
    target: Target
    repositories: str = "**"
    tags: str = "*"
    destination_prefix: str = ""
    mode: str = "event"
    schedule: str | None = None
    delete: bool = False
    enabled: bool = True
    include_referrers: bool = True
    origin: str = "api"
    """`api` (stored) or `settings` (the settings file; read-only over the API)."""

    def matches_repository(self, repository: str) -> bool:
        return repository_matches(self.repositories, repository)

    def matches_tag(self, tag: str) -> bool:
        """Whether a tag is replicated: the filter, or a referrer tag when referrers come along."""
        if REFERRER_TAG.match(tag):
            return self.include_referrers
        return tag_matches(self.tags, tag)

    def destination(self, repository: str) -> str:
        """The repository name at the target."""
        prefix = self.destination_prefix.strip("/")
        return f"{prefix}/{repository}" if prefix else repository

    @property
    def event_driven(self) -> bool:
        return self.enabled and self.mode == "event"


def rule_from_settings(s: ReplicationRuleSettings) -> Rule:
    t = s.target
    target = Target(url=t.url, username=t.username, password=t.password.get_secret_value(), insecure=t.insecure,
                    ca_file=str(t.ca_file) if t.ca_file else None)
    registry_of(target.url)
    return Rule(name=s.name, target=target, repositories=s.repositories, tags=s.tags,
                destination_prefix=s.destination_prefix, mode=s.mode, schedule=s.schedule, delete=s.delete,
                enabled=s.enabled, include_referrers=s.include_referrers, origin="settings")


def rule_from_doc(doc: Mapping[str, Any], box: SecretBox | None) -> Rule:
    """A stored rule; its password opened with `box` (RuleInvalidError when it is sealed and cannot be opened)."""
    t = doc.get("target") or {}
    password = ""
    sealed = t.get("password_sealed") or ""
    if sealed:
        if box is None:
            raise RuleInvalidError(f"rule {doc['_id']}: its target password is sealed and no master key is set")
        try:
            password = box.open(sealed, context=secret_context(str(doc["_id"]))).decode()
        except Exception as exc:
            raise RuleInvalidError(f"rule {doc['_id']}: its target password does not open: {exc}") from None
    target = Target(url=str(t.get("url", "")), username=str(t.get("username") or ""), password=password,
                    insecure=bool(t.get("insecure")), ca_file=t.get("ca_file") or None)
    return Rule(name=str(doc["_id"]), target=target, repositories=str(doc.get("repositories") or "**"),
                tags=str(doc.get("tags") or "*"), destination_prefix=str(doc.get("destination_prefix") or ""),
                mode=str(doc.get("mode") or "event"), schedule=doc.get("schedule") or None,
                delete=bool(doc.get("delete")), enabled=bool(doc.get("enabled", True)),
                include_referrers=bool(doc.get("include_referrers", True)), origin="api")
