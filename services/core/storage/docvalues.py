"""The values and names a DocumentStore accepts, checked identically by every adapter.

Each rule exists because one backend could not store or compare the value faithfully, and a
document valid on one backend must be valid on all of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_INT64 = (-(2**63), 2**63 - 1)


def check_collection(name: str) -> str:
    # SQLite splices names into SQL (tables cannot be bound parameters): only identifiers get through.
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.lower().startswith("sqlite_"):
        raise ValueError(f"invalid collection name {name!r}: use [A-Za-z_][A-Za-z0-9_]*, not sqlite_*")
    return name


def check_field(field: str) -> str:
    if not isinstance(field, str) or not _FIELD.fullmatch(field):
        raise ValueError(f"invalid field name {field!r}: use [A-Za-z_][A-Za-z0-9_]*")
    return field


def check_text(value: Any) -> Any:
    # SQLite's json_extract cuts a string at U+0000, so where/order_by would see a different value:
    # refuse it in the fields those compare (top-level ones), on every backend.
    if isinstance(value, str) and "\0" in value:
        raise ValueError("top-level string values cannot contain U+0000")
    return value


def encode_value(value: Any, *, encode_bytes: Callable[[bytes], Any], in_list: bool = False) -> Any:
    """A document value validated and converted for a backend; `encode_bytes` says how bytes travel."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"integer {value} does not fit in 64 bits")
        return int(value)
    if isinstance(value, float):
        # MongoDB could store NaN, but SQLite's JSON cannot.
        if not math.isfinite(value):
            raise ValueError(f"non-finite float {value!r} is not storable")
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return encode_bytes(bytes(value))
    if isinstance(value, (list, tuple)):
        if in_list:
            raise ValueError("a list directly inside a list is not storable (FerretDB refuses it)")
        return [encode_value(v, encode_bytes=encode_bytes, in_list=True) for v in value]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            # "$" keys would be ambiguous with operators and markers; "." keys cannot be addressed by a path.
            if not isinstance(key, str) or not key or key.startswith("$") or "." in key or "\0" in key:
                raise ValueError(f"invalid document key {key!r}")
            out[key] = encode_value(item, encode_bytes=encode_bytes)
        return out
    raise TypeError(f"unsupported document value of type {type(value).__name__}")
