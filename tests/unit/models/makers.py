"""Small real models made with the formats' own packages (safetensors, gguf, onnx), with parameter counts
computed independently from the arrays that went in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Made:
    path: Path
    parameters: int
    tensors: int
    dtypes: tuple[str, ...]


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)


def llama_like_tensors(hidden: int = 32, layers: int = 2, vocab: int = 64) -> dict[str, np.ndarray]:
    rng = _rng()
    out: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden), dtype=np.float32)}
    for i in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"model.layers.{i}.self_attn.{proj}.weight"] = rng.standard_normal((hidden, hidden)).astype(np.float16)
        out[f"model.layers.{i}.input_layernorm.weight"] = np.ones((hidden,), dtype=np.float32)
    out["lm_head.weight"] = rng.standard_normal((vocab, hidden)).astype(np.float16)
    return out


def safetensors_model(path: Path, tensors: dict[str, np.ndarray] | None = None,
                      metadata: dict[str, str] | None = None) -> Made:
    from safetensors.numpy import save_file

    tensors = tensors if tensors is not None else llama_like_tensors()
    save_file(tensors, str(path), metadata=metadata)
    names = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int8"): "I8"}
    return Made(path, sum(int(t.size) for t in tensors.values()), len(tensors),
                tuple(sorted({names[t.dtype] for t in tensors.values()})))


def lora_adapter(path: Path, hidden: int = 32, layers: int = 2, rank: int = 4) -> Made:
    rng = _rng()
    tensors: dict[str, np.ndarray] = {}
    for i in range(layers):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, hidden), dtype=np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((hidden, rank), dtype=np.float32)
    return safetensors_model(path, tensors)


def gguf_model(path: Path, *, arch: str = "llama", hidden: int = 32, layers: int = 2, vocab: int = 64,
               context: int = 2048, file_type: int = 1) -> Made:
    import gguf

    rng = _rng()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny-test-llama")
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"tok{i}" for i in range(vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_chat_template("{{ messages }}")
    arrays = {"token_embd.weight": rng.standard_normal((vocab, hidden)).astype(np.float16)}
    for i in range(layers):
        arrays[f"blk.{i}.attn_q.weight"] = rng.standard_normal((hidden, hidden)).astype(np.float16)
        arrays[f"blk.{i}.attn_norm.weight"] = np.ones((hidden,), dtype=np.float32)
    arrays["output.weight"] = rng.standard_normal((vocab, hidden)).astype(np.float16)
    for name, array in arrays.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    dtypes = {"float16": "F16", "float32": "F32"}
    return Made(path, sum(int(a.size) for a in arrays.values()), len(arrays),
                tuple(sorted({dtypes[str(a.dtype)] for a in arrays.values()})))


def onnx_model(path: Path, *, hidden: int = 16, out: int = 4) -> Made:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = _rng()
    w1 = rng.standard_normal((hidden, hidden)).astype(np.float32)
    b1 = np.zeros((hidden,), dtype=np.float32)
    w2 = rng.standard_normal((hidden, out)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["h3"]), helper.make_node("MatMul", ["h3", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "tiny-mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="hanzo-tests", producer_version="1.0",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"author": "tests"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Made(path, int(w1.size + b1.size + w2.size), 3, ("FLOAT",))


def hf_config(path: Path, *, hidden: int = 32, layers: int = 2, vocab: int = 64) -> None:
    path.write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "num_hidden_layers": layers, "vocab_size": vocab, "max_position_embeddings": 4096, "torch_dtype": "float16",
    }))


def tokenizer_json(path: Path, vocab: int = 64) -> None:
    path.write_text(json.dumps({
        "model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(vocab - 2)}},
        "added_tokens": [{"id": vocab - 2, "content": "<s>"}, {"id": vocab - 1, "content": "</s>"},
                         {"id": 0, "content": "t0"}],
    }))


def adapter_config(path: Path, base: str = "tiny/llama") -> None:
    path.write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": base,
                                "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}))
