"""Images on disk for `push --from` and `pull --to`: OCI image layouts (`oci-layout`, `index.json`,
`blobs/<alg>/<hex>`, tags as `org.opencontainers.image.ref.name`) and `docker save` tarballs (`manifest.json`,
the config, uncompressed layer tars). Blobs stream between files and the registry, never whole in memory.

A layout's blobs and manifests are pushed byte for byte; a docker archive becomes an OCI manifest whose layers
are its tars as they are (`application/vnd.oci.image.layer.v1.tar`, digest = diff id). Pulling into a docker
archive decompresses layers (docker load checks the config's diff ids against them)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal

import zstandard

from services.core.client import OciClient, RemoteRepository
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest

REF_NAME: Final = "org.opencontainers.image.ref.name"
LAYOUT_FILE: Final = {"imageLayoutVersion": "1.0.0"}
READ_CHUNK: Final = 8 * 1024 * 1024
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR: Final = "application/vnd.oci.image.layer.v1.tar"

Progress = Callable[[str, int, int], None]
"""(name, bytes done, total) of one blob in transfer."""


class LayoutError(Exception):
    """A layout or archive that cannot be read or written as asked (exit 2: the user's file, not the registry)."""


@dataclass(frozen=True, slots=True)
class Location:
    kind: Literal["oci", "docker-archive"]
    path: Path
    tag: str | None


def parse_location(text: str) -> Location:
    """`oci:DIR[:TAG]` or `docker-archive:FILE[:REF]` (skopeo's transport syntax)."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("oci", "docker-archive") or not rest:
        raise LayoutError(f"{text!r}: expected oci:DIR[:TAG] or docker-archive:FILE")
    path, _, tag = rest.partition(":")
    return Location(kind, Path(path), tag or None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- file helpers


def _sha256_file(handle: IO[bytes], start: int, size: int) -> Digest:
    handle.seek(start)
    h, left = hashlib.sha256(), size
    while left:
        chunk = handle.read(min(READ_CHUNK, left))
        if not chunk:
            raise LayoutError(f"{getattr(handle, 'name', 'file')}: ends before its declared size")
        h.update(chunk)
        left -= len(chunk)
    return Digest("sha256", h.hexdigest())


async def _file_range(path: Path, start: int, size: int, on_chunk: Callable[[int], None]) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        handle.seek(start)
        left = size
        while left:
            chunk = await asyncio.to_thread(handle.read, min(READ_CHUNK, left))
            if not chunk:
                raise LayoutError(f"{path}: ends before its declared size")
            left -= len(chunk)
            on_chunk(len(chunk))
            yield chunk
    finally:
        handle.close()


@dataclass(frozen=True, slots=True)
class FileBlob:
    """A blob stored in a local file at [start, start + size)."""

    path: Path
    start: int
    size: int
    digest: Digest


async def push_file_blob(client: OciClient, repo: RemoteRepository, blob: FileBlob, progress: Progress) -> str:
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress(blob.digest.hex[:12], done, blob.size)

    result = await client.push_blob(repo, _file_range(blob.path, blob.start, blob.size, advance), digest=blob.digest,
                                    size=blob.size)
    progress(blob.digest.hex[:12], blob.size, blob.size)
    return result


# ---------------------------------------------------------------------------------------------- OCI layout: read


def _layout_blob(root: Path, digest: Digest) -> Path:
    return root / "blobs" / digest.algorithm / digest.hex


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise LayoutError(f"{path}: no such file ({what})") from None
    except ValueError as exc:
        raise LayoutError(f"{path}: not JSON ({exc})") from None


def select_entry(index: dict[str, Any], tag: str | None, where: str) -> dict[str, Any]:
    """The `index.json` entry named `tag` (its ref.name annotation); without a tag, the only entry."""
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    if tag is None:
        if len(entries) != 1:
            names = sorted(str((m.get("annotations") or {}).get(REF_NAME)) for m in entries)
            raise LayoutError(f"{where} holds {len(entries)} images ({', '.join(names)}): name one as oci:DIR:TAG")
        return entries[0]
    for entry in entries:
        if (entry.get("annotations") or {}).get(REF_NAME) == tag:
            return entry
    raise LayoutError(f"{where} has no image tagged {tag!r}")


async def push_oci_layout(client: OciClient, repo: RemoteRepository, location: Location, *, tag: str | None,
                          progress: Progress) -> dict[str, Any]:
    """Push the image of `location` (an index with its children, or one manifest) with every blob, byte for
    byte; tagged `tag`. Returns the top manifest's descriptor and the count of blobs pushed."""
    root = location.path
    if not (root / "oci-layout").is_file():
        raise LayoutError(f"{root} is not an OCI image layout (no oci-layout file)")
    entry = select_entry(_read_json(root / "index.json", "the layout's index"), location.tag, str(root))
    counts = {"uploaded": 0, "exists": 0, "mounted": 0}

    async def push_manifest(desc: dict[str, Any], reference: str | None) -> Digest:
        digest = Digest.parse(str(desc["digest"]))
        path = _layout_blob(root, digest)
        content = await asyncio.to_thread(path.read_bytes)  # a manifest: small (the client bounds it too)
        if Digest.of(content, digest.algorithm) != digest:
            raise LayoutError(f"{path} does not match its digest")
        doc = json.loads(content)
        media_type = str(desc.get("mediaType") or doc.get("mediaType") or mt.OCI_MANIFEST)
        if media_type in mt.INDEX_TYPES:
            for child in doc.get("manifests") or []:
                await push_manifest(child, None)
        else:
            for blob in [doc.get("config") or {}, *(doc.get("layers") or [])]:
                if not blob.get("digest"):
                    continue
                blob_digest = Digest.parse(str(blob["digest"]))
                blob_path = _layout_blob(root, blob_digest)
                if not blob_path.is_file():
                    raise LayoutError(f"{root}: blob {blob_digest} is missing")
                size = blob_path.stat().st_size
                result = await push_file_blob(client, repo, FileBlob(blob_path, 0, size, blob_digest), progress)
                counts[result] = counts.get(result, 0) + 1
        pushed = await client.push_manifest(repo, content, reference=reference, media_type=media_type)
        return pushed.digest

    top = await push_manifest(entry, tag)
    return {"digest": str(top), "media_type": entry.get("mediaType"), "blobs": counts}


# ---------------------------------------------------------------------------------------------- OCI layout: write


async def _download(client: OciClient, repo: RemoteRepository, digest: Digest, size: int | None, target: Path,
                    progress: Progress) -> None:
    """A blob into `target` (through a temporary file beside it, renamed once verified)."""
    if target.is_file() and (size is None or target.stat().st_size == size):
        return  # content-addressed: already there
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".part")
    done = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in client.pull_blob(repo, digest, size=size):
                await asyncio.to_thread(handle.write, chunk)
                done += len(chunk)
                progress(digest.hex[:12], done, size or done)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


async def pull_oci_layout(client: OciClient, repo: RemoteRepository, reference: Any, location: Location, *,
                          tag: str | None, progress: Progress) -> dict[str, Any]:
    """Write the image (an index with all its children, or one manifest) into the layout at `location`,
    created if needed; `index.json` gets (or replaces) the entry named `tag`."""
    root = location.path
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text(json.dumps(LAYOUT_FILE))
    blobs = 0

    async def fetch(ref: Any) -> tuple[str, Digest, int]:
        nonlocal blobs
        fetched = await client.get_manifest(repo, ref)
        desc = fetched.descriptor
        doc = fetched.json()
        if desc.media_type in mt.INDEX_TYPES:
            for child in doc.get("manifests") or []:
                await fetch(Digest.parse(str(child["digest"])))
        else:
            for blob in [doc.get("config") or {}, *(doc.get("layers") or [])]:
                if blob.get("digest"):
                    digest = Digest.parse(str(blob["digest"]))
                    await _download(client, repo, digest, int(blob.get("size", 0)) or None,
                                    _layout_blob(root, digest), progress)
                    blobs += 1
        target = _layout_blob(root, desc.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(target.write_bytes, fetched.content)
        return desc.media_type, desc.digest, desc.size

    media_type, digest, size = await fetch(reference)
    index_path = root / "index.json"
    index = _read_json(index_path, "the layout's index") if index_path.is_file() else {}
    if not isinstance(index, dict):
        raise LayoutError(f"{index_path}: not an image index")
    entries = [m for m in index.get("manifests") or []
               if tag is None or (m.get("annotations") or {}).get(REF_NAME) != tag]
    entry: dict[str, Any] = {"mediaType": media_type, "digest": str(digest), "size": size}
    if tag is not None:
        entry["annotations"] = {REF_NAME: tag}
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, **{k: v for k, v in index.items()
             if k not in ("schemaVersion", "mediaType", "manifests")}, "manifests": [*entries, entry]}
    tmp = index_path.with_name(".index.json.tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, index_path)
    return {"digest": str(digest), "media_type": media_type, "blobs": blobs}


# ---------------------------------------------------------------------------------------------- docker archive


def _archive_members(path: Path) -> dict[str, tarfile.TarInfo]:
    try:
        with tarfile.open(path, "r:") as archive:
            return {m.name.removeprefix("./"): m for m in archive.getmembers() if m.isfile()}
    except FileNotFoundError:
        raise LayoutError(f"{path}: no such file") from None
    except tarfile.TarError as exc:
        raise LayoutError(f"{path}: not an uncompressed tar ({exc})") from None


def _archive_image(path: Path, members: dict[str, tarfile.TarInfo], tag: str | None) -> dict[str, Any]:
    if "manifest.json" not in members:
        raise LayoutError(f"{path} is not a docker archive (no manifest.json)")
    with path.open("rb") as handle:
        handle.seek(members["manifest.json"].offset_data)
        images = json.loads(handle.read(members["manifest.json"].size))
    if not isinstance(images, list) or not images:
        raise LayoutError(f"{path}: manifest.json lists no image")
    if tag is None:
        if len(images) != 1:
            raise LayoutError(f"{path} holds {len(images)} images: name one as docker-archive:FILE:REPO:TAG")
        return dict(images[0])
    for image in images:
        if tag in (image.get("RepoTags") or []) or any(t.endswith(f":{tag}") for t in image.get("RepoTags") or []):
            return dict(image)
    raise LayoutError(f"{path} has no image tagged {tag!r}")


async def push_docker_archive(client: OciClient, repo: RemoteRepository, location: Location, *, tag: str | None,
                              progress: Progress) -> dict[str, Any]:
    """Push a `docker save` image as an OCI manifest: its config and its layer tars unchanged."""
    path = location.path
    members = await asyncio.to_thread(_archive_members, path)
    image = await asyncio.to_thread(_archive_image, path, members, location.tag)

    def member_blob(name: str) -> FileBlob:
        member = members.get(str(name).removeprefix("./"))
        if member is None:
            raise LayoutError(f"{path}: {name} is listed in manifest.json but missing")
        with path.open("rb") as handle:
            digest = _sha256_file(handle, member.offset_data, member.size)
        return FileBlob(path, member.offset_data, member.size, digest)

    config = await asyncio.to_thread(member_blob, str(image.get("Config")))
    layers = [await asyncio.to_thread(member_blob, str(name)) for name in image.get("Layers") or []]
    counts: dict[str, int] = {}
    for blob in (config, *layers):
        result = await push_file_blob(client, repo, blob, progress)
        counts[result] = counts.get(result, 0) + 1
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": str(config.digest), "size": config.size},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": str(b.digest), "size": b.size} for b in layers],
    }
    content = json.dumps(manifest, separators=(",", ":")).encode()
    pushed = await client.push_manifest(repo, content, reference=tag, media_type=mt.OCI_MANIFEST)
    return {"digest": str(pushed.digest), "media_type": mt.OCI_MANIFEST, "blobs": counts}


def _decompressor(media_type: str) -> Callable[[IO[bytes]], IO[bytes]] | None:
    """How to read a layer of `media_type` as a plain tar (None: it is one)."""
    if media_type.endswith(("gzip", "+gzip")):
        return lambda raw: gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if media_type.endswith("zstd"):
        return lambda raw: zstandard.ZstdDecompressor().stream_reader(raw)
    return None


def _plain_layer(raw: Path, media_type: str, work: Path) -> tuple[Path, Digest, int]:
    """The layer as an uncompressed tar file and its digest (the config's diff id)."""
    opener = _decompressor(media_type)
    if opener is None:
        with raw.open("rb") as handle:
            return raw, _sha256_file(handle, 0, raw.stat().st_size), raw.stat().st_size
    plain = work / (raw.name + ".tar")
    h, size = hashlib.sha256(), 0
    with raw.open("rb") as source, opener(source) as stream, plain.open("wb") as out:
        while chunk := stream.read(READ_CHUNK):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return plain, Digest("sha256", h.hexdigest()), size


async def pull_docker_archive(client: OciClient, repo: RemoteRepository, manifest: dict[str, Any], location: Location,
                              *, repo_tag: str, progress: Progress) -> dict[str, Any]:
    """Write one image manifest (not an index: pick a platform first) as a `docker save` tarball."""
    target = location.path
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".hanzo-archive-"))
    try:
        config_desc = manifest.get("config") or {}
        config_digest = Digest.parse(str(config_desc["digest"]))
        config_path = work / f"{config_digest.hex}.json"
        await _download(client, repo, config_digest, int(config_desc.get("size", 0)) or None, config_path, progress)
        layer_files: list[tuple[Path, Digest, int]] = []
        for layer in manifest.get("layers") or []:
            digest = Digest.parse(str(layer["digest"]))
            raw = work / f"raw-{digest.hex}"
            await _download(client, repo, digest, int(layer.get("size", 0)) or None, raw, progress)
            plain = await asyncio.to_thread(_plain_layer, raw, str(layer.get("mediaType", "")), work)
            if plain[0] != raw:
                raw.unlink()
            layer_files.append(plain)
        names = [f"{digest.hex}/layer.tar" for _, digest, _ in layer_files]
        index = [{"Config": config_path.name, "RepoTags": [repo_tag], "Layers": names}]

        def write() -> None:
            tmp = target.with_name(f".{target.name}.part")
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as archive:
                archive.add(config_path, arcname=config_path.name)
                for (file, _, _), name in zip(layer_files, names, strict=True):
                    archive.add(file, arcname=name)
                data = json.dumps(index).encode()
                info = tarfile.TarInfo("manifest.json")
                info.size = len(data)
                archive.addfile(info, fileobj=io.BytesIO(data))
            os.replace(tmp, target)

        await asyncio.to_thread(write)
        return {"config": str(config_digest), "layers": [str(d) for _, d, _ in layer_files], "repo_tag": repo_tag}
    finally:
        shutil.rmtree(work, ignore_errors=True)
