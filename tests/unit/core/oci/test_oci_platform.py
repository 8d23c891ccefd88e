"""Platform parsing and selection from an index."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.errors import ManifestInvalidError
from services.core.oci.digest import Digest
from services.core.oci.manifest import Descriptor
from services.core.oci.platform import Platform, is_attestation, select_platform


def entry(
    platform: str | None, *, annotations: Mapping[str, str] | None = None, name: str | None = None
) -> Descriptor:
    parsed = None
    if platform is not None:
        os_, arch, *rest = platform.split("/")
        parsed = Platform(os_, arch, variant=rest[0] if rest else None)
    return Descriptor(
        "application/vnd.oci.image.manifest.v1+json",
        Digest.of((name or platform or "none").encode()),
        10,
        platform=parsed,
        annotations=annotations or {},
    )


def test_from_json_full() -> None:
    p = Platform.from_json(
        {
            "os": "windows",
            "architecture": "amd64",
            "os.version": "10.0.17763.1879",
            "os.features": ["win32k"],
            "variant": "v3",
            "features": ["ignored"],
        }
    )
    assert p == Platform(
        "windows", "amd64", variant="v3", os_version="10.0.17763.1879", os_features=("win32k",)
    )
    assert Platform.from_json(p.to_json()) == p
    assert str(p) == "windows/amd64/v3"


def test_from_json_minimal_and_empty_variant() -> None:
    p = Platform.from_json({"os": "linux", "architecture": "arm64", "variant": ""})
    assert p == Platform("linux", "arm64")
    assert p.to_json() == {"architecture": "arm64", "os": "linux"}
    assert str(p) == "linux/arm64"


@pytest.mark.parametrize(
    ("obj", "field_name"),
    [
        ([], "platform"),
        ({"architecture": "amd64"}, "platform.os"),
        ({"os": "linux"}, "platform.architecture"),
        ({"os": "", "architecture": "amd64"}, "platform.os"),
        ({"os": "linux", "architecture": 1}, "platform.architecture"),
        ({"os": "linux", "architecture": "amd64", "variant": 8}, "platform.variant"),
        ({"os": "linux", "architecture": "amd64", "os.version": 1}, "platform.os.version"),
        ({"os": "linux", "architecture": "amd64", "os.features": "x"}, "platform.os.features"),
        ({"os": "linux", "architecture": "amd64", "os.features": [1]}, "platform.os.features"),
    ],
)
def test_from_json_errors_name_the_field(obj: object, field_name: str) -> None:
    with pytest.raises(ManifestInvalidError) as exc:
        Platform.from_json(obj)
    assert exc.value.code == "MANIFEST_INVALID"
    assert exc.value.detail == {"field": field_name}
    assert exc.value.message.startswith(field_name)


def test_empty_os_or_architecture_is_invalid() -> None:
    with pytest.raises(ManifestInvalidError):
        Platform("", "amd64")
    with pytest.raises(ManifestInvalidError):
        Platform("linux", "")


@pytest.mark.parametrize(
    ("given_platform", "expected"),
    [
        (Platform("linux", "arm64"), Platform("linux", "arm64", variant="v8")),
        (Platform("Linux", "AArch64"), Platform("linux", "arm64", variant="v8")),
        (Platform("linux", "arm"), Platform("linux", "arm", variant="v7")),
        (Platform("linux", "arm", variant="6"), Platform("linux", "arm", variant="v6")),
        (Platform("linux", "armhf"), Platform("linux", "arm", variant="v7")),
        (Platform("linux", "armel"), Platform("linux", "arm", variant="v6")),
        (Platform("linux", "x86_64"), Platform("linux", "amd64", variant="v1")),
        (Platform("linux", "i386"), Platform("linux", "386")),
        (Platform("macos", "arm64"), Platform("darwin", "arm64", variant="v8")),
        (Platform("linux", "s390x"), Platform("linux", "s390x")),
    ],
)
def test_normalized(given_platform: Platform, expected: Platform) -> None:
    assert given_platform.normalized() == expected


INDEX = [
    entry("linux/amd64"),
    entry("linux/arm/v6"),
    entry("linux/arm/v7"),
    entry("linux/arm64/v8"),
    entry("linux/ppc64le"),
    entry("windows/amd64"),
    entry("unknown/unknown", name="attestation-1"),
]


@pytest.mark.parametrize(
    ("os_", "arch", "variant", "expected"),
    [
        ("linux", "amd64", None, 0),
        ("linux", "x86_64", None, 0),
        ("linux", "amd64", "v3", 0),
        ("linux", "arm", None, 2),
        ("linux", "arm", "v7", 2),
        ("linux", "arm", "7", 2),
        ("linux", "arm", "v6", 1),
        ("linux", "arm", "v8", 2),
        ("linux", "arm64", None, 3),
        ("linux", "arm64", "v8", 3),
        ("linux", "aarch64", None, 3),
        ("linux", "arm64", "v9", 3),
        ("linux", "ppc64le", None, 4),
        ("windows", "amd64", None, 5),
        ("linux", "s390x", None, None),
        ("linux", "arm", "v5", None),
        ("linux", "ppc64le", "v2", None),
        ("unknown", "unknown", None, None),
        ("", "amd64", None, None),
        ("linux", "", None, None),
    ],
)
def test_select_platform(os_: str, arch: str, variant: str | None, expected: int | None) -> None:
    chosen = select_platform(INDEX, os_, arch, variant)
    assert chosen is (None if expected is None else INDEX[expected])


def test_arm64_entry_without_variant_matches_v8_request() -> None:
    index = [entry("linux/amd64"), entry("linux/arm64")]
    assert select_platform(index, "linux", "arm64", "v8") is index[1]
    assert select_platform(index, "linux", "arm64") is index[1]


def test_exact_variant_beats_compatible_one_regardless_of_order() -> None:
    index = [entry("linux/arm/v6"), entry("linux/arm/v7")]
    assert select_platform(index, "linux", "arm", "v7") is index[1]
    index = [entry("linux/amd64"), entry("linux/amd64/v3")]
    assert select_platform(index, "linux", "amd64", "v3") is index[1]
    assert select_platform(index, "linux", "amd64") is index[0]


def test_attestations_and_platformless_entries_never_match() -> None:
    attestation = entry(
        "linux/amd64", annotations={"vnd.docker.reference.type": "attestation-manifest"}, name="att"
    )
    index = [entry(None), attestation]
    assert select_platform(index, "linux", "amd64") is None
    assert is_attestation(attestation)
    assert is_attestation(entry("unknown/unknown"))
    assert not is_attestation(entry("linux/amd64"))
    assert not is_attestation(entry(None))


@dataclass(frozen=True)
class _Entry:
    """Any record with a platform and annotations works, not only manifest descriptors."""

    platform: Platform | None
    annotations: Mapping[str, str] = field(default_factory=dict)


def test_select_platform_is_structural() -> None:
    entries = [_Entry(Platform("linux", "riscv64"))]
    assert select_platform(entries, "linux", "riscv64") is entries[0]


_arches = st.sampled_from(["amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"])
_variants = st.sampled_from([None, "v5", "v6", "v7", "v8", "v2", "v3"])


@given(
    st.lists(st.tuples(st.sampled_from(["linux", "windows"]), _arches, _variants), max_size=8),
    st.sampled_from(["linux", "windows"]),
    _arches,
    _variants,
)
def test_selection_only_returns_entries_of_the_requested_os_and_arch(
    platforms: list[tuple[str, str, str | None]], os_: str, arch: str, variant: str | None
) -> None:
    index = [
        Descriptor("x/y", Digest.of(str(i).encode()), 1, platform=Platform(o, a, variant=v))
        for i, (o, a, v) in enumerate(platforms)
    ]
    chosen = select_platform(index, os_, arch, variant)
    if chosen is not None:
        assert chosen.platform is not None
        assert (chosen.platform.os, chosen.platform.architecture) == (os_, arch)
        wanted = Platform(os_, arch, variant=variant).normalized()
        if any(d.platform is not None and d.platform.normalized() == wanted for d in index):
            assert chosen.platform.normalized() == wanted
