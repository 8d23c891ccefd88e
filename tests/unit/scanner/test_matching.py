"""OSV matching per ecosystem, severity from CVSS vectors and labels, alias merging."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.scanner import versions as vs
from services.scanner.inventory.scan import Inventory, OsInfo, Package
from services.scanner.matcher import VulnIndex
from services.scanner.severity import assess, band

DEBIAN = OsInfo("debian", "12", ecosystem="Debian:12")
CVSS_CRIT = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"


def rec(rid: str, eco: str, name: str, *, events: list[dict[str, str]] | None = None, versions: Sequence[str] = (),
        rtype: str = "ECOSYSTEM", **extra: Any) -> dict[str, Any]:
    affected: dict[str, Any] = {"package": {"ecosystem": eco, "name": name}}
    if events is not None:
        affected["ranges"] = [{"type": rtype, "events": events}]
    if versions:
        affected["versions"] = list(versions)
    return {"id": rid, "modified": "2024-01-01T00:00:00Z", "affected": [affected], **extra}


def pkg(type_: str, name: str, version: str, *, source: str = "", source_version: str = "") -> Package:
    return Package(type_, name, version, f"pkg:{type_}/{name}@{version}", "sha256:l", "/x", source, source_version)


def ids(index: VulnIndex, p: Package, os: OsInfo | None = DEBIAN) -> dict[str, str | None]:
    return {f.id: f.fixed_version for f in index.match(Inventory(os, [p], []))}


def test_debian_matches_the_source_package_with_dpkg_ordering() -> None:
    index = VulnIndex.build([
        rec("DSA-5532-1", "Debian:12", "openssl", events=[{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}],
            aliases=["CVE-2023-5363"]),
        rec("CVE-2023-5363", "Debian:12", "openssl", events=[{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}],
            severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}]),
        rec("DEBIAN-X", "Debian:11", "openssl", events=[{"introduced": "0"}]),
    ])
    libssl = pkg("deb", "libssl3", "3.0.11-1~deb12u1", source="openssl", source_version="3.0.11-1~deb12u1")
    found = index.match(Inventory(DEBIAN, [libssl], []))
    assert len(found) == 1 and found[0].id == "CVE-2023-5363" and found[0].aliases == ("DSA-5532-1",)
    assert found[0].fixed_version == "3.0.11-1~deb12u2" and found[0].severity == "high"
    fixed = pkg("deb", "libssl3", "3.0.11-1~deb12u2", source="openssl", source_version="3.0.11-1~deb12u2")
    assert ids(index, fixed) == {}
    assert ids(index, libssl, OsInfo("debian", "11", ecosystem="Debian:11")) == {"DEBIAN-X": None}


def test_tilde_and_epochs() -> None:
    index = VulnIndex.build([rec("D", "Debian:12", "x", events=[{"introduced": "0"}, {"fixed": "1:1.0"}])])
    assert ids(index, pkg("deb", "x", "9.9", source="x", source_version="9.9")) == {"D": "1:1.0"}
    assert ids(index, pkg("deb", "x", "1:1.0", source="x", source_version="1:1.0")) == {}


def test_pypi_pep440_and_explicit_versions() -> None:
    index = VulnIndex.build([
        rec("GHSA-j8r2-6x86-q33q", "PyPI", "Requests", events=[{"introduced": "2.3.0"}, {"fixed": "2.31.0"}],
            database_specific={"severity": "MODERATE"}),
        rec("PYSEC-1", "PyPI", "urllib3", versions=["1.26.4", "1.26.5"]),
    ])
    assert ids(index, pkg("pypi", "requests", "2.25.1")) == {"GHSA-j8r2-6x86-q33q": "2.31.0"}
    assert ids(index, pkg("pypi", "requests", "2.31.0")) == {}
    assert ids(index, pkg("pypi", "requests", "2.31.0rc1")) == {"GHSA-j8r2-6x86-q33q": "2.31.0"}
    assert ids(index, pkg("pypi", "urllib3", "1.26.4")) == {"PYSEC-1": None}
    assert ids(index, pkg("pypi", "urllib3", "1.26.6")) == {}


def test_last_affected_limit_and_disjoint_windows() -> None:
    index = VulnIndex.build([
        rec("A", "npm", "lodash", events=[{"introduced": "0"}, {"last_affected": "4.17.20"}], rtype="SEMVER"),
        rec("B", "npm", "minimist", events=[{"introduced": "1.0.0"}, {"fixed": "1.2.3"}, {"introduced": "1.2.4"},
                                             {"fixed": "1.2.6"}], rtype="SEMVER"),
        rec("C", "npm", "limited", events=[{"introduced": "0"}, {"limit": "2.0.0"}], rtype="SEMVER"),
    ])
    assert ids(index, pkg("npm", "lodash", "4.17.20")) == {"A": None}
    assert ids(index, pkg("npm", "lodash", "4.17.21")) == {}
    assert ids(index, pkg("npm", "minimist", "1.2.3")) == {}
    assert ids(index, pkg("npm", "minimist", "1.2.5")) == {"B": "1.2.6"}
    assert ids(index, pkg("npm", "minimist", "1.1.0")) == {"B": "1.2.3"}
    assert ids(index, pkg("npm", "limited", "1.9.0")) == {"C": None}
    assert ids(index, pkg("npm", "limited", "2.0.0")) == {}


def test_go_modules_and_stdlib() -> None:
    index = VulnIndex.build([
        rec("GO-2023-1571", "Go", "golang.org/x/net", events=[{"introduced": "0"}, {"fixed": "0.7.0"}],
            rtype="SEMVER"),
        rec("GO-2024-2600", "Go", "stdlib", events=[{"introduced": "1.21.0"}, {"fixed": "1.21.8"}], rtype="SEMVER"),
    ])
    assert ids(index, pkg("golang", "golang.org/x/net", "v0.6.0")) == {"GO-2023-1571": "0.7.0"}
    assert ids(index, pkg("golang", "golang.org/x/net", "v0.7.0")) == {}
    assert ids(index, pkg("golang", "golang.org/x/net", "v0.0.0-20220722155237-a158d28d115b")) == \
        {"GO-2023-1571": "0.7.0"}
    assert ids(index, pkg("golang", "stdlib", "go1.21.5")) == {"GO-2024-2600": "1.21.8"}


def test_alpine_and_maven() -> None:
    alpine = OsInfo("alpine", "3.19.1", ecosystem="Alpine:v3.19")
    index = VulnIndex.build([
        rec("CVE-2024-0727", "Alpine:v3.19", "openssl", events=[{"introduced": "0"}, {"fixed": "3.1.4-r5"}]),
        rec("GHSA-jfh8-c2jp-5v3q", "Maven", "org.apache.logging.log4j:log4j-core",
            events=[{"introduced": "2.0-beta9"}, {"fixed": "2.15.0"}],
            severity=[{"type": "CVSS_V3", "score": CVSS_CRIT}]),
    ])
    crypto = Package("apk", "libcrypto3", "3.1.4-r4", "p", "l", "/x", "openssl", "3.1.4-r4")
    assert ids(index, crypto, alpine) == {"CVE-2024-0727": "3.1.4-r5"}
    log4j = pkg("maven", "org.apache.logging.log4j:log4j-core", "2.14.1")
    found = index.match(Inventory(None, [log4j], []))
    assert found[0].severity == "critical" and found[0].cvss_score == 9.8


def test_git_ranges_ignored_and_withdrawn_records_skipped() -> None:
    index = VulnIndex.build([
        rec("G", "PyPI", "x", events=[{"introduced": "0"}], rtype="GIT"),
        rec("W", "PyPI", "x", events=[{"introduced": "0"}], withdrawn="2024-01-01T00:00:00Z"),
    ])
    assert ids(index, pkg("pypi", "x", "1.0")) == {}


def test_severity_sources() -> None:
    assert assess({"severity": [{"type": "CVSS_V4", "score":
                                 "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"}]}, {}) == \
        ("critical", 9.3)
    assert assess({"database_specific": {"severity": "HIGH"}}, {}) == ("high", None)
    assert assess({}, {"ecosystem_specific": {"severity": "low"}}) == ("low", None)
    assert assess({"severity": [{"type": "Ubuntu", "score": "medium"}]}, {}) == ("medium", None)
    assert assess({"severity": [{"type": "CVSS_V3", "score": "garbage"}]}, {}) == ("unknown", None)
    # the worse of the computed band and the label
    assert assess({"severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"}],
                   "database_specific": {"severity": "HIGH"}}, {})[0] == "high"
    assert [band(x) for x in (0, 0.1, 4.0, 7.0, 9.0)] == ["unknown", "low", "medium", "high", "critical"]


@pytest.mark.parametrize(("scheme", "lo", "hi"), [
    ("dpkg", "1.0~rc1", "1.0"), ("dpkg", "1.0", "1.0+b1"), ("dpkg", "9.9", "1:0.1"),
    ("apk", "1.2.3_rc1", "1.2.3"), ("apk", "1.2.3-r1", "1.2.3-r10"), ("pep440", "1.0.dev1", "1.0a1"),
    ("pep440", "1.0", "1.0.post1"), ("semver", "1.0.0-alpha", "1.0.0"), ("maven", "1.0-alpha", "1.0"),
    ("rpm", "1.0-1.el9", "1.0-2.el9"), ("go", "go1.21.5", "1.21.8"),
])
def test_version_orderings(scheme: str, lo: str, hi: str) -> None:
    assert vs.key(scheme, lo) < vs.key(scheme, hi)  # type: ignore[operator]


@given(st.lists(st.integers(0, 50), min_size=3, max_size=3), st.lists(st.integers(0, 50), min_size=3, max_size=3))
def test_dpkg_and_semver_agree_on_plain_numbers(a: list[int], b: list[int]) -> None:
    va, vb = ".".join(map(str, a)), ".".join(map(str, b))
    assert (
        (vs.key("dpkg", va) < vs.key("dpkg", vb)) == (tuple(a) < tuple(b)) ==  # type: ignore[operator]
        (vs.key("semver", va) < vs.key("semver", vb))  # type: ignore[operator]
    )


def test_upstream_ids_count_as_aliases_and_merge_with_a_dsa() -> None:
    # Debian's own OSV records (DEBIAN-CVE-*) name their CVE in `upstream`, not in `aliases`
    index = VulnIndex.build([
        rec("DEBIAN-CVE-2023-5363", "Debian:12", "openssl", events=[{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}],
            upstream=["CVE-2023-5363"]),
        rec("DSA-5532-1", "Debian:12", "openssl", events=[{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}],
            aliases=["CVE-2023-5363"]),
    ])
    found = index.match(Inventory(DEBIAN, [pkg("deb", "libssl3", "3.0.11-1~deb12u1", source="openssl")], []))
    assert len(found) == 1
    assert found[0].id == "DEBIAN-CVE-2023-5363" or "DEBIAN-CVE-2023-5363" in found[0].aliases
    assert {found[0].id, *found[0].aliases} == {"DEBIAN-CVE-2023-5363", "DSA-5532-1", "CVE-2023-5363"}
