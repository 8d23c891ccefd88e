"""Which manifests are models, and what each of their layers holds: the product's media types, CNCF ModelPack,
KitOps ModelKit and plain ORAS pushes (file names in `org.opencontainers.image.title`), then the file's name
and magic bytes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

HANZO_MODEL: Final = "application/vnd.hanzo.model.v1"
HANZO_SAFETENSORS: Final = "application/vnd.hanzo.safetensors"
HANZO_GGUF: Final = "application/vnd.hanzo.gguf"
HANZO_PYTORCH: Final = "application/vnd.hanzo.pytorch"
HANZO_ONNX: Final = "application/vnd.hanzo.onnx"
HANZO_LORA: Final = "application/vnd.hanzo.lora"
JSON: Final = "application/json"

MODELPACK_MANIFEST: Final = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG: Final = "application/vnd.cncf.model.config.v1+json"
MODELPACK_LAYER_PREFIX: Final = "application/vnd.cncf.model."
KITOPS_MANIFEST: Final = "application/vnd.kitops.modelkit.manifest.v1+json"
KITOPS_CONFIG: Final = "application/vnd.kitops.modelkit.config.v1+json"
KITOPS_LAYER_PREFIX: Final = "application/vnd.kitops.modelkit."

TITLE: Final = "org.opencontainers.image.title"
CNCF_FILEPATH: Final = "org.cncf.model.filepath"
RELATION: Final = "vnd.hanzo.model.relation"
"""Manifest annotation: fine-tune, quantization or adapter (of its `subject`)."""
BASE_NAME: Final = "org.opencontainers.image.base.name"

MODEL_TYPES: Final = frozenset({HANZO_MODEL, MODELPACK_MANIFEST, MODELPACK_CONFIG, KITOPS_MANIFEST, KITOPS_CONFIG})
"""Artifact or config media types that make a manifest a model."""

MEDIA_FORMATS: Final[dict[str, str]] = {
    HANZO_SAFETENSORS: "safetensors",
    HANZO_GGUF: "gguf",
    HANZO_PYTORCH: "pytorch",
    HANZO_ONNX: "onnx",
    HANZO_LORA: "lora",
}
SUFFIX_FORMATS: Final[dict[str, str]] = {
    ".safetensors": "safetensors", ".gguf": "gguf", ".onnx": "onnx", ".pt": "pytorch", ".pth": "pytorch",
    ".ckpt": "pytorch", ".bin": "pytorch", ".json": "json",
}
WEIGHT_FORMATS: Final = frozenset({"safetensors", "gguf", "onnx", "pytorch", "lora"})
CONFIG_NAMES: Final = frozenset({"config.json", "generation_config.json"})
TOKENIZER_NAMES: Final = frozenset({"tokenizer.json"})
ADAPTER_CONFIG_NAMES: Final = frozenset({"adapter_config.json"})


def file_name(media_type: str, annotations: Mapping[str, str]) -> str:
    """The layer's file name (title, else ModelPack's filepath), "" when it has none."""
    return annotations.get(TITLE) or annotations.get(CNCF_FILEPATH) or ""


def suffix_format(name: str) -> str | None:
    lower = name.lower()
    for suffix, fmt in SUFFIX_FORMATS.items():
        if lower.endswith(suffix):
            return fmt
    return None


def declared_format(media_type: str, name: str) -> str | None:
    """The format a layer claims by media type, else by name: safetensors, gguf, onnx, pytorch, lora, json,
    tar (an archive we do not open) or None (unknown: sniffed from its bytes)."""
    if media_type in MEDIA_FORMATS:
        return MEDIA_FORMATS[media_type]
    base = name.rsplit("/", 1)[-1]
    if media_type.endswith("+json") or media_type == JSON:
        return "json"
    if media_type.startswith((MODELPACK_LAYER_PREFIX, KITOPS_LAYER_PREFIX)) and (
        media_type.endswith((".tar", "+gzip", "+zstd")) or ".tar" in media_type.rsplit(".v1", 1)[-1]
    ):
        return "tar"
    if media_type.endswith(("+gzip", "+zstd", ".tar.gzip")) and not suffix_format(base):
        return "tar"
    return suffix_format(base)


def sniff(head: bytes) -> str | None:
    """The format of a file from its first bytes (at least 9)."""
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pytorch"
    if len(head) >= 9 and int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] in (b"{", b" "):
        return "safetensors"
    if head[:1] == b"\x08":  # ModelProto field 1 (ir_version), varint
        return "onnx"
    return None


def is_model(artifact_type: str | None, config_media_type: str | None,
             layers: Sequence[tuple[str, Mapping[str, str]]]) -> bool:
    """A manifest is a model by its artifact type or config type, a model media type on a layer, or (a plain
    ORAS push) a weight file's name (`.bin` only beside a config.json)."""
    if artifact_type in MODEL_TYPES or config_media_type in MODEL_TYPES:
        return True
    names = [file_name(mt, a).rsplit("/", 1)[-1].lower() for mt, a in layers]
    for (media_type, _), name in zip(layers, names, strict=True):
        if media_type in MEDIA_FORMATS or media_type.startswith((MODELPACK_LAYER_PREFIX, KITOPS_LAYER_PREFIX)):
            return True
        fmt = suffix_format(name)
        if fmt in WEIGHT_FORMATS and (not name.endswith(".bin") or "config.json" in names):
            return True
    return False
