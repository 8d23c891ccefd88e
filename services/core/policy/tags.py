"""Tag immutability rules: which tags may be moved to another digest (pure)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from services.core.policy.document import TagPolicy
from services.core.settings import TagRule


@dataclass(frozen=True, slots=True)
class TagDecision:
    immutable: bool
    rule: str = ""


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def tag_immutability(rules: Sequence[TagRule], *, namespace: str, tag: str) -> TagDecision:
    """The first rule whose namespace glob and tag pattern match decides; no match means mutable."""
    for rule in rules:
        if fnmatch.fnmatchcase(namespace, rule.namespace) and _compiled(rule.pattern).search(tag):
            return TagDecision(immutable=rule.immutable, rule=rule.name or rule.pattern)
    return TagDecision(immutable=False)


def policy_tag_immutability(
    tags: TagPolicy, rules: Sequence[TagRule], *, namespace: str, tag: str
) -> TagDecision:
    """Whether `tag` may move in a repository whose effective policy has these `tags` rules (pass
    `effective(...).tags`, see services/core/policy/merge.py); `rules` are `registry.tag_rules`, the
    registry-wide default. In order: a policy `mutable` glob that matches makes the tag mutable (the way
    to exempt tags from a broader rule); else a policy `immutable` glob that matches makes it immutable;
    else the registry's rules decide (tag_immutability). The decision's `rule` names what decided it."""
    for pattern in tags.mutable:
        if fnmatch.fnmatchcase(tag, pattern):
            return TagDecision(immutable=False, rule=f"policy mutable {pattern}")
    for pattern in tags.immutable:
        if fnmatch.fnmatchcase(tag, pattern):
            return TagDecision(immutable=True, rule=f"policy immutable {pattern}")
    return tag_immutability(rules, namespace=namespace, tag=tag)
