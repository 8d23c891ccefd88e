"""The Docker token scope grammar (`repository:team/app:pull,push`) and the access entries of a token."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PULL, PUSH, DELETE = "pull", "push", "delete"
WILDCARD = "*"
REPOSITORY_ACTIONS: tuple[str, ...] = (PULL, PUSH, DELETE)
"""Every action on a repository, in the canonical order used in challenges and tokens."""
REPOSITORY, REGISTRY, CATALOG = "repository", "registry", "catalog"

_TYPE = re.compile(r"([a-z0-9]+)(?:\([a-z0-9]+\))?")
_ACTION = re.compile(r"[a-z]*|\*")
_NAME = re.compile(r"[A-Za-z0-9._\-/:]{1,255}")
MAX_SCOPES = 64


class ScopeInvalidError(ValueError):
    """Text that does not follow the scope grammar."""


def ordered(actions: Iterable[str]) -> tuple[str, ...]:
    """Actions without duplicates: repository actions first in canonical order, then the rest sorted."""
    unique = set(actions)
    known = [a for a in REPOSITORY_ACTIONS if a in unique]
    return (*known, *sorted(unique - set(REPOSITORY_ACTIONS)))


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One `type:name:actions` entry; also the shape of one element of a token's `access` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    def to_claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def parse_resource_scope(text: str) -> ResourceScope:
    """Parse one resource scope. The name may contain `:` (a registry port), so the type is what comes
    before the first `:` and the actions what comes after the last one. A class suffix on the type
    (`repository(plugin)`) is dropped, as Distribution does."""
    kind, sep1, rest = text.partition(":")
    name, sep2, actions_text = rest.rpartition(":")
    if not sep1 or not sep2:
        raise ScopeInvalidError(f"scope {text[:100]!r} is not type:name:actions")
    type_match = _TYPE.fullmatch(kind)
    if type_match is None:
        raise ScopeInvalidError(f"scope type {kind[:40]!r} is invalid")
    if not _NAME.fullmatch(name):
        raise ScopeInvalidError(f"scope name {name[:100]!r} is invalid")
    actions = actions_text.split(",") if actions_text else []
    for action in actions:
        if not _ACTION.fullmatch(action):
            raise ScopeInvalidError(f"scope action {action[:40]!r} is invalid")
    return ResourceScope(type_match.group(1), name, ordered(a for a in actions if a))


def parse_scopes(values: Iterable[str]) -> list[ResourceScope]:
    """Parse scope parameters, each a space-separated list, and merge entries naming the same resource."""
    merged: dict[tuple[str, str], set[str]] = {}
    count = 0
    for value in values:
        for part in value.split():
            count += 1
            if count > MAX_SCOPES:
                raise ScopeInvalidError(f"at most {MAX_SCOPES} scopes per request")
            scope = parse_resource_scope(part)
            merged.setdefault((scope.type, scope.name), set()).update(scope.actions)
    return [ResourceScope(t, n, ordered(a)) for (t, n), a in merged.items()]


def expand(actions: Iterable[str], universe: Sequence[str]) -> frozenset[str]:
    """`*` stands for every action of `universe`."""
    result = set(actions)
    if WILDCARD in result:
        result.discard(WILDCARD)
        result.update(universe)
    return frozenset(result)


AccessKey = tuple[str, str]


def access_from_claim(claim: Any) -> dict[AccessKey, frozenset[str]]:
    """A token's `access` claim as {(type, name): actions}. Raises ScopeInvalidError when malformed."""
    if claim is None:
        return {}
    if not isinstance(claim, list):
        raise ScopeInvalidError("access claim is not a list")
    result: dict[AccessKey, set[str]] = {}
    for entry in claim:
        if not isinstance(entry, Mapping):
            raise ScopeInvalidError("access entry is not an object")
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise ScopeInvalidError("access entry needs type, name and actions")
        if not all(isinstance(a, str) for a in actions):
            raise ScopeInvalidError("access actions must be strings")
        universe = REPOSITORY_ACTIONS if kind == REPOSITORY else (WILDCARD,)
        held = expand(actions, universe) if kind == REPOSITORY else frozenset(actions)
        result.setdefault((kind, name), set()).update(held)
    return {k: frozenset(v) for k, v in result.items()}


def challenge_scope(repository: str, actions: Iterable[str]) -> str:
    """The `scope` of a WWW-Authenticate challenge for these repository actions."""
    return str(ResourceScope(REPOSITORY, repository, ordered(actions)))


CATALOG_SCOPE = ResourceScope(REGISTRY, CATALOG, (WILDCARD,))
