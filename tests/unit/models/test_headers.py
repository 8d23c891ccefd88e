"""Header parsers against real small models written by the formats' own packages; parameter counts come from
the arrays that went in, never from our parsers; weights are never read."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from services.core.models import gguf, onnx, safetensors
from services.core.models.source import BytesSource, HeaderError
from tests.unit.models import makers


class CountingSource(BytesSource):
    reads: list[tuple[int, int]]

    def __init__(self, data: bytes) -> None:
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "reads", [])

    async def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.data[offset : offset + length]

    @property
    def bytes_read(self) -> int:
        return sum(min(length, len(self.data) - offset) for offset, length in self.reads)


def source_of(path: Path) -> CountingSource:
    return CountingSource(path.read_bytes())


async def test_safetensors_counts_match_the_arrays(tmp_path: Path) -> None:
    made = makers.safetensors_model(tmp_path / "m.safetensors", metadata={"format": "pt"})
    header = await safetensors.read_header(source_of(made.path))
    assert (header.parameters, header.tensors, header.dtypes) == (made.parameters, made.tensors, made.dtypes)
    assert header.metadata == {"format": "pt"}
    assert header.problems == ()


async def test_safetensors_reads_only_the_header(tmp_path: Path) -> None:
    big = {"w": np.zeros((1024, 1024), dtype=np.float32)}  # 4 MiB of weights
    made = makers.safetensors_model(tmp_path / "big.safetensors", big)
    src = source_of(made.path)
    header = await safetensors.read_header(src)
    assert header.parameters == 1024 * 1024
    assert src.bytes_read < 64 * 1024 < made.path.stat().st_size


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01\x02", "shorter"),
        (struct.pack("<Q", 10**9) + b"{}", "limit"),
        (struct.pack("<Q", 100) + b"{}", "past the end"),
        (struct.pack("<Q", 5) + b"[1,2]", "not a JSON object"),
        (struct.pack("<Q", 9) + b"{not json", "invalid"),
        (struct.pack("<Q", 2) + b"{}" + b"", None),
    ],
)
async def test_safetensors_invalid_headers_are_header_errors(data: bytes, why: str | None) -> None:
    if why is None:
        assert (await safetensors.read_header(BytesSource(data))).tensors == 0
        return
    with pytest.raises(HeaderError, match=why):
        await safetensors.read_header(BytesSource(data))


async def test_safetensors_duplicate_keys_and_holes() -> None:
    doc = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    with pytest.raises(HeaderError, match="duplicate"):
        await safetensors.read_header(BytesSource(struct.pack("<Q", len(doc)) + doc + bytes(8)))
    hole = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}).encode()
    header = await safetensors.read_header(BytesSource(struct.pack("<Q", len(hole)) + hole + bytes(8)))
    assert any("hole" in p for p in header.problems)
    short = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode()
    header = await safetensors.read_header(BytesSource(struct.pack("<Q", len(short)) + short + bytes(4)))
    assert any("4 bytes for 2 F32" in p for p in header.problems)


async def test_gguf_counts_and_metadata(tmp_path: Path) -> None:
    made = makers.gguf_model(tmp_path / "m.gguf", file_type=1, context=2048)
    header = await gguf.read_header(source_of(made.path))
    assert (header.parameters, header.tensors, header.dtypes) == (made.parameters, made.tensors, made.dtypes)
    assert header.architecture == "llama"
    assert header.quantization == "F16"
    assert header.context_length == 2048
    assert header.metadata["general.name"] == "tiny-test-llama"
    assert header.has_chat_template
    assert "tokenizer.ggml.tokens" not in header.metadata
    assert header.problems == ()


def test_gguf_type_tables_match_the_gguf_package() -> None:
    import gguf as gguf_package

    for member in gguf_package.GGMLQuantizationType:
        if member.value in gguf.GGML_TYPES:
            assert gguf.GGML_TYPES[member.value] == member.name
    for member in gguf_package.LlamaFileType:  # type: ignore[assignment]
        if member.value in gguf.FILE_TYPES:
            assert member.name.endswith(gguf.FILE_TYPES[member.value]), (member, gguf.FILE_TYPES[member.value])


async def test_gguf_quantization_is_inferred_from_tensor_types(tmp_path: Path) -> None:
    import gguf as gguf_package

    writer = gguf_package.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    q8 = gguf_package.quants.quantize(np.ones((32, 64), dtype=np.float32), gguf_package.GGMLQuantizationType.Q8_0)
    writer.add_tensor("w", q8, raw_shape=q8.shape, raw_dtype=gguf_package.GGMLQuantizationType.Q8_0)
    writer.add_tensor("n", np.ones((64,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = await gguf.read_header(source_of(tmp_path / "q.gguf"))
    assert header.quantization == "Q8_0"
    assert header.parameters == 32 * 64 + 64


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"GGML" + bytes(20), "magic"),
        (b"GGUF" + struct.pack("<I", 1) + bytes(16), "version 1"),
        (b"GGUF" + struct.pack("<IQQ", 3, 10**12, 0), "cannot fit"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 10**9) + bytes(16), "truncated|longer|fit"),
    ],
)
async def test_gguf_invalid_headers_are_header_errors(data: bytes, why: str) -> None:
    with pytest.raises(HeaderError, match=why):
        await gguf.read_header(BytesSource(data))


async def test_onnx_header_matches_the_graph(tmp_path: Path) -> None:
    made = makers.onnx_model(tmp_path / "m.onnx")
    header = await onnx.read_header(source_of(made.path))
    assert (header.parameters, header.tensors, header.dtypes) == (made.parameters, made.tensors, made.dtypes)
    assert header.opsets == {"ai.onnx": 17}
    assert (header.ir_version, header.producer_name, header.producer_version) == (8, "hanzo-tests", "1.0")
    assert [(v.name, v.elem_type, v.shape) for v in header.inputs] == [("x", "FLOAT", ("batch", 16))]
    assert [(v.name, v.elem_type, v.shape) for v in header.outputs] == [("y", "FLOAT", ("batch", 4))]
    assert header.nodes == 4
    assert header.metadata == {"author": "tests"}


def test_onnx_type_table_matches_the_onnx_package() -> None:
    from onnx import TensorProto

    for code, name in onnx.ELEM_TYPES.items():
        assert TensorProto.DataType.Name(code) == name


async def test_onnx_skips_weights(tmp_path: Path) -> None:
    import onnx as onnx_package
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.zeros((512, 512), dtype=np.float32), f"w{i}") for i in range(4)]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=weights)
    onnx_package.save(helper.make_model(graph), str(tmp_path / "w.onnx"))
    src = source_of(tmp_path / "w.onnx")
    header = await onnx.read_header(src)
    assert header.parameters == 4 * 512 * 512
    assert src.bytes_read < 200 * 1024 < len(src.data)


async def test_onnx_external_data_outside_the_model_is_a_problem() -> None:
    from onnx import TensorProto, helper

    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 2])
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    graph = helper.make_graph([], "g", [], [], initializer=[t])
    header = await onnx.read_header(BytesSource(helper.make_model(graph).SerializeToString()))
    assert header.external_data == ("../../etc/passwd",)
    assert any("outside the model directory" in p for p in header.problems)


@pytest.mark.parametrize("data", [b"", b"\x08", b"\x0f\x01", b"\x3a\xff\xff\xff\xff\x0f", b"hello world"])
async def test_onnx_garbage_is_a_header_error(data: bytes) -> None:
    with pytest.raises(HeaderError):
        await onnx.read_header(BytesSource(data))
