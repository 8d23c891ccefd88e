"""Package databases and manifests found in an image, parsed from bytes (pure; each input already capped).

Each parser answers `Found` records: what the file says is installed, before the OS (for purls) and the
layer are known. Malformed input yields what could be read, never an exception other than ValueError.
"""

from __future__ import annotations

import email.parser
import io
import json
import re
import sqlite3
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from typing import IO

from services.scanner.inventory.limits import Limits


@dataclass(frozen=True, slots=True)
class Found:
    """A package a file lists. `type` is the purl type: deb, apk, rpm, pypi, npm, golang, maven."""

    type: str
    name: str
    version: str
    source_name: str = ""
    source_version: str = ""
    arch: str = ""
    licenses: tuple[str, ...] = ()
    namespace: str = ""
    """purl namespace for maven (groupId) and scoped npm names are kept in `name`."""


# paths -----------------------------------------------------------------------------------------------

OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
ALPINE_RELEASE = "etc/alpine-release"
DPKG_STATUS = "var/lib/dpkg/status"
DPKG_STATUS_D = "var/lib/dpkg/status.d/"
APK_INSTALLED = "lib/apk/db/installed"
RPM_SQLITE = ("var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite")
_JAR_SUFFIXES = (".jar", ".war", ".ear")


def kind_of(path: str) -> str | None:
    """Which parser a regular file at `path` (relative, normalised) needs; None for files not read."""
    if path in OS_RELEASE or path == ALPINE_RELEASE:
        return "os"
    if path == DPKG_STATUS:
        return "dpkg"
    if path.startswith(DPKG_STATUS_D):
        rest = path[len(DPKG_STATUS_D):]
        return "dpkg-d" if "/" not in rest and not rest.endswith(".md5sums") and rest else None
    if path == APK_INSTALLED:
        return "apk"
    if path in RPM_SQLITE:
        return "rpm"
    base = path.rpartition("/")[2]
    if base == "METADATA" and path.endswith(".dist-info/METADATA"):
        return "python"
    if base == "PKG-INFO" and path.endswith(".egg-info/PKG-INFO"):
        return "python"
    if base.endswith(".egg-info"):
        return "python"
    if base == "package.json" and "/node_modules/" in "/" + path:
        return "npm"
    if base.endswith(_JAR_SUFFIXES):
        return "java"
    return None


# os-release ------------------------------------------------------------------------------------------


def parse_os_release(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value.replace('\\"', '"')
    return out


# dpkg ------------------------------------------------------------------------------------------------

_SOURCE = re.compile(r"^(\S+)(?:\s+\((\S+)\))?")


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, ""
            continue
        if line[0] in " \t":
            if key:
                fields[key] += "\n" + line.strip()
            continue
        k, sep, v = line.partition(":")
        if sep:
            key = k.strip().lower()
            fields[key] = v.strip()
    if fields:
        yield fields


def parse_dpkg(data: bytes, *, require_status: bool = True) -> list[Found]:
    """/var/lib/dpkg/status (installed stanzas only) or a distroless status.d file (no Status field)."""
    out: list[Found] = []
    for st in _stanzas(data.decode("utf-8", "replace")):
        name, version = st.get("package", ""), st.get("version", "")
        if not name or not version:
            continue
        status = st.get("status")
        if status is not None:
            if status.split()[-1:] != ["installed"]:
                continue
        elif require_status:
            continue
        src_name, src_version = name, version
        m = _SOURCE.match(st.get("source", ""))
        if m:
            src_name = m.group(1)
            src_version = m.group(2) or version
        out.append(Found("deb", name, version, src_name, src_version, st.get("architecture", "")))
    return out


# apk -------------------------------------------------------------------------------------------------


def parse_apk(data: bytes) -> list[Found]:
    out: list[Found] = []
    for block in data.decode("utf-8", "replace").split("\n\n"):
        rec: dict[str, str] = {}
        for line in block.splitlines():
            if len(line) > 2 and line[1] == ":" and line[0] not in rec:
                rec[line[0]] = line[2:]
        if rec.get("P") and rec.get("V"):
            lic = tuple(x for x in rec.get("L", "").split() if x)
            out.append(Found("apk", rec["P"], rec["V"], rec.get("o", rec["P"]), rec["V"], rec.get("A", ""), lic))
    return out


# rpm (sqlite rpmdb) ----------------------------------------------------------------------------------

_RPM_TAGS = {1000: "name", 1001: "version", 1002: "release", 1003: "epoch", 1014: "license", 1022: "arch",
             1044: "sourcerpm"}


def _rpm_header(blob: bytes) -> dict[str, str]:
    if len(blob) < 8:
        raise ValueError("short rpm header")
    il, dl = struct.unpack(">II", blob[:8])
    start = 8 + 16 * il
    if il > 100_000 or start + dl > len(blob):
        raise ValueError("rpm header counts exceed the blob")
    store = blob[start:start + dl]
    out: dict[str, str] = {}
    for i in range(il):
        tag, typ, off, count = struct.unpack(">IIII", blob[8 + 16 * i: 24 + 16 * i])
        name = _RPM_TAGS.get(tag)
        if name is None or off >= len(store):
            continue
        if typ == 4 and count >= 1 and off + 4 <= len(store):  # INT32
            out[name] = str(struct.unpack(">I", store[off:off + 4])[0])
        elif typ in (6, 8, 9):  # STRING, STRING_ARRAY, I18NSTRING: first string
            end = store.find(b"\0", off)
            out[name] = store[off:end if end >= 0 else len(store)].decode("utf-8", "replace")
    return out


_SRPM = re.compile(r"^(.+)-([^-]+)-([^-]+)\.src\.rpm$")


def parse_rpm_sqlite(path: str) -> list[Found]:
    out: list[Found] = []
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        rows = conn.execute("SELECT blob FROM Packages").fetchall()
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"rpmdb.sqlite: {exc}") from None
    finally:
        conn.close()
    for (blob,) in rows:
        try:
            h = _rpm_header(bytes(blob))
        except (ValueError, struct.error):
            continue
        name = h.get("name", "")
        if not name or name == "gpg-pubkey" or "version" not in h:
            continue
        version = h["version"] + (f"-{h['release']}" if h.get("release") else "")
        if h.get("epoch") and h["epoch"] != "0":
            version = f"{h['epoch']}:{version}"
        src_name, src_version = name, version
        m = _SRPM.match(h.get("sourcerpm", ""))
        if m:
            src_name, src_version = m.group(1), f"{m.group(2)}-{m.group(3)}"
        lic = (h["license"],) if h.get("license") else ()
        out.append(Found("rpm", name, version, src_name, src_version, h.get("arch", ""), lic))
    return out


# Python ----------------------------------------------------------------------------------------------


def parse_python_metadata(data: bytes) -> list[Found]:
    head = data.split(b"\n\n", 1)[0] if b"\n\n" in data else data
    msg: Message = email.parser.BytesHeaderParser().parsebytes(head)
    name, version = (msg.get("Name") or "").strip(), (msg.get("Version") or "").strip()
    if not name or not version:
        return []
    lic_expr = (msg.get("License-Expression") or "").strip()
    lic = (lic_expr,) if lic_expr else (((msg.get("License") or "").strip()[:200],) if msg.get("License") else ())
    return [Found("pypi", name, version, licenses=tuple(x for x in lic if x and x != "UNKNOWN"))]


# npm -------------------------------------------------------------------------------------------------


def parse_package_json(data: bytes) -> list[Found]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return []
    if not isinstance(doc, dict):
        return []
    name, version = doc.get("name"), doc.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        return []
    lic = doc.get("license")
    licenses = (lic,) if isinstance(lic, str) and lic else ()
    return [Found("npm", name, version, licenses=licenses)]


# Java ------------------------------------------------------------------------------------------------


def _properties(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def _manifest_mf(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith(" ") and key:
            out[key] += line[1:]
        elif ":" in line:
            key, _, v = line.partition(":")
            key = key.strip()
            out[key] = v.strip()
        if not line.strip() and out:
            break  # the main section only
    return out


def parse_jar(fileobj: IO[bytes], name: str, limits: Limits, *, depth: int = 0) -> list[Found]:
    """pom.properties of a jar/war/ear and of the jars inside it; MANIFEST.MF when there are none."""
    try:
        zf = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return []
    out: list[Found] = []
    with zf:
        infos = zf.infolist()[:100_000]
        for info in infos:
            fn = info.filename
            if fn.startswith("META-INF/maven/") and fn.endswith("/pom.properties") \
                    and info.file_size <= limits.max_manifest_bytes:
                try:
                    props = _properties(zf.read(info).decode("utf-8", "replace"))
                except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib_error()):
                    continue
                g, a, v = props.get("groupId"), props.get("artifactId"), props.get("version")
                if g and a and v:
                    out.append(Found("maven", a, v, namespace=g))
        if not out:
            mf = next((i for i in infos if i.filename == "META-INF/MANIFEST.MF"), None)
            if mf is not None and mf.file_size <= limits.max_manifest_bytes:
                try:
                    fields = _manifest_mf(zf.read(mf).decode("utf-8", "replace"))
                except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib_error()):
                    fields = {}
                version = fields.get("Implementation-Version") or fields.get("Bundle-Version") or ""
                base = name.rpartition("/")[2].rsplit(".", 1)[0]
                artifact = (fields.get("Bundle-SymbolicName", "").split(";")[0].rpartition(".")[2]
                            or fields.get("Implementation-Title") or base)
                if version and artifact:
                    group = fields.get("Bundle-SymbolicName", "").split(";")[0].rpartition(".")[0] \
                        or fields.get("Implementation-Vendor-Id", "")
                    out.append(Found("maven", artifact, version, namespace=group))
        if depth < 3:
            for info in infos:
                if info.filename.endswith(_JAR_SUFFIXES) and 0 < info.file_size <= limits.max_nested_bytes:
                    try:
                        data = zf.read(info)
                    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib_error()):
                        continue
                    out += parse_jar(io.BytesIO(data), info.filename, limits, depth=depth + 1)
    return out


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error
