"""Realistic images for the scanner's accuracy tests and benchmarks, built here (none can be pulled).

- `debian`: a Debian bookworm rootfs made by `debootstrap --variant=minbase` from the Debian mirror apt uses;
- `python`: a layer of pip-installed packages (old versions with known advisories) in site-packages;
- `npm`: a `node_modules` tree made by `npm install` (old lodash, minimist, express and its dependencies);
- `go`: a Go binary built against an old golang.org/x/text (GO-2021-0113);
- `app`: the four layers stacked, base first (what a real application image looks like).
An Alpine rootfs cannot be made here: apk-tools is not in Debian bookworm (the release this machine's apt
uses) and, more to the point, Alpine's package repository (dl-cdn.alpinelinux.org) is not reachable, so
there is nothing for apk to install.

Each image is packed as an OCI image layout (gzip layers written here, deterministic tar order) and
scanned once by syft (`syft scan oci-dir:...`, the reference inventory). Everything is cached under
`~/.cache/hanzo-registry/scan-images/<key>/`, the key a hash of the recipe below and syft's path, so a
warm machine only reads the cache. `python -m tests.integration.scan_images` builds (or finds) them and
prints where they are.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

ROOT = Path(os.environ.get("HANZO_SCAN_IMAGES_DIR", Path.home() / ".cache/hanzo-registry/scan-images"))
SUITE = "bookworm"
PIP_PACKAGES = ("requests==2.25.1", "urllib3==1.26.4", "idna==2.10", "chardet==4.0.0", "certifi==2020.12.5",
                "jinja2==2.11.2", "markupsafe==2.1.3", "setuptools==65.5.0")
NPM_PACKAGES = ("lodash@4.17.20", "minimist@1.2.5", "express@4.17.1")
GO_MODULE = "golang.org/x/text v0.3.5"
GO_MAIN = """package main

import (
\t"fmt"
\t"os"

\t"golang.org/x/text/language"
)

func main() {
\tfor _, a := range os.Args[1:] {
\t\ttag, err := language.Parse(a)
\t\tfmt.Println(tag, err)
\t}
}
"""
PY_SITE = "usr/local/lib/python3.11/site-packages"
RECIPE_VERSION = 1
IMAGES = ("debian", "python", "npm", "go", "app")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class Layer:
    digest: str
    diff_id: str
    size: int
    path: Path


@dataclass(frozen=True)
class BuiltImage:
    name: str
    layout: Path
    """An OCI image layout holding this image only (what `syft scan oci-dir:` reads)."""
    manifest: bytes
    config: bytes
    layers: tuple[Layer, ...]
    syft: Path
    """syft's syft-json inventory of the image."""

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (sources.list or deb822 .sources), else deb.debian.org."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = line.split()
                urls = (words[1:] if words[:1] == ["URIs:"] else
                        [w for w in words if w.startswith("http")] if words[:1] == ["deb"] else [])
                for url in urls:
                    if url.startswith("http") and url.rstrip("/").endswith("/debian"):
                        return url.rstrip("/")
    return "http://deb.debian.org/debian"


def syft_path() -> str:
    from tests.conftest import infra

    return infra("HANZO_TOOL_SYFT")


def cache_key(syft: str) -> str:
    recipe = json.dumps({"v": RECIPE_VERSION, "suite": SUITE, "pip": PIP_PACKAGES, "npm": NPM_PACKAGES,
                         "go": GO_MODULE, "main": GO_MAIN, "syft": os.path.realpath(syft)}, sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def _run(*cmd: str, cwd: Path | None = None, env: dict[str, str] | None = None, log: Path | None = None) -> None:
    out = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                         check=False)
    if log is not None:
        log.write_text(out.stdout + out.stderr)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")


# the contents ----------------------------------------------------------------------------------------


def build_debian(dest: Path, work: Path) -> None:
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise RuntimeError("debootstrap is not installed: run `make tools` (deploy/local/tools.sh apt)")
    _run(debootstrap, "--variant=minbase", SUITE, str(dest), debian_mirror(), log=work / "debootstrap.log")
    # what a container image leaves out: the apt lists and caches (as the Debian images on Docker Hub do)
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (dest / sub).glob("*"):
            if p.is_file():
                p.unlink()


def build_python(dest: Path, work: Path) -> None:
    site = dest / PY_SITE
    site.mkdir(parents=True)
    _run(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-compile", "--no-deps", "--only-binary=:all:", "--target", str(site), *PIP_PACKAGES,
         log=work / "pip.log")


def build_npm(dest: Path, work: Path) -> None:
    app = dest / "srv/app"
    app.mkdir(parents=True)
    (app / "package.json").write_text(json.dumps({"name": "hanzo-scan-demo", "version": "1.0.0",
                                                  "private": True}))
    _run("npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--save-exact", *NPM_PACKAGES, cwd=app,
         env={"npm_config_cache": str(work / "npm-cache"), "npm_config_update_notifier": "false"},
         log=work / "npm.log")


def build_go(dest: Path, work: Path) -> None:
    src = work / "gosrc"
    src.mkdir()
    (src / "main.go").write_text(GO_MAIN)
    (src / "go.mod").write_text(f"module example.com/langtag\n\ngo 1.21\n\nrequire {GO_MODULE}\n")
    env = {"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    _run("go", "mod", "tidy", cwd=src, env=env, log=work / "go-tidy.log")
    out = dest / "usr/local/bin/langtag"
    out.parent.mkdir(parents=True)
    _run("go", "build", "-trimpath", "-o", str(out), ".", cwd=src, env=env, log=work / "go-build.log")


# packing ---------------------------------------------------------------------------------------------


class _Hashing:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        return int(self.inner.write(data))

    def flush(self) -> None:
        self.inner.flush()


def _entries(root: Path) -> Iterator[Path]:
    """Every path under root, parents before children, in name order (a deterministic tar)."""
    todo = [root]
    while todo:
        d = todo.pop()
        children = sorted(d.iterdir(), key=lambda p: p.name)
        yield from children
        todo.extend(reversed([c for c in children if c.is_dir() and not c.is_symlink()]))


def pack_layer(root: Path, blobs: Path) -> Layer:
    """root's tree as a gzip tar layer in blobs/ (named by digest); hard links kept as tar links."""
    tmp = blobs / f".tmp-{os.getpid()}"
    with open(tmp, "wb") as raw:
        outer = _Hashing(raw)
        with gzip.GzipFile(fileobj=cast(Any, outer), mode="wb", compresslevel=6, mtime=0) as gz:
            inner = _Hashing(gz)
            with tarfile.open(fileobj=cast(Any, inner), mode="w|", format=tarfile.PAX_FORMAT) as tf:
                for path in _entries(root):
                    rel = path.relative_to(root).as_posix()
                    st = path.lstat()
                    if not any(f(st.st_mode) for f in (_isreg, _isdir, _islnk, _isdev)):
                        continue  # sockets, fifos: nothing an image ships
                    info = tf.gettarinfo(str(path), arcname=rel)
                    info.uname = info.gname = ""
                    if info.isreg():
                        with open(path, "rb") as f:
                            tf.addfile(info, f)
                    else:
                        tf.addfile(info)
    digest = "sha256:" + outer.h.hexdigest()
    final = blobs / digest.split(":")[1]
    os.replace(tmp, final)
    return Layer(digest, "sha256:" + inner.h.hexdigest(), outer.size, final)


def _isreg(mode: int) -> bool:
    return stat.S_ISREG(mode)


def _isdir(mode: int) -> bool:
    return stat.S_ISDIR(mode)


def _islnk(mode: int) -> bool:
    return stat.S_ISLNK(mode)


def _isdev(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def write_layout(name: str, layers: list[Layer], dest: Path) -> tuple[bytes, bytes]:
    """An OCI image layout at dest holding one image of `layers` (blobs hard-linked); (manifest, config)."""
    blobs = dest / "blobs/sha256"
    blobs.mkdir(parents=True)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2025-05-20T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
        "history": [{"created": "2025-05-20T00:00:00Z", "created_by": f"hanzo scan image {name}"} for _ in layers],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                   "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": x.digest, "size": x.size} for x in layers],
    }, sort_keys=True).encode()
    for data in (config, manifest):
        (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
    for x in layers:
        os.link(x.path, blobs / x.digest.split(":")[1])
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": name}}]}))
    return manifest, config


# the cache -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


BUILDERS = {"debian": build_debian, "python": build_python, "npm": build_npm, "go": build_go}
STACKS = {"debian": ["debian"], "python": ["python"], "npm": ["npm"], "go": ["go"],
          "app": ["debian", "python", "npm", "go"]}


def build_all(*, syft: str | None = None, verbose: bool = False) -> dict[str, BuiltImage]:
    """Every image, built once and cached (safe to call from several processes at once)."""
    syft = syft or syft_path()
    key = cache_key(syft)
    base = ROOT / key
    done = base / "done.json"
    with _locked(ROOT / f"{key}.lock"):
        if not done.exists():
            t0 = time.monotonic()
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(parents=True)
            work = base / "work"
            work.mkdir()
            blobs = base / "blobs"
            blobs.mkdir()
            layers: dict[str, Layer] = {}
            timings: dict[str, float] = {}
            for part, builder in BUILDERS.items():
                t = time.monotonic()
                with tempfile.TemporaryDirectory(dir=work, prefix=f"{part}-") as tmp:
                    rootfs = Path(tmp) / "rootfs"
                    rootfs.mkdir() if part != "debian" else None
                    builder(rootfs, work)
                    layers[part] = pack_layer(rootfs, blobs)
                timings[part] = round(time.monotonic() - t, 1)
                if verbose:
                    print(f"scan-images: {part} layer built in {timings[part]}s ({layers[part].size} bytes)")
            (base / "syft").mkdir()
            for name, parts in STACKS.items():
                t = time.monotonic()
                layout = base / "oci" / name
                write_layout(name, [layers[x] for x in parts], layout)
                _run(syft, "scan", f"oci-dir:{layout}", "-o", f"syft-json={base / 'syft' / (name + '.json')}",
                     "-q", env={"SYFT_CHECK_FOR_APP_UPDATE": "false"}, log=work / f"syft-{name}.log")
                timings[f"syft-{name}"] = round(time.monotonic() - t, 1)
            shutil.rmtree(work / "npm-cache", ignore_errors=True)
            done.write_text(json.dumps({"key": key, "seconds": round(time.monotonic() - t0, 1),
                                        "timings": timings, "built_at": time.time()}, indent=1))
    out: dict[str, BuiltImage] = {}
    for name in IMAGES:
        layout = base / "oci" / name
        index = json.loads((layout / "index.json").read_text())
        mdigest = index["manifests"][0]["digest"].split(":")[1]
        manifest = (layout / "blobs/sha256" / mdigest).read_bytes()
        doc = json.loads(manifest)
        config = (layout / "blobs/sha256" / doc["config"]["digest"].split(":")[1]).read_bytes()
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        layers_ = tuple(Layer(x["digest"], diff, x["size"], layout / "blobs/sha256" / x["digest"].split(":")[1])
                        for x, diff in zip(doc["layers"], diff_ids, strict=True))
        out[name] = BuiltImage(name, layout, manifest, config, layers_, base / "syft" / f"{name}.json")
    return out


def build_info(images: dict[str, BuiltImage]) -> dict[str, Any]:
    base = next(iter(images.values())).layout.parent.parent
    return dict(json.loads((base / "done.json").read_text()))


if __name__ == "__main__":
    t0 = time.monotonic()
    built = build_all(verbose=True)
    for img in built.values():
        print(f"{img.name:7} {img.manifest_digest} layers={len(img.layers)} {img.layout}")
    print(f"ready in {time.monotonic() - t0:.1f}s; build info: {build_info(built)}")
