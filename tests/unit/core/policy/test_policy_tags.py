"""policy_tag_immutability: policy globs per namespace/repository over the registry's tag rules."""

from __future__ import annotations

from services.core.policy.document import TagPolicy
from services.core.policy.tags import policy_tag_immutability
from services.core.settings import RegistrySettings, TagRule

RULES = RegistrySettings().tag_rules  # semver and sha-<hex> immutable


def _decide(tags: TagPolicy, tag: str, rules: list[TagRule] = RULES) -> tuple[bool, str]:
    decision = policy_tag_immutability(tags, rules, namespace="ml", tag=tag)
    return decision.immutable, decision.rule


def test_without_policy_rules_the_registry_rules_decide() -> None:
    assert _decide(TagPolicy(), "v1.2.3") == (True, "semver")
    assert _decide(TagPolicy(), "latest") == (False, "")


def test_policy_immutable_globs_add_to_the_registry_rules() -> None:
    tags = TagPolicy(immutable=["release-*", "prod"])
    assert _decide(tags, "release-2024") == (True, "policy immutable release-*")
    assert _decide(tags, "prod")[0] and not _decide(tags, "production")[0]  # globs match whole tags
    assert _decide(tags, "v1.2.3") == (True, "semver")


def test_mutable_globs_win_over_immutable_ones_and_the_registry_rules() -> None:
    tags = TagPolicy(immutable=["*"], mutable=["latest", "v*-dev"])
    assert _decide(tags, "latest") == (False, "policy mutable latest")
    assert _decide(tags, "v1.0.0-dev") == (False, "policy mutable v*-dev")  # semver, yet mutable here
    assert _decide(tags, "anything") == (True, "policy immutable *")


def test_globs_are_case_sensitive_and_character_classes_work() -> None:
    tags = TagPolicy(immutable=["rc[0-9]"])
    assert _decide(tags, "rc1")[0] and not _decide(tags, "RC1")[0] and not _decide(tags, "rc10")[0]


def test_a_glob_cannot_backtrack_catastrophically() -> None:
    tags = TagPolicy(immutable=["*a*a*a*a*a*a*a*a*a*a*a*b"])
    assert not _decide(tags, "a" * 128)[0]
