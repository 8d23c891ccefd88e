"""Small JSON documents of models, read whole (bounded): Hugging Face `config.json`, `tokenizer.json` and
PEFT's `adapter_config.json`, the CNCF ModelPack config and the KitOps Kitfile. Pure."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from services.core.models.source import HeaderError

MAX_CONFIG: Final = 4 * 1024 * 1024
MAX_TOKENIZER: Final = 64 * 1024 * 1024
_PARAM_SIZE: Final = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMBTQ]?)\s*$", re.IGNORECASE)
_SCALE: Final = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12, "Q": 10**15}


def _obj(doc: Any, key: str) -> dict[str, Any]:
    """`doc[key]` when it is a JSON object, else an empty one."""
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What one document says about the model; None where it says nothing."""

    kind: str
    architecture: str | None = None
    model_type: str | None = None
    hidden_size: int | None = None
    layers: int | None = None
    vocab_size: int | None = None
    context_length: int | None = None
    dtype: str | None = None
    quantization: str | None = None
    parameters: int | None = None
    format: str | None = None
    name: str | None = None
    base_model: str | None = None
    adapter: dict[str, Any] = field(default_factory=dict)


def load_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HeaderError(f"invalid JSON: {str(exc)[:200]}") from None


def _int(doc: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = doc.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _str(value: Any, limit: int = 200) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def parse_param_size(text: Any) -> int | None:
    """ModelPack's `paramSize` (`6.7B`, `125M`) or KitOps' `parameters` as a count; None when unreadable."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text if text >= 0 else None
    if not isinstance(text, str):
        return None
    match = _PARAM_SIZE.match(text)
    if match is None:
        return None
    return int(float(match.group(1)) * _SCALE[match.group(2).upper()])


def hf_config(doc: Any) -> ModelFacts:
    """A Hugging Face `config.json`: architecture, sizes, context length, dtype, quantization method."""
    if not isinstance(doc, dict):
        raise HeaderError("config.json is not a JSON object")
    text = _obj(doc, "text_config")
    merged = {**text, **doc}
    architectures = doc.get("architectures")
    architecture = _str(architectures[0]) if isinstance(architectures, list) and architectures else None
    quant = doc.get("quantization_config")
    quantization = _str(quant.get("quant_method")) if isinstance(quant, dict) else None
    return ModelFacts(
        kind="config",
        architecture=architecture or _str(doc.get("model_type")),
        model_type=_str(doc.get("model_type")),
        hidden_size=_int(merged, "hidden_size", "n_embd", "d_model"),
        layers=_int(merged, "num_hidden_layers", "n_layer", "num_layers"),
        vocab_size=_int(merged, "vocab_size"),
        context_length=_int(merged, "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
                            "n_ctx"),
        dtype=_str(doc.get("torch_dtype") or doc.get("dtype")),
        quantization=quantization,
    )


def tokenizer(doc: Any) -> ModelFacts:
    """A `tokenizer.json`: the vocabulary size (model vocabulary plus added tokens not in it)."""
    if not isinstance(doc, dict):
        raise HeaderError("tokenizer.json is not a JSON object")
    model = _obj(doc, "model")
    vocab = model.get("vocab")
    tokens: set[str] = set()
    if isinstance(vocab, dict):
        tokens = set(vocab)
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        tokens = {str(v[0]) if isinstance(v, list) and v else str(v) for v in vocab}
    added = doc.get("added_tokens")
    if isinstance(added, list):
        tokens |= {str(t.get("content")) for t in added if isinstance(t, dict) and "content" in t}
    return ModelFacts(kind="tokenizer", vocab_size=len(tokens) or None, model_type=_str(model.get("type")))


def adapter_config(doc: Any) -> ModelFacts:
    """PEFT's `adapter_config.json`: the base model and the adapter's settings."""
    if not isinstance(doc, dict):
        raise HeaderError("adapter_config.json is not a JSON object")
    adapter = {k: doc[k] for k in ("peft_type", "r", "lora_alpha", "task_type") if isinstance(doc.get(k), str | int)}
    targets = doc.get("target_modules")
    if isinstance(targets, list):
        adapter["target_modules"] = [str(t)[:100] for t in targets[:50]]
    return ModelFacts(kind="adapter_config", base_model=_str(doc.get("base_model_name_or_path")), adapter=adapter)


def modelpack_config(doc: Any) -> ModelFacts:
    """A CNCF ModelPack config: `descriptor` and `config` (architecture, format, paramSize, precision,
    quantization)."""
    if not isinstance(doc, dict):
        raise HeaderError("the ModelPack config is not a JSON object")
    descriptor = _obj(doc, "descriptor")
    config = _obj(doc, "config")
    return ModelFacts(
        kind="modelpack", architecture=_str(config.get("architecture")), format=_str(config.get("format")),
        parameters=parse_param_size(config.get("paramSize")), dtype=_str(config.get("precision")),
        quantization=_str(config.get("quantization")), name=_str(descriptor.get("name")),
    )


def kitfile(doc: Any) -> ModelFacts:
    """A KitOps Kitfile (as JSON): the model's name, format and parameters."""
    if not isinstance(doc, dict):
        raise HeaderError("the Kitfile is not a JSON object")
    model = _obj(doc, "model")
    package = _obj(doc, "package")
    params = model.get("parameters")
    return ModelFacts(kind="kitfile", name=_str(model.get("name")) or _str(package.get("name")),
                      format=_str(model.get("format")), architecture=_str(model.get("framework")),
                      parameters=parse_param_size(params) if not isinstance(params, dict) else None)
