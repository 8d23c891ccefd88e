"""safetensors headers: `u64 LE N`, then N bytes of JSON (tensor name -> dtype, shape, data_offsets; optional
`__metadata__`), then the data buffer. Only the first 8 + N bytes are read."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

from services.core.models.source import Cursor, HeaderError, RangeSource

MAX_HEADER: Final = 100_000_000
"""The reference implementation's limit on N."""

DTYPE_BITS: Final[dict[str, int]] = {
    "BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "F64": 64, "I64": 64, "U64": 64, "C64": 64, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    tensors: int
    parameters: int
    dtypes: tuple[str, ...]
    metadata: dict[str, str]
    header_size: int
    problems: tuple[str, ...] = field(default=())
    """What is wrong with an otherwise readable header (holes, sizes that do not add up)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise HeaderError(f"duplicate key {key[:100]!r} in the safetensors header")
        out[key] = value
    return out


async def read_header(source: RangeSource) -> SafetensorsHeader:
    """Parse and validate the header. HeaderError when it cannot be read at all."""
    cursor = Cursor(source, budget=MAX_HEADER + 8)
    if source.size < 8:
        raise HeaderError(f"not safetensors: {source.size} bytes, shorter than the 8-byte header length")
    n = await cursor.u64()
    if n > MAX_HEADER:
        raise HeaderError(f"safetensors header length {n} is above the limit of {MAX_HEADER}")
    if 8 + n > source.size:
        raise HeaderError(f"safetensors header length {n} runs past the end of the {source.size}-byte file")
    raw = await cursor.take(n)
    text = raw.lstrip()
    if not text.startswith(b"{"):
        raise HeaderError("not safetensors: the header is not a JSON object")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HeaderError(f"invalid safetensors header JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise HeaderError("the safetensors header is not a JSON object")
    return parse_header(doc, header_size=n, file_size=source.size)


def parse_header(doc: dict[str, Any], *, header_size: int, file_size: int) -> SafetensorsHeader:
    """The summary of a decoded header, checked against the file's size (pure)."""
    problems: list[str] = []
    metadata_raw = doc.pop("__metadata__", None)
    metadata: dict[str, str] = {}
    if metadata_raw is not None:
        if isinstance(metadata_raw, dict) and all(isinstance(v, str) for v in metadata_raw.values()):
            metadata = {str(k)[:200]: v[:2000] for k, v in list(metadata_raw.items())[:100]}
        else:
            problems.append("__metadata__ must map strings to strings")
    parameters = 0
    dtypes: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    for name, info in doc.items():
        if not isinstance(info, dict):
            raise HeaderError(f"tensor {name[:100]!r}: expected an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise HeaderError(f"tensor {name[:100]!r}: unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise HeaderError(f"tensor {name[:100]!r}: shape must be a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
            raise HeaderError(f"tensor {name[:100]!r}: data_offsets must be [begin, end)")
        elements = math.prod(shape)
        bits = elements * DTYPE_BITS[dtype]
        if bits % 8 or offsets[1] - offsets[0] != bits // 8:
            problems.append(f"tensor {name[:100]!r}: {offsets[1] - offsets[0]} bytes for {elements} {dtype} values")
        parameters += elements
        dtypes.add(dtype)
        spans.append((offsets[0], offsets[1], name))
    buffer = file_size - 8 - header_size
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            problems.append(f"tensor {name[:100]!r} starts at {begin}, not at {end}: the buffer has a "
                            f"{'hole' if begin > end else 'overlap'}")
            break
        end = stop
    if not problems and end != buffer:
        problems.append(f"the tensors cover {end} bytes of a {buffer}-byte data buffer")
    return SafetensorsHeader(len(spans), parameters, tuple(sorted(dtypes)), metadata, header_size,
                             tuple(problems))
