"""What a webhook is and what it matches (pure): event types, repository globs, tag patterns, requirements."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from services.core.policy.document import SEVERITY_ORDER

EVENT_TYPES: tuple[str, ...] = (
    "manifest.pushed",
    "manifest.deleted",
    "tag.updated",
    "tag.deleted",
    "scan.completed",
    "signature.verified",
    "replication.completed",
    "gc.completed",
    "image.deployable",
)
"""Every event a webhook may subscribe to. All but image.deployable map one envelope payload each
(services/webhooks/events.py); image.deployable is derived by the webhooks service."""

DEPLOYABLE = "image.deployable"
REGISTRY_WIDE = ""
"""The `namespace` of a registry-wide webhook."""


@dataclass(frozen=True, slots=True)
class Requirements:
    """What `image.deployable` waits for. `scan_gate` None: no scan needed; `none`: a complete scan, any
    findings; else a complete scan with no unignored finding at or above that severity."""

    scan_gate: str | None = None
    verify_signature: bool = False

    def __post_init__(self) -> None:
        if self.scan_gate is not None and self.scan_gate not in SEVERITY_ORDER:
            raise ValueError(f"scan_gate must be one of {', '.join(SEVERITY_ORDER)}")


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    name: str
    url: str
    events: tuple[str, ...]
    repositories: str
    """Repository glob: `*` matches within one path component, `**` across them (`my-org/**`)."""
    tag_pattern: str | None
    """Tag glob (fnmatch, case-sensitive); set: only events about a matching tag are delivered."""
    require: Requirements = field(default_factory=Requirements)
    namespace: str = REGISTRY_WIDE
    active: bool = True
    created: float = 0.0
    created_by: str = ""
    updated: float = 0.0

    @property
    def registry_wide(self) -> bool:
        return self.namespace == REGISTRY_WIDE

    def wants(self, event_type: str) -> bool:
        return self.active and event_type in self.events

    def matches_repository(self, repository: str) -> bool:
        if not repository:  # registry-wide facts (a GC run) go to registry-wide webhooks only
            return self.registry_wide
        return repository_glob(self.repositories).fullmatch(repository) is not None

    def matches_tag(self, tag: str) -> bool:
        return self.tag_pattern is None or fnmatch.fnmatchcase(tag, self.tag_pattern)

    def matching_tags(self, tags: list[str] | tuple[str, ...]) -> list[str]:
        return [t for t in tags if self.matches_tag(t)]


@lru_cache(maxsize=1024)
def repository_glob(pattern: str) -> re.Pattern[str]:
    """`**` any characters (slashes too), `*` any but `/`, `?` one character but `/`; the rest literal."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            # `a/**` also matches `a` itself's children only; `**/x` matches `x` at any depth.
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            else:
                out.append(".*")
                i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


REPOSITORY_PATTERN = re.compile(r"^[a-z0-9*?]+(?:[._-][a-z0-9*?]+)*(?:/[a-z0-9*?]+(?:[._-][a-z0-9*?]+)*)*$")


def pattern_namespace(pattern: str) -> str:
    """The namespace a repository glob stays inside (its first component, when it has no wildcard), else
    REGISTRY_WIDE: `my-org/**` -> `my-org`; `**`, `*/app` -> registry-wide."""
    first = pattern.split("/", 1)[0]
    if any(ch in first for ch in "*?"):
        return REGISTRY_WIDE
    return first


def check_repository_pattern(pattern: str) -> str:
    """`pattern` if it is a repository glob (lower-case name components with `*`, `**`, `?`); ValueError."""
    if len(pattern) > 255 or not REPOSITORY_PATTERN.fullmatch(pattern.replace("**", "*")):
        raise ValueError("must be a repository name glob, e.g. my-org/** or my-org/app or **")
    return pattern


def to_doc(hook: Webhook) -> dict[str, Any]:
    return {
        "_id": hook.id, "name": hook.name, "url": hook.url, "events": list(hook.events),
        "repositories": hook.repositories, "tag_pattern": hook.tag_pattern,
        "require": {"scan_gate": hook.require.scan_gate, "verify_signature": hook.require.verify_signature},
        "namespace": hook.namespace, "active": hook.active, "created": hook.created,
        "created_by": hook.created_by, "updated": hook.updated,
    }


def from_doc(doc: dict[str, Any]) -> Webhook:
    require = doc.get("require") or {}
    return Webhook(
        id=str(doc["_id"]), name=doc.get("name", ""), url=doc["url"], events=tuple(doc.get("events") or ()),
        repositories=doc.get("repositories") or "**", tag_pattern=doc.get("tag_pattern"),
        require=Requirements(require.get("scan_gate"), bool(require.get("verify_signature"))),
        namespace=doc.get("namespace", REGISTRY_WIDE), active=bool(doc.get("active", True)),
        created=float(doc.get("created") or 0), created_by=doc.get("created_by", ""),
        updated=float(doc.get("updated") or 0),
    )
