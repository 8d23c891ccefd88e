"""Repository names, tags and references: the distribution-spec grammars as validated value types."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, TypeAlias

from services.core.errors import NameInvalidError, TagInvalidError
from services.core.oci.digest import Digest

MAX_NAME_LENGTH: Final = 255
MAX_TAG_LENGTH: Final = 128

_COMPONENT: Final = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_NAME: Final = re.compile(rf"{_COMPONENT.pattern}(?:/{_COMPONENT.pattern})*")
_TAG: Final = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_SEPARATORS: Final = frozenset("._-")


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _explain_component(full: str) -> str:
    """Why one `/`-separated component fails the grammar (called only when it does)."""
    component = _shorten(full, 60)
    if not full:
        return "has an empty path component (leading, trailing or doubled '/')"
    if any("A" <= c <= "Z" for c in full):
        return f"component {component!r} contains uppercase letters; repository names must be lowercase"
    bad = sorted({c for c in full if not (c.isascii() and (c.isalnum() or c in _SEPARATORS))})
    if bad:
        return f"component {component!r} contains invalid characters {''.join(bad[:20])!r}"
    if full[0] in _SEPARATORS or full[-1] in _SEPARATORS:
        return f"component {component!r} must start and end with a lowercase letter or digit"
    return (
        f"component {component!r} has an invalid separator sequence "
        f"(allowed between letters/digits: '.', '_', '__' or dashes; e.g. '..' or '._' are not)"
    )


@dataclass(frozen=True, slots=True, order=True)
class RepositoryName:
    """A repository name such as `team/app`, validated against the distribution-spec grammar."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise NameInvalidError(f"repository name must be a string, not {type(self.value).__name__}")
        if _NAME.fullmatch(self.value) and len(self.value) <= MAX_NAME_LENGTH:
            return
        shown = _shorten(self.value, 100)
        if not self.value:
            raise NameInvalidError("repository name must not be empty")
        if len(self.value) > MAX_NAME_LENGTH:
            raise NameInvalidError(
                f"repository name is {len(self.value)} characters; at most {MAX_NAME_LENGTH} are allowed",
                detail={"name": shown},
            )
        reason = next(
            (_explain_component(c) for c in self.value.split("/") if not _COMPONENT.fullmatch(c)),
            "does not match the repository name grammar",
        )
        raise NameInvalidError(f"invalid repository name {shown!r}: {reason}", detail={"name": shown})

    @classmethod
    def parse(cls, text: str) -> RepositoryName:
        return cls(text)

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(self.value.split("/"))

    @property
    def namespace(self) -> str:
        """The first path component; policies and quotas attach to it."""
        return self.value.partition("/")[0]

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True, order=True)
class Tag:
    """A tag such as `v1.2.3`: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise TagInvalidError(f"tag must be a string, not {type(self.value).__name__}")
        if _TAG.fullmatch(self.value):
            return
        shown = _shorten(self.value, 140)
        if not self.value:
            raise TagInvalidError("tag must not be empty")
        if len(self.value) > MAX_TAG_LENGTH:
            raise TagInvalidError(
                f"tag is {len(self.value)} characters; at most {MAX_TAG_LENGTH} are allowed",
                detail={"tag": shown},
            )
        if self.value[0] in ".-":
            raise TagInvalidError(
                f"invalid tag {shown!r}: must not start with '.' or '-'", detail={"tag": shown}
            )
        bad = sorted({c for c in self.value if not (c.isascii() and (c.isalnum() or c in "._-"))})
        raise TagInvalidError(
            f"invalid tag {shown!r}: contains invalid characters {''.join(bad[:20])!r}", detail={"tag": shown}
        )

    @classmethod
    def parse(cls, text: str) -> Tag:
        return cls(text)

    def __str__(self) -> str:
        return self.value


Reference: TypeAlias = Tag | Digest
"""What follows `/manifests/` in a URL: a tag or a digest."""


def is_valid_tag(text: str) -> bool:
    return _TAG.fullmatch(text) is not None


def parse_reference(text: str) -> Reference:
    """A digest if the text contains ':' (tags cannot), else a tag.

    Raises DigestInvalidError or TagInvalidError accordingly, so the caller can answer 400 for a
    malformed digest and 404 for tag text that can never exist.
    """
    if ":" in text:
        return Digest.parse(text)
    return Tag(text)
