"""Version ordering per OSV ecosystem, with well-kept libraries: python-debian (dpkg), packaging (PEP 440),
univers (apk, rpm, Maven, SemVer for npm and Go). A version a scheme cannot parse has no key: it matches
only a record's explicit `versions` list."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from debian.debian_support import Version as DebianVersion
from packaging.version import InvalidVersion
from packaging.version import Version as Pep440Version
from univers.versions import AlpineLinuxVersion, MavenVersion, RpmVersion, SemverVersion
from univers.versions import InvalidVersion as UniversInvalid

_PEP503 = re.compile(r"[-_.]+")


def scheme_of(ecosystem: str) -> str:
    """The version scheme of an OSV ecosystem ("Debian:12" -> "dpkg")."""
    base = ecosystem.split(":", 1)[0]
    return {
        "Debian": "dpkg", "Ubuntu": "dpkg", "Alpine": "apk", "Wolfi": "apk", "Chainguard": "apk",
        "AlmaLinux": "rpm", "Rocky Linux": "rpm", "Red Hat": "rpm", "openSUSE": "rpm", "SUSE": "rpm",
        "Mageia": "rpm", "PyPI": "pep440", "npm": "semver", "Go": "go", "Maven": "maven",
        "crates.io": "semver", "Packagist": "semver", "NuGet": "semver",
    }.get(base, "")


def normalise_name(ecosystem: str, name: str) -> str:
    if ecosystem == "PyPI":
        return _PEP503.sub("-", name).lower()
    return name


def _semver(v: str) -> Any:
    v = v.strip().lstrip("v=").split("+", 1)[0]
    return SemverVersion(v)


def _go(v: str) -> Any:
    v = v.strip()
    if v.startswith("go"):
        v = v[2:]
        parts = re.match(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?(.*)$", v)
        if parts:
            major, minor, patch, rest = parts.groups()
            rest = rest or ""
            if rest and not rest.startswith("-"):
                rest = "-" + rest  # go1.21rc2 -> 1.21.0-rc2
            v = f"{major}.{minor or 0}.{patch or 0}{rest}"
    return _semver(v.replace("+incompatible", ""))


_PARSERS: dict[str, Callable[[str], Any]] = {
    "dpkg": DebianVersion,
    "apk": AlpineLinuxVersion,
    "rpm": RpmVersion,
    "pep440": Pep440Version,
    "semver": _semver,
    "go": _go,
    "maven": MavenVersion,
}


@functools.lru_cache(maxsize=200_000)
def key(scheme: str, version: str) -> Any | None:
    """A comparable key of `version` in `scheme`, or None when it does not parse (or the scheme is unknown)."""
    parse = _PARSERS.get(scheme)
    if parse is None or not version:
        return None
    try:
        k = parse(version)
    except (InvalidVersion, UniversInvalid, ValueError, TypeError, AttributeError):
        return None
    if scheme == "dpkg":
        # validate once: python-debian accepts anything and fails at compare time
        try:
            _ = k < DebianVersion("0")
        except (ValueError, TypeError):
            return None
    return k


def same(scheme: str, a: str, b: str) -> bool:
    """Whether two spellings name the same version (explicit `versions` entries)."""
    if a == b:
        return True
    ka, kb = key(scheme, a), key(scheme, b)
    return ka is not None and kb is not None and ka == kb
