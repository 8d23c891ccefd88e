"""ONNX model headers from the protobuf wire format (onnx.proto `ModelProto`), without the onnx package and
without reading weights: the graph is walked field by field, each initializer's dims read and its data
skipped by length, so a multi-GB model costs a few reads per tensor."""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field
from typing import Final

from services.core.models.source import Cursor, HeaderError, RangeSource

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
MAX_TEXT: Final = 4096
MAX_IO: Final = 256
"""Inputs/outputs kept in the view."""

ELEM_TYPES: Final[dict[int, str]] = {
    1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING", 9: "BOOL",
    10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16",
    17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4",
    23: "FLOAT4E2M1", 24: "FLOAT8E8M0", 25: "UINT2", 26: "INT2",
}
"""onnx.proto `TensorProto.DataType`."""


@dataclass(frozen=True, slots=True)
class OnnxValue:
    name: str
    elem_type: str | None
    shape: tuple[int | str, ...] | None


@dataclass(frozen=True, slots=True)
class OnnxHeader:
    ir_version: int | None
    producer_name: str
    producer_version: str
    domain: str
    model_version: int | None
    opsets: dict[str, int]
    inputs: tuple[OnnxValue, ...]
    outputs: tuple[OnnxValue, ...]
    nodes: int
    tensors: int
    parameters: int
    dtypes: tuple[str, ...]
    metadata: dict[str, str]
    external_data: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())


class _Fields:
    """Iterates the fields of one message between the cursor and `end`."""

    def __init__(self, cursor: Cursor, end: int) -> None:
        self.cursor, self.end = cursor, end

    async def next(self) -> tuple[int, int] | None:
        c = self.cursor
        if c.pos >= self.end:
            if c.pos > self.end:
                raise HeaderError(f"a protobuf field runs past its message at offset {c.pos}")
            return None
        key = await c.varint()
        number, wire = key >> 3, key & 7
        if number == 0 or wire not in (_VARINT, _I64, _LEN, _I32):
            raise HeaderError(f"not ONNX: invalid protobuf field key {key} at offset {c.pos}")
        return number, wire

    async def length(self) -> int:
        n = await self.cursor.varint()
        if n > self.end - self.cursor.pos:
            raise HeaderError(f"a protobuf field of {n} bytes runs past its message at offset {self.cursor.pos}")
        return n

    async def skip(self, wire: int) -> None:
        c = self.cursor
        if wire == _VARINT:
            await c.varint()
        elif wire == _I64:
            c.skip(8)
        elif wire == _I32:
            c.skip(4)
        else:
            c.skip(await self.length())

    async def text(self) -> str:
        n = await self.length()
        if n > MAX_TEXT:
            self.cursor.skip(n)
            return ""
        return (await self.cursor.take(n)).decode("utf-8", errors="replace")

    async def sub(self) -> _Fields:
        n = await self.length()
        return _Fields(self.cursor, self.cursor.pos + n)

    async def ints(self, wire: int) -> list[int]:
        """A repeated int64 field: one value, or a packed run."""
        if wire == _VARINT:
            return [await self.cursor.varint()]
        if wire != _LEN:
            raise HeaderError("an integer field has the wrong wire type")
        end = self.cursor.pos + await self.length()
        out = []
        while self.cursor.pos < end:
            out.append(await self.cursor.varint())
        return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


async def _string_entry(fields: _Fields) -> tuple[str, str]:
    key = value = ""
    while (f := await fields.next()) is not None:
        if f == (1, _LEN):
            key = await fields.text()
        elif f == (2, _LEN):
            value = await fields.text()
        else:
            await fields.skip(f[1])
    return key, value


async def _opset(fields: _Fields) -> tuple[str, int]:
    domain, version = "", 0
    while (f := await fields.next()) is not None:
        if f == (1, _LEN):
            domain = await fields.text()
        elif f == (2, _VARINT):
            version = _signed(await fields.cursor.varint())
        else:
            await fields.skip(f[1])
    return domain or "ai.onnx", version


async def _shape(fields: _Fields) -> tuple[int | str, ...]:
    dims: list[int | str] = []
    while (f := await fields.next()) is not None:
        if f == (1, _LEN):  # Dimension
            dim = await fields.sub()
            value: int | str = "?"
            while (g := await dim.next()) is not None:
                if g == (1, _VARINT):
                    value = _signed(await dim.cursor.varint())
                elif g == (2, _LEN):
                    value = await dim.text()
                else:
                    await dim.skip(g[1])
            dims.append(value)
        else:
            await fields.skip(f[1])
    return tuple(dims)


async def _value_info(fields: _Fields) -> OnnxValue:
    name, elem, shape = "", None, None
    while (f := await fields.next()) is not None:
        if f == (1, _LEN):
            name = await fields.text()
        elif f == (2, _LEN):  # TypeProto
            type_proto = await fields.sub()
            while (g := await type_proto.next()) is not None:
                if g == (1, _LEN):  # tensor_type
                    tensor = await type_proto.sub()
                    while (h := await tensor.next()) is not None:
                        if h == (1, _VARINT):
                            code = await tensor.cursor.varint()
                            elem = ELEM_TYPES.get(code, f"type{code}")
                        elif h == (2, _LEN):
                            shape = await _shape(await tensor.sub())
                        else:
                            await tensor.skip(h[1])
                else:
                    await type_proto.skip(g[1])
        else:
            await fields.skip(f[1])
    return OnnxValue(name, elem, shape)


@dataclass
class _Tensor:
    name: str = ""
    dims: list[int] = field(default_factory=list)
    dtype: str | None = None
    external: str | None = None


async def _tensor(fields: _Fields) -> _Tensor:
    t = _Tensor()
    while (f := await fields.next()) is not None:
        number, wire = f
        if number == 1:
            t.dims += [_signed(v) for v in await fields.ints(wire)]
        elif (number, wire) == (2, _VARINT):
            code = await fields.cursor.varint()
            t.dtype = ELEM_TYPES.get(code, f"type{code}")
        elif (number, wire) == (8, _LEN):
            t.name = await fields.text()
        elif (number, wire) == (13, _LEN):
            key, value = await _string_entry(await fields.sub())
            if key == "location":
                t.external = value
        else:
            await fields.skip(wire)  # raw_data and the typed data fields: skipped by length
    return t


async def read_header(source: RangeSource) -> OnnxHeader:
    """Parse a ModelProto's header fields and its graph's inputs, outputs and initializer shapes."""
    cursor = Cursor(source)
    top = _Fields(cursor, source.size)
    ir = model_version = None
    producer = producer_version = domain = ""
    opsets: dict[str, int] = {}
    metadata: dict[str, str] = {}
    inputs: list[OnnxValue] = []
    outputs: list[OnnxValue] = []
    nodes = tensors = parameters = 0
    dtypes: set[str] = set()
    external: set[str] = set()
    problems: list[str] = []
    graph_seen = False
    while (f := await top.next()) is not None:
        number, wire = f
        if (number, wire) == (1, _VARINT):
            ir = _signed(await cursor.varint())
        elif (number, wire) == (2, _LEN):
            producer = await top.text()
        elif (number, wire) == (3, _LEN):
            producer_version = await top.text()
        elif (number, wire) == (4, _LEN):
            domain = await top.text()
        elif (number, wire) == (5, _VARINT):
            model_version = _signed(await cursor.varint())
        elif (number, wire) == (8, _LEN):
            name, version = await _opset(await top.sub())
            opsets[name] = version
        elif (number, wire) == (14, _LEN):
            key, value = await _string_entry(await top.sub())
            if len(metadata) < 100:
                metadata[key[:200]] = value[:2000]
        elif (number, wire) == (7, _LEN):
            graph_seen = True
            graph = await top.sub()
            initializer_names: set[str] = set()
            while (g := await graph.next()) is not None:
                gnum, gwire = g
                if (gnum, gwire) == (1, _LEN):
                    nodes += 1
                    await graph.skip(gwire)
                elif (gnum, gwire) in ((5, _LEN), (15, _LEN)):
                    sub = await graph.sub()
                    if gnum == 15:  # SparseTensorProto: its values tensor holds the parameters
                        t = _Tensor()
                        while (h := await sub.next()) is not None:
                            if h == (1, _LEN):
                                t = await _tensor(await sub.sub())
                            else:
                                await sub.skip(h[1])
                    else:
                        t = await _tensor(sub)
                    tensors += 1
                    parameters += math.prod(max(d, 0) for d in t.dims)
                    initializer_names.add(t.name)
                    if t.dtype:
                        dtypes.add(t.dtype)
                    if t.external is not None:
                        external.add(t.external)
                        if t.external.startswith("/") or ".." in posixpath.normpath(t.external).split("/"):
                            problems.append(f"tensor {t.name[:100]!r} has external data outside the model "
                                            f"directory: {t.external[:200]!r}")
                elif (gnum, gwire) in ((11, _LEN), (12, _LEN)):
                    info = await _value_info(await graph.sub())
                    (inputs if gnum == 11 else outputs).append(info)
                else:
                    await graph.skip(gwire)
            # Since IR 4 initializers may be listed as inputs too; they are weights, not inputs.
            inputs = [v for v in inputs if v.name not in initializer_names]
        else:
            await top.skip(wire)
    if not graph_seen:
        raise HeaderError("not ONNX: the model has no graph")
    if ir is None:
        problems.append("ir_version is missing")
    return OnnxHeader(
        ir_version=ir, producer_name=producer, producer_version=producer_version, domain=domain,
        model_version=model_version, opsets=opsets, inputs=tuple(inputs[:MAX_IO]), outputs=tuple(outputs[:MAX_IO]),
        nodes=nodes, tensors=tensors, parameters=parameters, dtypes=tuple(sorted(dtypes)), metadata=metadata,
        external_data=tuple(sorted(external)), problems=tuple(problems),
    )
