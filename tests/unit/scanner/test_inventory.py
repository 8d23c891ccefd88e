"""Inventory from layers: formats, flattening with whiteouts, every package source, and hostile layers."""

from __future__ import annotations

import io
import json
import sqlite3
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from services.scanner.inventory.gobuild import MAGIC, BuildInfoScanner, modules, parse_buildinfo
from services.scanner.inventory.limits import HostileLayerError, Limits
from services.scanner.inventory.scan import Inventory, scan_image
from tests.unit.scanner.layerkit import (
    APK_INSTALLED,
    DPKG_STATUS,
    OS_RELEASE_ALPINE,
    OS_RELEASE_DEBIAN,
    E,
    gz,
    tar,
    zst,
)


def image(*layers: bytes, limits: Limits | None = None) -> Inventory:
    return scan_image([(f"sha256:{i:064x}", lambda b=b: io.BytesIO(b)) for i, b in enumerate(layers)], limits)  # type: ignore[misc]


def names(inv: Inventory, kind: str | None = None) -> set[tuple[str, str]]:
    return {(p.name, p.version) for p in inv.packages if kind is None or p.type == kind}


@pytest.mark.parametrize("wrap", [lambda b: b, gz, zst], ids=["plain", "gzip", "zstd"])
def test_dpkg_and_os_release_in_every_compression(wrap) -> None:  # type: ignore[no-untyped-def]
    inv = image(wrap(tar([("var/lib/dpkg/status", DPKG_STATUS), ("usr/lib/os-release", OS_RELEASE_DEBIAN),
                          E("etc/os-release", kind="symlink", link="../usr/lib/os-release")])))
    assert inv.os is not None and inv.os.ecosystem == "Debian:12"
    assert names(inv) == {("libc6", "2.36-9+deb12u4"), ("openssl", "3.0.11-1~deb12u2"),
                          ("libssl3", "3.0.11-1~deb12u2")}
    libc = next(p for p in inv.packages if p.name == "libc6")
    assert (libc.source_name, libc.source_version) == ("glibc", "2.36-9+deb12u4")
    assert libc.purl == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc"
    ssl = next(p for p in inv.packages if p.name == "libssl3")
    assert (ssl.source_name, ssl.source_version) == ("openssl", "3.0.11-1~deb12u2")
    assert libc.layer == "sha256:" + "0" * 64


def test_deb_purl_names_the_source_version_when_it_differs() -> None:
    status = (b"Package: bash\nStatus: install ok installed\nArchitecture: amd64\nSource: bash (5.2.15-2)\n"
              b"Version: 5.2.15-2+b13\n\n"
              b"Package: bsdutils\nStatus: install ok installed\nArchitecture: amd64\n"
              b"Source: util-linux (2.38.1-5+deb12u3)\nVersion: 1:2.38.1-5+deb12u3\n\n"
              b"Package: dash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 0.5.12-2\n")
    inv = image(tar([("var/lib/dpkg/status", status), ("etc/os-release", OS_RELEASE_DEBIAN)]))
    purls = {p.name: p.purl for p in inv.packages}
    # syft's and grype's spelling: name@version when the binary's version is not its source's
    assert purls["bash"].endswith("&upstream=bash%405.2.15-2")
    assert purls["bsdutils"].endswith("&upstream=util-linux%402.38.1-5%2Bdeb12u3")
    assert "upstream" not in purls["dash"]


def test_distroless_status_d() -> None:
    stanza = b"Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\n"
    inv = image(tar([("var/lib/dpkg/status.d/tzdata", stanza), ("var/lib/dpkg/status.d/tzdata.md5sums", b"x"),
                     ("etc/os-release", OS_RELEASE_DEBIAN)]))
    assert names(inv) == {("tzdata", "2024a-0+deb12u1")}


def test_whiteouts_opaque_dirs_and_layer_attribution() -> None:
    base = tar([("app/node_modules/lodash/package.json", json.dumps({"name": "lodash", "version": "4.17.20"}).encode()),
                ("app/node_modules/left-pad/package.json", b'{"name":"left-pad","version":"1.3.0"}'),
                ("opt/py/site-packages/requests-2.25.0.dist-info/METADATA",
                 b"Metadata-Version: 2.1\nName: requests\nVersion: 2.25.0\n\nbody"),
                ("opt/py/site-packages/six-1.16.0.dist-info/METADATA", b"Name: six\nVersion: 1.16.0\n")])
    upper = tar([("app/node_modules/.wh.left-pad", b""),
                 ("opt/py/site-packages/.wh..wh..opq", b""),
                 ("opt/py/site-packages/urllib3-1.26.4.dist-info/METADATA", b"Name: urllib3\nVersion: 1.26.4\n")])
    inv = image(base, upper)
    assert names(inv) == {("lodash", "4.17.20"), ("urllib3", "1.26.4")}
    u = next(p for p in inv.packages if p.name == "urllib3")
    assert u.layer.endswith("1") and u.purl == "pkg:pypi/urllib3@1.26.4"


def test_whiteouts_never_hide_the_same_layer() -> None:
    layer = tar([("d/new/package.json", b""), ("d/node_modules/a/package.json", b'{"name":"a","version":"1.0.0"}'),
                 ("d/node_modules/.wh..wh..opq", b"")])
    assert names(image(layer)) == {("a", "1.0.0")}


def test_apk_with_origin() -> None:
    inv = image(tar([("lib/apk/db/installed", APK_INSTALLED), ("etc/os-release", OS_RELEASE_ALPINE)]))
    assert inv.os is not None and inv.os.ecosystem == "Alpine:v3.19"
    crypto = next(p for p in inv.packages if p.name == "libcrypto3")
    assert crypto.source_name == "openssl"
    assert crypto.purl.startswith("pkg:apk/alpine/libcrypto3@3.1.4-r5?arch=x86_64")


def test_scoped_npm_egg_info_and_hardlink() -> None:
    inv = image(tar([
        ("x/node_modules/@babel/core/package.json", b'{"name":"@babel/core","version":"7.1.0"}'),
        ("usr/lib/python3/dist-packages/chardet-3.0.4.egg-info", b"Name: chardet\nVersion: 3.0.4\n"),
        ("y/node_modules/z/package.json", b'{"name":"z","version":"0.0.1"}'),
        E("y/node_modules/z2/package.json", kind="hardlink", link="y/node_modules/z/package.json"),
    ]))
    assert ("@babel/core", "7.1.0") in names(inv)
    babel = next(p for p in inv.packages if p.name == "@babel/core")
    assert babel.purl == "pkg:npm/%40babel/core@7.1.0"
    assert ("chardet", "3.0.4") in names(inv, "pypi")
    assert len([p for p in inv.packages if p.name == "z"]) == 2


def _jar(props: dict[str, str], nested: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        if props:
            zf.writestr(f"META-INF/maven/{props['groupId']}/{props['artifactId']}/pom.properties",
                        "".join(f"{k}={v}\n" for k, v in props.items()))
        if nested:
            zf.writestr("BOOT-INF/lib/inner.jar", nested)
    return buf.getvalue()


def test_java_pom_properties_and_nested_jars() -> None:
    inner = _jar({"groupId": "org.apache.logging.log4j", "artifactId": "log4j-core", "version": "2.14.1"})
    outer = _jar({"groupId": "com.example", "artifactId": "app", "version": "1.0"}, nested=inner)
    inv = image(tar([("srv/app.jar", outer)]))
    assert names(inv, "maven") == {("com.example:app", "1.0"), ("org.apache.logging.log4j:log4j-core", "2.14.1")}
    log4j = next(p for p in inv.packages if "log4j" in p.name)
    assert log4j.purl == "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1"


def _buildinfo(version: str, modinfo: str) -> bytes:
    def uv(n: int) -> bytes:
        out = b""
        while n >= 0x80:
            out += bytes([n & 0x7F | 0x80])
            n >>= 7
        return out + bytes([n])

    sentinel = b"0123456789abcdef"
    mod = sentinel + modinfo.encode() + sentinel
    header = MAGIC + bytes([8, 2]) + b"\0" * 16
    return header + uv(len(version)) + version.encode() + uv(len(mod)) + mod


MODINFO = ("path\texample.com/app\nmod\texample.com/app\t(devel)\t\n"
           "dep\tgolang.org/x/net\tv0.7.0\th1:abc=\n"
           "dep\tgithub.com/old/mod\tv1.0.0\th1:x=\n=>\tgithub.com/new/mod\tv1.2.0\th1:y=\n"
           "build\t-compiler=gc\n")


def test_go_buildinfo_streamed_across_chunks() -> None:
    blob = b"\x7fELF" + b"\0" * 4092 + _buildinfo("go1.21.5", MODINFO) + b"\0" * 100
    found = parse_buildinfo(blob[4096:])
    assert found is not None and found[0] == "go1.21.5"
    mods = {(f.name, f.version) for f in modules(*found)}
    assert mods == {("golang.org/x/net", "v0.7.0"), ("github.com/new/mod", "v1.2.0"), ("stdlib", "go1.21.5")}
    scanner = BuildInfoScanner()
    for i in range(0, len(blob), 7):
        scanner.feed(blob[i:i + 7])
    assert {(f.name, f.version) for f in scanner.result() or []} == mods
    inv = image(tar([E("usr/local/bin/app", data=blob, mode=0o755)]))
    assert ("golang.org/x/net", "v0.7.0") in names(inv, "golang")
    net = next(p for p in inv.packages if p.name == "golang.org/x/net")
    assert net.purl == "pkg:golang/golang.org/x/net@v0.7.0"


def _rpm_header(tags: dict[int, str]) -> bytes:
    index, store = b"", b""
    for tag, value in tags.items():
        index += struct.pack(">IIII", tag, 6, len(store), 1)
        store += value.encode() + b"\0"
    return struct.pack(">II", len(tags), len(store)) + index + store


def test_rpm_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "rpmdb.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, blob BLOB)")
    conn.execute("INSERT INTO Packages (blob) VALUES (?)", (_rpm_header(
        {1000: "openssl-libs", 1001: "3.0.7", 1002: "24.el9", 1022: "x86_64",
         1044: "openssl-3.0.7-24.el9.src.rpm"}),))
    conn.execute("INSERT INTO Packages (blob) VALUES (?)", (_rpm_header({1000: "gpg-pubkey", 1001: "1"}),))
    conn.execute("INSERT INTO Packages (blob) VALUES (?)", (b"\xff\xff\xff\xff garbage",))
    conn.commit()
    conn.close()
    inv = image(tar([("var/lib/rpm/rpmdb.sqlite", db.read_bytes())]))
    assert names(inv) == {("openssl-libs", "3.0.7-24.el9")}
    assert inv.packages[0].source_name == "openssl"


# hostile layers


@pytest.mark.parametrize("name", ["../etc/passwd", "a/../../b", "/etc/shadow"])
def test_path_traversal_is_refused(name: str) -> None:
    with pytest.raises(HostileLayerError, match=r"traversal|absolute"):
        image(tar([(name, b"x")]))


def test_symlinks_never_leave_the_image() -> None:
    inv = image(tar([E("etc/os-release", kind="symlink", link="../../../../../../etc/os-release")]))
    assert inv.os is None
    inv = image(tar([E("etc/os-release", kind="symlink", link="/etc/os-release")]))
    assert inv.os is None


def test_decompression_bomb_is_refused() -> None:
    bomb = gz(tar([("big", b"\0" * (8 * 1024 * 1024))]))
    limits = Limits(max_ratio=10, ratio_allowance=1024 * 1024)
    with pytest.raises(HostileLayerError, match="bomb"):
        image(bomb, limits=limits)
    with pytest.raises(HostileLayerError, match="more than"):
        image(tar([("big", b"\0" * 100_000)]), limits=Limits(max_layer_bytes=50_000))


def test_too_many_files_and_big_headers() -> None:
    with pytest.raises(HostileLayerError, match="more than 3 files"):
        image(tar([(f"f{i}", b"") for i in range(5)]), limits=Limits(max_entries=3))
    long = "d/" * 600 + "f"
    with pytest.raises(HostileLayerError, match="header entry"):
        image(tar([(long, b"")]), limits=Limits(max_header_bytes=512))


def test_garbage_and_truncated_layers_fail_cleanly() -> None:
    with pytest.raises(HostileLayerError):
        image(gz(b"not a tar at all" * 100))
    with pytest.raises(HostileLayerError):
        image(gz(tar([("a", bytes(range(256)) * 400), ("b", b"y")]))[:300])
    with pytest.raises(HostileLayerError):
        image(b"\x28\xb5\x2f\xfd" + b"garbage" * 10)
    assert image(b"").packages == []


def test_oversized_metadata_is_skipped_with_a_warning() -> None:
    inv = image(tar([("var/lib/dpkg/status", DPKG_STATUS)]), limits=Limits(max_metadata_bytes=10))
    assert inv.packages == [] and "over the 10-byte limit" in inv.warnings[0]


def test_inventory_round_trips_through_documents() -> None:
    inv = image(tar([("var/lib/dpkg/status", DPKG_STATUS), ("etc/os-release", OS_RELEASE_DEBIAN)]))
    assert Inventory.from_doc(json.loads(json.dumps(inv.to_doc()))).packages == inv.packages


def test_tar_is_streamed_not_seekable() -> None:
    class OneWay(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._b = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
            return self._b.readinto(b)

        def seekable(self) -> bool:
            return False

    data = gz(tar([("var/lib/dpkg/status", DPKG_STATUS)]))
    inv = scan_image([("sha256:" + "a" * 64, lambda: OneWay(data))])  # type: ignore[list-item,return-value]
    assert len(inv.packages) == 3
    assert tarfile  # stream mode never seeks
