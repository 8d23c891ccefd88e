"""Test content built locally: OCI image layouts (multi-layer image, multi-arch index) and a model-like artifact."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

MODEL_ARTIFACT_TYPE = "application/vnd.hanzo.model.v1"
MODEL_FILES = {
    "model.safetensors": "application/vnd.hanzo.model.weights.v1+safetensors",
    "config.json": "application/vnd.hanzo.model.config.v1+json",
    "tokenizer.json": "application/vnd.hanzo.model.tokenizer.v1+json",
}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def tar_gz_layer(files: Mapping[str, bytes]) -> tuple[bytes, str]:
    """A deterministic gzip tar of `files` (path -> content): (compressed bytes, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for path in sorted(files):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d + "/")
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                    tar.addfile(info)
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(files[path]), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(files[path]))
    uncompressed = raw.getvalue()
    compressed = gzip.compress(uncompressed, compresslevel=6, mtime=0)
    return compressed, digest_of(uncompressed)


@dataclass
class Image:
    """One image manifest with its config and layers, all as exact bytes."""

    manifest: bytes
    config: bytes
    layers: list[bytes]
    platform: dict[str, str]

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def blobs(self) -> dict[str, bytes]:
        return {digest_of(b): b for b in [self.config, *self.layers]}


@dataclass
class Layout:
    """An OCI image layout directory and what it holds: the top manifest (image or index) under `ref`."""

    path: Path
    ref: str
    top: bytes
    top_media_type: str
    images: list[Image] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return digest_of(self.top)

    @property
    def blobs(self) -> dict[str, bytes]:
        """Every non-manifest blob (configs and layers) of every image."""
        out: dict[str, bytes] = {}
        for image in self.images:
            out.update(image.blobs)
        return out

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.path}:{self.ref}"


def build_image(layer_files: list[Mapping[str, bytes]], *, arch: str = "amd64", os_name: str = "linux") -> Image:
    """An OCI image: one gzip tar layer per entry of `layer_files`, a config listing their diff_ids."""
    layers, diff_ids = [], []
    for files in layer_files:
        blob, diff_id = tar_gz_layer(files)
        layers.append(blob)
        diff_ids.append(diff_id)
    config = canonical_json(
        {
            "architecture": arch,
            "os": os_name,
            "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/hello"], "Labels": {"test": "hanzo"}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(layers))],
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER_GZIP, layer) for layer in layers],
        }
    )
    return Image(manifest, config, layers, {"architecture": arch, "os": os_name})


def write_layout(path: Path, *, ref: str, top: bytes, top_media_type: str, blobs: Mapping[str, bytes]) -> None:
    """Write an OCI image layout: oci-layout, index.json (one entry, tagged `ref`), blobs/sha256/*."""
    (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for data in [*blobs.values(), top]:
        (path / "blobs" / "sha256" / digest_of(data).removeprefix("sha256:")).write_bytes(data)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(top_media_type, top, annotations={REF_NAME: ref})],
    }
    (path / "index.json").write_bytes(canonical_json(index))


def multi_layer_image(path: Path, *, ref: str = "v1", nonce: str | None = None) -> Layout:
    """A 3-layer image (different files in each layer) as an OCI layout at `path`."""
    nonce = nonce or os.urandom(8).hex()
    image = build_image(
        [
            {"etc/os-release": b'NAME="hanzo-test"\n', "etc/nonce": nonce.encode()},
            {"usr/bin/hello": b"#!/bin/sh\necho hello\n" + os.urandom(4096)},
            {"app/data.bin": os.urandom(64 * 1024), "app/README": b"layer three\n"},
        ]
    )
    write_layout(path, ref=ref, top=image.manifest, top_media_type=OCI_MANIFEST, blobs=image.blobs)
    return Layout(path, ref, image.manifest, OCI_MANIFEST, [image])


def multi_arch_index(path: Path, *, ref: str = "v1") -> Layout:
    """An OCI index of a linux/amd64 and a linux/arm64 image (two layers each) as an OCI layout."""
    nonce = os.urandom(8).hex().encode()
    images = [
        build_image(
            [
                {"etc/arch": arch.encode(), "etc/nonce": nonce},
                {f"usr/lib/{arch}/libhello.so": os.urandom(8192)},
            ],
            arch=arch,
        )
        for arch in ("amd64", "arm64")
    ]
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(OCI_MANIFEST, image.manifest, platform=image.platform) for image in images],
        }
    )
    blobs: dict[str, bytes] = {}
    for image in images:
        blobs.update(image.blobs)
        blobs[image.digest] = image.manifest
    write_layout(path, ref=ref, top=index, top_media_type=OCI_INDEX, blobs=blobs)
    return Layout(path, ref, index, OCI_INDEX, images)


def read_layout(path: Path, ref: str | None = None) -> tuple[bytes, str]:
    """The top manifest bytes of a layout and its media type: the entry tagged `ref`, or the only one."""
    index = json.loads((path / "index.json").read_bytes())
    entries = index["manifests"]
    if ref is not None:
        entries = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) == ref]
    assert len(entries) == 1, f"expected one manifest for {ref!r} in {path}/index.json: {index}"
    entry = entries[0]
    data = layout_blob(path, entry["digest"])
    return data, entry["mediaType"]


def layout_blob(path: Path, digest: str) -> bytes:
    algorithm, _, hex_ = digest.partition(":")
    data = (path / "blobs" / algorithm / hex_).read_bytes()
    assert digest_of(data) == digest, f"{path}: blob {digest} has wrong content"
    return data


def safetensors_bytes() -> bytes:
    """A valid safetensors file: one F32 tensor of shape [2, 2] (16 bytes of data)."""
    header = json.dumps(
        {
            "__metadata__": {"format": "pt"},
            "weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        },
        separators=(",", ":"),
    ).encode()
    header += b" " * (-len(header) % 8)  # spaces pad the header to an 8-byte boundary, as the reference does
    data = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    return struct.pack("<Q", len(header)) + header + data


def parse_safetensors(data: bytes) -> dict[str, Any]:
    (n,) = struct.unpack("<Q", data[:8])
    header: dict[str, Any] = json.loads(data[8 : 8 + n])
    return header


def model_artifact(path: Path) -> dict[str, bytes]:
    """A model-like artifact directory: model.safetensors, config.json, tokenizer.json. Returns name -> bytes."""
    path.mkdir(parents=True, exist_ok=True)
    files = {
        "model.safetensors": safetensors_bytes(),
        "config.json": json.dumps(
            {"architectures": ["TinyModel"], "hidden_size": 2, "model_type": "tiny", "nonce": os.urandom(4).hex()},
            indent=2,
        ).encode(),
        "tokenizer.json": json.dumps(
            {"version": "1.0", "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "hello": 1}, "unk_token": "<unk>"}}
        ).encode(),
    }
    for name, data in files.items():
        (path / name).write_bytes(data)
    return files
