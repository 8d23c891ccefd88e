"""Fuzzing kept as regression tests (issue 19): the scanner's layer walking on corrupted tars (plain, gzip,
zstd) raises only HostileLayerError, and OSV documents of any shape either load (then match any package
version without an exception) or raise OsvInvalidError."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core.scan.osv import OsvInvalidError, records
from services.scanner.inventory.limits import HostileLayerError, Limits
from services.scanner.inventory.scan import OsInfo, Package, scan_image
from services.scanner.matcher import VulnIndex
from tests.unit.scanner.layerkit import E, gz, tar, zst

LIMITS = Limits(max_layer_bytes=1 << 20, max_entries=200, max_header_bytes=4096, max_metadata_bytes=1 << 16)
BASE = tar([
    E("etc/os-release", b'ID=debian\nVERSION_ID="12"\n'),
    E("var/lib/dpkg/status", b"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\n\n"),
    E("lib/apk/db/installed", b"P:musl\nV:1.2.4-r2\n\n"),
    E("usr/lib/python3/site-packages/x-1.0.dist-info/METADATA", b"Name: x\nVersion: 1.0\n"),
    E("app/node_modules/y/package.json", b'{"name": "y", "version": "2.0.0"}'),
    E("link", kind="symlink", link="../../etc/os-release"),
    E("dir", kind="dir"),
])


def scan(*layers: bytes) -> None:
    with contextlib.suppress(HostileLayerError):
        scan_image([(f"sha256:{i}", lambda data=data: io.BytesIO(data)) for i, data in enumerate(layers)], LIMITS)  # type: ignore[misc]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=len(BASE) - 1), st.integers(0, 255)), min_size=1,
                max_size=12),
       st.integers(min_value=0, max_value=len(BASE)), st.sampled_from(["none", "gzip", "zstd"]))
def test_corrupted_layers_raise_only_hostile_layer(flips: list[tuple[int, int]], cut: int, compression: str) -> None:
    data = bytearray(BASE)
    for at, value in flips:
        data[at] = value
    raw = bytes(data[: max(cut, 1)])
    scan({"none": raw, "gzip": gz(raw), "zstd": zst(raw)}[compression])


@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_hostile_layer(data: bytes) -> None:
    scan(data)
    scan(gz(data))
    scan(BASE, b"\x1f\x8b" + data)


@given(st.lists(st.tuples(st.text(alphabet="abc./-_\x00\u00e9", min_size=1, max_size=30),
                          st.sampled_from(["file", "dir", "symlink", "hardlink"]),
                          st.text(alphabet="abc./-_", max_size=30)), max_size=10))
def test_arbitrary_trees_raise_only_hostile_layer(entries: list[tuple[str, str, str]]) -> None:
    try:
        layer = tar([E(name, b"data", kind=kind, link=link) for name, kind, link in entries])
    except (ValueError, UnicodeError, OSError, KeyError):  # tarfile itself cannot write it
        return
    scan(BASE, layer)


_leaf = st.none() | st.booleans() | st.integers(min_value=-(1 << 70), max_value=1 << 70) | st.text(max_size=10)
_json = st.recursive(_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=20)
_versions = st.sampled_from(["0", "1.0.0", "2.36-9", "1:2.3~rc1-1", "v1.2.3", "1.2.4-r2", "1.0a1", "1.0.0+x"]) | \
    st.text(alphabet="0123456789.-:~+abrcv", max_size=14)
_events = st.lists(st.dictionaries(st.sampled_from(["introduced", "fixed", "last_affected", "limit", "x"]),
                                   _versions | _json, min_size=1, max_size=2), max_size=4)
_record = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=10) | _json, "modified": st.just("2024-01-01T00:00:00Z") | _json,
     "affected": st.lists(st.fixed_dictionaries(
         {"package": st.fixed_dictionaries({"ecosystem": st.sampled_from(
             ["Debian:12", "Alpine:v3.19", "PyPI", "npm", "Go", "Maven", "crates.io", "Ubuntu:22.04"]) | _json,
             "name": st.sampled_from(["libc6", "musl", "x", "y"]) | _json}) | _json,
          "ranges": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["ECOSYSTEM", "SEMVER", "GIT"]) | _json,
                                                    "events": _events | _json}), max_size=2) | _json},
         optional={"versions": st.lists(_versions | _json, max_size=3) | _json,
                   "severity": _json, "database_specific": _json}), max_size=2) | _json},
    optional={"aliases": _json, "upstream": _json, "summary": _json, "withdrawn": _json, "severity": _json},
)
PACKAGES = [("deb", "libc6"), ("apk", "musl"), ("pypi", "x"), ("npm", "y"), ("golang", "x"), ("maven", "x")]
OSES = [None, OsInfo("debian", "12", ecosystem="Debian:12"), OsInfo("alpine", "3.19", ecosystem="Alpine:v3.19")]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_record | _json, max_size=3), st.lists(_versions, min_size=1, max_size=3))
def test_osv_documents_load_or_raise_osv_invalid_and_match_any_version(docs: list[Any], versions: list[str]) -> None:
    try:
        loaded = list(records(json.dumps(docs).encode()))
    except OsvInvalidError:
        return
    index = VulnIndex.build(loaded)
    for type_, name in PACKAGES:
        for version in versions:
            for os in OSES:
                index.match_package(Package(type_, name, version, f"pkg:{type_}/{name}@{version}", "l", "/x"), os)
