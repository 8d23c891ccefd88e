"""GGUF headers (ggml's `docs/gguf.md`): magic, version, counts, key-values, tensor infos. Read sequentially up
to the tensor data; every count and length is bounded by the file's size; arrays we do not keep are skipped."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from services.core.models.source import Cursor, HeaderError, RangeSource

MAGIC: Final = b"GGUF"
MAX_KEY: Final = 65535
MAX_DIMS: Final = 4
KEPT_STRING: Final = 2000
"""Characters of a kept string value (a chat template is untrusted text: we keep only that it exists)."""

# KV value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STRING, _ARRAY, _U64, _I64, _F64 = range(13)
_SCALAR: Final[dict[int, str]] = {_U8: "B", _I8: "b", _U16: "H", _I16: "h", _U32: "I", _I32: "i", _F32: "f",
                                  _BOOL: "?", _U64: "Q", _I64: "q", _F64: "d"}

GGML_TYPES: Final[dict[int, str]] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K",
    12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}
"""ggml tensor types (ggml.h `enum ggml_type`)."""

FILE_TYPES: Final[dict[int, str]] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS",
    20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}
"""`general.file_type` (llama.cpp `enum llama_ftype`)."""

KEPT_KEYS: Final = frozenset({
    "general.architecture", "general.name", "general.version", "general.organization", "general.basename",
    "general.finetune", "general.size_label", "general.license", "general.quantization_version",
    "general.file_type", "general.alignment", "general.type", "general.base_model.count",
    "general.base_model.0.name", "general.base_model.0.organization", "general.base_model.0.repo_url",
    "tokenizer.ggml.model", "adapter.type", "adapter.lora.alpha",
})


@dataclass(frozen=True, slots=True)
class GgufHeader:
    version: int
    architecture: str | None
    metadata: dict[str, str | int | float | bool]
    tensors: int
    parameters: int
    dtypes: tuple[str, ...]
    quantization: str | None
    context_length: int | None
    has_chat_template: bool = False
    problems: tuple[str, ...] = field(default=())


async def _string(cursor: Cursor, *, limit: int | None = None, keep: bool = True) -> str:
    n = await cursor.u64()
    if limit is not None and n > limit:
        raise HeaderError(f"string of {n} bytes at offset {cursor.pos} is longer than {limit}")
    if not keep:
        cursor.skip(n)
        return ""
    return (await cursor.take(n)).decode("utf-8", errors="replace")


async def _value(cursor: Cursor, kind: int, *, keep: bool) -> str | int | float | bool | None:
    if kind in _SCALAR:
        value = (await cursor.unpack(_SCALAR[kind]))[0]
        return value if keep else None
    if kind == _STRING:
        text = await _string(cursor, keep=keep)
        return text[:KEPT_STRING] if keep else None
    if kind == _ARRAY:
        item, n = await cursor.u32(), await cursor.u64()
        if item in _SCALAR:
            size = {"B": 1, "b": 1, "H": 2, "h": 2, "I": 4, "i": 4, "f": 4, "?": 1, "Q": 8, "q": 8, "d": 8}
            total = n * size[_SCALAR[item]]
            if total > cursor.remaining:
                raise HeaderError(f"array of {n} items runs past the end of the file")
            cursor.skip(total)
        elif item in (_STRING, _ARRAY):
            if n > cursor.remaining // 8:
                raise HeaderError(f"array of {n} items cannot fit in the file")
            for _ in range(n):
                await _value(cursor, item, keep=False)
        else:
            raise HeaderError(f"unknown GGUF array item type {item}")
        return None
    raise HeaderError(f"unknown GGUF value type {kind} at offset {cursor.pos}")


async def read_header(source: RangeSource) -> GgufHeader:
    """Parse the header and tensor infos. HeaderError when they cannot be read."""
    cursor = Cursor(source)
    if await cursor.take(4) != MAGIC:
        raise HeaderError("not GGUF: bad magic")
    version = await cursor.u32()
    if version & 0xFFFF == 0 and version >> 24 in (2, 3):  # written big-endian
        cursor.order, version = ">", version >> 24
    if version == 1:
        raise HeaderError("GGUF version 1 is not supported (ggml rejects it)")
    if version not in (2, 3):
        raise HeaderError(f"unknown GGUF version {version}")
    tensor_count, kv_count = await cursor.u64(), await cursor.u64()
    if kv_count > cursor.remaining // 13 or tensor_count > cursor.remaining // 24:
        raise HeaderError(f"{kv_count} key-values and {tensor_count} tensors cannot fit in the file")
    metadata: dict[str, str | int | float | bool] = {}
    chat_template = False
    for _ in range(kv_count):
        key = await _string(cursor, limit=MAX_KEY)
        kind = await cursor.u32()
        arch = metadata.get("general.architecture")
        keep = key in KEPT_KEYS or (isinstance(arch, str) and key.startswith(f"{arch}."))
        value = await _value(cursor, kind, keep=keep)
        if key == "tokenizer.chat_template":
            chat_template = True
        if keep and value is not None:
            metadata[key] = value
    problems: list[str] = []
    parameters = 0
    by_type: dict[str, int] = {}
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        problems.append(f"general.alignment {alignment!r} is not a power of two")
        alignment = 32
    for _ in range(tensor_count):
        name = await _string(cursor, limit=MAX_KEY)
        n_dims = await cursor.u32()
        if n_dims > MAX_DIMS:
            raise HeaderError(f"tensor {name[:64]!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        dims = [await cursor.u64() for _ in range(n_dims)]
        ggml_type, offset = await cursor.u32(), await cursor.u64()
        type_name = GGML_TYPES.get(ggml_type, f"type{ggml_type}")
        elements = math.prod(dims)
        if offset % alignment:
            problems.append(f"tensor {name[:64]!r} is at offset {offset}, not aligned to {alignment}")
        if offset >= source.size:
            problems.append(f"tensor {name[:64]!r} starts past the end of the file")
        parameters += elements
        by_type[type_name] = by_type.get(type_name, 0) + elements
    arch = metadata.get("general.architecture")
    architecture = arch if isinstance(arch, str) and arch else None
    if architecture is None:
        problems.append("general.architecture is missing")
    file_type = metadata.get("general.file_type")
    quantization = FILE_TYPES.get(file_type) if isinstance(file_type, int) else None
    if quantization is None and by_type:  # infer: the type holding the most weights (besides F32 norms)
        pool = {k: v for k, v in by_type.items() if k != "F32"} or by_type
        quantization = max(pool, key=lambda k: pool[k])
    context = metadata.get(f"{architecture}.context_length") if architecture else None
    return GgufHeader(
        version=version, architecture=architecture, metadata=metadata, tensors=tensor_count, parameters=parameters,
        dtypes=tuple(sorted(by_type)), quantization=quantization,
        context_length=context if isinstance(context, int) and not isinstance(context, bool) else None,
        has_chat_template=chat_template, problems=tuple(problems),
    )
