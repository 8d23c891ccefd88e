"""Platforms of index entries and choosing the entry that runs on a given os/architecture/variant."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final, Protocol, TypeVar

from services.core.errors import ManifestInvalidError

ATTESTATION_REFERENCE_TYPE_KEY: Final = "vnd.docker.reference.type"
ATTESTATION_REFERENCE_TYPE: Final = "attestation-manifest"

# Aliases that container runtimes accept (containerd's platforms.Normalize), so `aarch64` finds `arm64`.
_OS_ALIASES: Final = {"macos": "darwin"}
_ARCH_ALIASES: Final[Mapping[str, tuple[str, str | None]]] = {
    "i386": ("386", None),
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
}
# The variant an entry without one implies: arm64 images are v8, arm images v7 and amd64 images v1.
_DEFAULT_VARIANT: Final = {"arm64": "v8", "arm": "v7", "amd64": "v1"}
# Variants whose binaries also run on a newer variant, newest (preferred) first.
_COMPATIBLE: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = {
    "arm": {"v8": ("v8", "v7", "v6", "v5"), "v7": ("v7", "v6", "v5"), "v6": ("v6", "v5"), "v5": ("v5",)},
    "amd64": {"v4": ("v4", "v3", "v2", "v1"), "v3": ("v3", "v2", "v1"), "v2": ("v2", "v1"), "v1": ("v1",)},
    "arm64": {"v9": ("v9", "v8"), "v8": ("v8",)},
}


@dataclass(frozen=True, slots=True)
class Platform:
    """The `platform` object of an index entry."""

    os: str
    architecture: str
    _: KW_ONLY
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.os or not self.architecture:
            raise ManifestInvalidError("platform os and architecture must not be empty")

    @classmethod
    def from_json(cls, obj: object, *, where: str = "platform") -> Platform:
        """Parse a JSON `platform` object; ManifestInvalidError names the offending field."""
        if not isinstance(obj, dict):
            raise _invalid(where, "must be an object")
        os_ = _required_str(obj, "os", where)
        architecture = _required_str(obj, "architecture", where)
        features = obj.get("os.features")
        if features is not None and not (
            isinstance(features, list) and all(isinstance(f, str) for f in features)
        ):
            raise _invalid(f"{where}.os.features", "must be a list of strings")
        return cls(
            os_,
            architecture,
            variant=_optional_str(obj, "variant", where) or None,
            os_version=_optional_str(obj, "os.version", where) or None,
            os_features=tuple(features or ()),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version is not None:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant is not None:
            out["variant"] = self.variant
        return out

    def normalized(self) -> Platform:
        """Lowercased, aliases resolved and the architecture's default variant filled in."""
        os_ = self.os.lower()
        os_ = _OS_ALIASES.get(os_, os_)
        architecture, variant = self.architecture.lower(), (self.variant or "").lower() or None
        if architecture in _ARCH_ALIASES:
            architecture, alias_variant = _ARCH_ALIASES[architecture]
            variant = variant or alias_variant
        if variant is not None and variant.isdigit():
            variant = f"v{variant}"
        variant = variant or _DEFAULT_VARIANT.get(architecture)
        return Platform(
            os_, architecture, variant=variant, os_version=self.os_version, os_features=self.os_features
        )

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


class PlatformEntry(Protocol):
    """What `select_platform` needs of an index entry (manifest.Descriptor satisfies it)."""

    @property
    def platform(self) -> Platform | None: ...

    @property
    def annotations(self) -> Mapping[str, str]: ...


EntryT = TypeVar("EntryT", bound=PlatformEntry)


def is_attestation(entry: PlatformEntry) -> bool:
    """BuildKit attaches provenance/SBOM manifests to indexes as `unknown/unknown` entries."""
    if entry.annotations.get(ATTESTATION_REFERENCE_TYPE_KEY) == ATTESTATION_REFERENCE_TYPE:
        return True
    return entry.platform is not None and (entry.platform.os, entry.platform.architecture) == (
        "unknown",
        "unknown",
    )


def select_platform(
    manifests: Sequence[EntryT], os: str, arch: str, variant: str | None = None
) -> EntryT | None:
    """The index entry that best runs on os/arch/variant, or None.

    An exact variant wins; otherwise the newest compatible older variant (an arm/v7 host runs
    arm/v6 images). Entries without a platform and attestation manifests never match.
    """
    if not os or not arch:
        return None
    wanted = Platform(os, arch, variant=variant).normalized()
    candidates = [
        (m, m.platform.normalized()) for m in manifests if m.platform is not None and not is_attestation(m)
    ]
    candidates = [(m, p) for m, p in candidates if (p.os, p.architecture) == (wanted.os, wanted.architecture)]
    preference = _COMPATIBLE.get(wanted.architecture, {}).get(wanted.variant or "", (wanted.variant,))
    for accepted in preference:
        for entry, platform in candidates:
            if platform.variant == accepted:
                return entry
    return None


def _invalid(where: str, problem: str) -> ManifestInvalidError:
    return ManifestInvalidError(f"{where} {problem}", detail={"field": where})


def _required_str(obj: Mapping[str, object], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _invalid(f"{where}.{key}", "is required and must be a non-empty string")
    return value


def _optional_str(obj: Mapping[str, object], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"{where}.{key}", "must be a string")
    return value
