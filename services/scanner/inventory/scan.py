"""One image's layers -> its Inventory: the OS and every installed package, with purl and layer (sync, pure
apart from temporary files for jars and rpmdb.sqlite; run it in a worker thread)."""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from packageurl import PackageURL

from services.scanner.inventory import parsers as p
from services.scanner.inventory.gobuild import BuildInfoScanner
from services.scanner.inventory.layers import decompressed, tar_entries
from services.scanner.inventory.limits import HostileLayerError, Limits
from services.scanner.inventory.tree import DIR, FILE, LINK, OTHER, Node, Tree, normalise

LayerOpener = Callable[[], IO[bytes]]
_CHUNK = 1 << 16
_DB_KINDS = ("dpkg", "dpkg-d", "apk", "rpm")


@dataclass(frozen=True, slots=True)
class OsInfo:
    id: str
    version_id: str
    pretty_name: str = ""
    codename: str = ""
    ecosystem: str = ""
    """The OSV ecosystem of its packages (`Debian:12`, `Alpine:v3.20`, `Ubuntu:22.04:LTS`), or empty."""


@dataclass(frozen=True, slots=True)
class Package:
    type: str
    name: str
    version: str
    purl: str
    layer: str
    path: str
    source_name: str = ""
    source_version: str = ""
    arch: str = ""
    licenses: tuple[str, ...] = ()

    def to_doc(self) -> dict[str, Any]:
        d = asdict(self)
        d["licenses"] = list(self.licenses)
        return d

    @staticmethod
    def from_doc(d: dict[str, Any]) -> Package:
        return Package(**{**d, "licenses": tuple(d.get("licenses") or ())})


@dataclass
class Inventory:
    os: OsInfo | None
    packages: list[Package]
    layers: list[str]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_doc(self) -> dict[str, Any]:
        return {"os": asdict(self.os) if self.os else None, "packages": [x.to_doc() for x in self.packages],
                "layers": self.layers, "warnings": self.warnings[:100], "seconds": round(self.seconds, 3)}

    @staticmethod
    def from_doc(d: dict[str, Any]) -> Inventory:
        os_doc = d.get("os")
        return Inventory(OsInfo(**os_doc) if os_doc else None, [Package.from_doc(x) for x in d.get("packages", [])],
                         list(d.get("layers", [])), list(d.get("warnings", [])), float(d.get("seconds", 0.0)))


# OS --------------------------------------------------------------------------------------------------


def os_info(fields: dict[str, str], alpine_release: str = "") -> OsInfo | None:
    os_id = fields.get("ID", "").lower()
    version_id = fields.get("VERSION_ID", "")
    if not os_id and alpine_release:
        os_id, version_id = "alpine", alpine_release
    if not os_id:
        return None
    codename = fields.get("VERSION_CODENAME", "")
    ecosystem = ""
    if os_id == "debian":
        major = version_id.split(".")[0]
        ecosystem = f"Debian:{major}" if major else "Debian:sid" if codename in ("sid", "") else f"Debian:{codename}"
    elif os_id == "ubuntu":
        lts = "LTS" in fields.get("VERSION", "")
        ecosystem = f"Ubuntu:{version_id}" + (":LTS" if lts else "")
    elif os_id == "alpine":
        mm = ".".join(version_id.split(".")[:2])
        ecosystem = f"Alpine:v{mm}" if mm else ""
    elif os_id in ("almalinux", "rocky"):
        ecosystem = ("AlmaLinux:" if os_id == "almalinux" else "Rocky Linux:") + version_id.split(".")[0]
    elif os_id == "wolfi":
        ecosystem = "Wolfi"
    return OsInfo(os_id, version_id, fields.get("PRETTY_NAME", ""), codename, ecosystem)


# purls -----------------------------------------------------------------------------------------------

_PEP503 = re.compile(r"[-_.]+")


def purl_of(f: p.Found, os: OsInfo | None) -> str:
    qualifiers: dict[str, str] = {}
    namespace: str | None = None
    name = f.name
    if f.type in ("deb", "apk", "rpm"):
        namespace = os.id if os else {"deb": "debian", "apk": "alpine", "rpm": "redhat"}[f.type]
        if f.arch:
            qualifiers["arch"] = f.arch
        # the source package, as syft and grype spell it: `src`, or `src@version` when the versions differ
        # (a binNMU `+b1`, a binary with its own epoch), so the purl alone says what distro advisories name
        if f.source_name and (f.source_name != f.name or (f.source_version or f.version) != f.version):
            src_version = f.source_version or f.version
            qualifiers["upstream"] = f.source_name + (f"@{src_version}" if src_version != f.version else "")
        if os and os.version_id:
            qualifiers["distro"] = f"{os.id}-{os.version_id}"
    elif f.type == "pypi":
        name = _PEP503.sub("-", f.name).lower()
    elif f.type == "npm" and f.name.startswith("@") and "/" in f.name:
        namespace, _, name = f.name.partition("/")
    elif f.type == "golang" and "/" in f.name:
        namespace, _, name = f.name.rpartition("/")
    elif f.type == "maven":
        namespace = f.namespace or None
    return PackageURL(type=f.type, namespace=namespace, name=name, version=f.version,
                      qualifiers=qualifiers or None).to_string()


# scanning --------------------------------------------------------------------------------------------


class _Layer:
    """Reads one layer into a delta tree."""

    def __init__(self, scanner: InventoryScanner, index: int) -> None:
        self.s = scanner
        self.index = index
        self.delta = Tree()
        self.opaque: list[str] = []
        self.whiteouts: list[str] = []

    def read(self, stream: IO[bytes]) -> None:
        limits = self.s.limits
        for tf, m in tar_entries(stream, limits):
            self.s.entries += 1
            if self.s.entries > limits.max_entries:
                raise HostileLayerError(f"the image has more than {limits.max_entries} files")
            path = normalise(m.name, max_bytes=limits.max_path_bytes)
            if not path:
                continue
            parent, _, leaf = path.rpartition("/")
            if leaf.startswith(".wh."):
                if leaf == ".wh..wh..opq":
                    self.opaque.append(parent)
                elif leaf == ".wh.":
                    raise HostileLayerError(f"a bare whiteout {path[:200]!r}")
                else:
                    self.whiteouts.append(f"{parent}/{leaf[4:]}" if parent else leaf[4:])
                continue
            if m.isdir():
                node = Node(DIR, self.index)
            elif m.issym():
                if len(m.linkname) > limits.max_path_bytes:
                    raise HostileLayerError("a symbolic link target beyond the path limit")
                node = Node(LINK, self.index, link=m.linkname)
            elif m.islnk():
                target = normalise(m.linkname, max_bytes=limits.max_path_bytes)
                src = self.delta.lookup(target) or self.s.tree.lookup(target)
                if src is None:
                    continue  # a dangling hard link names nothing we know
                node = src.copy_as_hardlink(self.index)
            elif m.isreg():
                node = self._file(tf, m, path)
            else:
                node = Node(OTHER, self.index)
            self.delta.add(path, node, self.index)

    def _file(self, tf: Any, m: Any, path: str) -> Node:
        kind = p.kind_of(path)
        limits = self.s.limits
        found: tuple[p.Found, ...] | None = None
        text: bytes | None = None
        try:
            if kind in ("os", "dpkg", "dpkg-d", "apk", "python", "npm"):
                cap = limits.max_metadata_bytes if kind in _DB_KINDS else limits.max_manifest_bytes
                if m.size > cap:
                    self.s.warn(f"{path}: {m.size} bytes, over the {cap}-byte limit; not read")
                else:
                    data = tf.extractfile(m).read(cap)
                    if kind == "os":
                        text = data
                    else:
                        found = tuple(_parse_small(kind, data))
            elif kind in ("rpm", "java"):
                cap = limits.max_metadata_bytes if kind == "rpm" else limits.max_archive_bytes
                if m.size > cap:
                    self.s.warn(f"{path}: {m.size} bytes, over the {cap}-byte limit; not read")
                else:
                    found = tuple(self._spooled(kind, tf.extractfile(m), path))
            elif m.mode & 0o111 and m.size > 1024:
                found = self._go(tf.extractfile(m))
        except (tarfile.TarError, EOFError) as exc:
            # The layer ends (or breaks) inside this file's bytes: the stream is corrupt, not the file.
            if isinstance(exc.__context__, HostileLayerError):
                raise exc.__context__ from None
            raise HostileLayerError(f"the tar stream is corrupt inside {path[:200]!r}: {str(exc)[:200]}") from None
        except (ValueError, UnicodeError, OSError) as exc:
            if isinstance(exc.__context__, HostileLayerError):
                raise exc.__context__ from None
            self.s.warn(f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:100]})")
        if found and kind in _DB_KINDS:
            for f in found:
                self.s.first_layer.setdefault((f.type, f.name, f.version), self.index)
        return Node(FILE, self.index, found=found or None, text=text)

    def _spooled(self, kind: str, src: IO[bytes], path: str) -> list[p.Found]:
        with tempfile.NamedTemporaryFile(prefix="hanzo-scan-", suffix=".tmp") as tmp:
            shutil.copyfileobj(src, tmp, _CHUNK)
            tmp.flush()
            if kind == "rpm":
                return p.parse_rpm_sqlite(tmp.name)
            tmp.seek(0)
            return p.parse_jar(tmp, path, self.s.limits)

    @staticmethod
    def _go(src: IO[bytes]) -> tuple[p.Found, ...] | None:
        scanner = BuildInfoScanner()
        while not scanner.done:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            scanner.feed(chunk)
        result = scanner.result()
        return tuple(result) if result else None

    def apply(self) -> None:
        tree = self.s.tree
        for d in self.opaque:
            tree.empty(d)
        for w in self.whiteouts:
            tree.remove(w)
        tree.merge(self.delta)


def _parse_small(kind: str, data: bytes) -> list[p.Found]:
    if kind == "dpkg":
        return p.parse_dpkg(data)
    if kind == "dpkg-d":
        return p.parse_dpkg(data, require_status=False)
    if kind == "apk":
        return p.parse_apk(data)
    if kind == "python":
        return p.parse_python_metadata(data)
    if kind == "npm":
        return p.parse_package_json(data)
    return []


class InventoryScanner:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.tree = Tree()
        self.entries = 0
        self.first_layer: dict[tuple[str, str, str], int] = {}
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        if len(self.warnings) < 100:
            self.warnings.append(message)

    def add_layer(self, index: int, raw: IO[bytes]) -> None:
        _, stream = decompressed(raw, self.limits)
        layer = _Layer(self, index)
        layer.read(stream)
        layer.apply()

    def inventory(self, layer_digests: Sequence[str]) -> Inventory:
        tree = self.tree
        os = None
        release = tree.resolve("etc/os-release") or tree.resolve("usr/lib/os-release")
        alpine = tree.resolve(p.ALPINE_RELEASE)
        fields = p.parse_os_release(release.text) if release is not None and release.text else {}
        alpine_text = (alpine.text or b"").decode("utf-8", "replace").strip() if alpine is not None else ""
        os = os_info(fields, alpine_text)
        packages: list[Package] = []
        seen: set[tuple[str, str, str, str]] = set()
        for path, node in tree.walk():
            if not node.found:
                continue
            for f in node.found:
                key = (f.type, f.name, f.version, path)
                if key in seen:
                    continue
                seen.add(key)
                layer = self.first_layer.get((f.type, f.name, f.version), node.layer)
                packages.append(Package(
                    type=f.type, name=f.name if f.type != "maven" else f"{f.namespace}:{f.name}" if f.namespace
                    else f.name, version=f.version, purl=purl_of(f, os), layer=layer_digests[layer]
                    if 0 <= layer < len(layer_digests) else "", path="/" + path, source_name=f.source_name,
                    source_version=f.source_version, arch=f.arch, licenses=f.licenses))
        packages.sort(key=lambda x: (x.type, x.name, x.version, x.path))
        return Inventory(os, packages, list(layer_digests), self.warnings)


def scan_image(layers: Sequence[tuple[str, LayerOpener]], limits: Limits | None = None) -> Inventory:
    """The inventory of an image from its layers (digest, opener), base first. HostileLayerError when a
    layer cannot be read safely."""
    start = time.monotonic()
    scanner = InventoryScanner(limits)
    for index, (digest, opener) in enumerate(layers):
        raw = opener()
        try:
            scanner.add_layer(index, raw)
        except HostileLayerError as exc:
            raise HostileLayerError(f"layer {index} ({digest[:19]}): {exc}") from None
        finally:
            raw.close()
    inv = scanner.inventory([d for d, _ in layers])
    inv.seconds = time.monotonic() - start
    return inv
