"""Tag immutability rules: which tags may be moved to another digest (pure)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

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
