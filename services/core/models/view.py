"""The normalised model view of one manifest: its files (format, parameters, dtypes, tensors from their
headers), the model's architecture, quantization, context length and parameter count, its lineage (from
`subject` and annotations) and findings. Files are read through ranged reads only (`BlobOpener`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from services.core.models import configs, gguf, kinds, onnx, safetensors
from services.core.models.source import HeaderError, RangeSource

log = logging.getLogger(__name__)

BlobOpener = Callable[[str, int], Awaitable[RangeSource]]
"""(digest, size) -> a ranged source over the blob."""

RELATIONS: Final = frozenset({"fine-tune", "quantization", "adapter"})
SNIFF_BYTES: Final = 16


def _obj(doc: Any, key: str) -> dict[str, Any]:
    """`doc[key]` when it is a JSON object, else an empty one."""
    value = doc.get(key) if isinstance(doc, Mapping) else None
    return value if isinstance(value, dict) else {}


@dataclass
class ModelFile:
    name: str
    media_type: str
    digest: str
    size: int
    format: str | None
    role: str = "other"
    """weights, adapter, config, tokenizer, adapter_config, archive or other."""
    parameters: int | None = None
    dtypes: list[str] = field(default_factory=list)
    tensors: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Finding:
    file: str
    severity: str
    """error (the header cannot be read) or warning (read, but something is wrong)."""
    message: str


@dataclass
class ModelView:
    digest: str
    artifact_type: str | None
    format: str | None
    parameters: int | None
    architecture: str | None
    quantization: str | None
    context_length: int | None
    dtypes: list[str]
    files: list[ModelFile]
    lineage: dict[str, Any]
    findings: list[Finding]
    name: str | None = None
    hidden_size: int | None = None
    layers: int | None = None
    vocab_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _layers(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    layers = manifest.get("layers")
    return [layer for layer in layers if isinstance(layer, dict)] if isinstance(layers, list) else []


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    raw = obj.get("annotations")
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def manifest_is_model(manifest: Mapping[str, Any]) -> bool:
    config = _obj(manifest, "config")
    artifact_type = manifest.get("artifactType")
    return kinds.is_model(
        artifact_type if isinstance(artifact_type, str) else None,
        str(config.get("mediaType")) if config.get("mediaType") else None,
        [(str(layer.get("mediaType", "")), _annotations(layer)) for layer in _layers(manifest)],
    )


async def _read_all(source: RangeSource, limit: int) -> bytes:
    if source.size > limit:
        raise HeaderError(f"{source.size} bytes is more than the {limit} read for a document")
    return await source.read(0, source.size)


class _Builder:
    def __init__(self, opener: BlobOpener) -> None:
        self.opener = opener
        self.findings: list[Finding] = []
        self.facts: list[configs.ModelFacts] = []
        self.gguf: list[gguf.GgufHeader] = []

    def problem(self, file: str, severity: str, message: str) -> None:
        self.findings.append(Finding(file, severity, message[:500]))

    async def file(self, index: int, layer: Mapping[str, Any]) -> ModelFile:
        annotations = _annotations(layer)
        media_type = str(layer.get("mediaType", ""))
        name = kinds.file_name(media_type, annotations) or f"layer-{index}"
        digest, size = str(layer.get("digest", "")), int(layer.get("size", 0) or 0)
        f = ModelFile(name=name, media_type=media_type, digest=digest, size=size,
                      format=kinds.declared_format(media_type, name))
        try:
            await self._inspect(f)
        except HeaderError as exc:
            self.problem(name, "error", f"invalid {f.format or 'model'} header: {exc}")
        except Exception as exc:  # a missing blob, a storage error: a finding, never a crash
            log.warning("model file %s (%s) could not be read: %r", name, digest, exc)
            self.problem(name, "error", f"could not be read: {type(exc).__name__}: {str(exc)[:200]}")
        return f

    async def _inspect(self, f: ModelFile) -> None:
        base = f.name.rsplit("/", 1)[-1].lower()
        if f.format == "tar":
            f.role = "archive"
            return
        if f.format == "json" or base.endswith(".json"):
            f.format = "json"
            await self._json(f, base)
            return
        source = await self.opener(f.digest, f.size)
        adapter = f.format == "lora" or "adapter" in base
        if f.format in (None, "lora") or f.media_type == "application/vnd.oci.image.layer.v1.tar":
            head = await source.read(0, SNIFF_BYTES)
            f.format = kinds.sniff(head) or f.format
            if f.format in (None, "lora"):
                return
        f.role = "adapter" if adapter else "weights"
        if f.format == "safetensors":
            st = await safetensors.read_header(source)
            f.parameters, f.dtypes, f.tensors = st.parameters, list(st.dtypes), st.tensors
            if st.metadata:
                f.details["metadata"] = st.metadata
            for p in st.problems:
                self.problem(f.name, "warning", p)
        elif f.format == "gguf":
            gh = await gguf.read_header(source)
            self.gguf.append(gh)
            f.parameters, f.dtypes, f.tensors = gh.parameters, list(gh.dtypes), gh.tensors
            f.details = {"version": gh.version, "metadata": gh.metadata, "quantization": gh.quantization,
                         "chat_template": gh.has_chat_template}
            if gh.metadata.get("general.type") == "adapter" or "adapter.type" in gh.metadata:
                f.role = "adapter"
            for p in gh.problems:
                self.problem(f.name, "warning", p)
        elif f.format == "onnx":
            oh = await onnx.read_header(source)
            f.parameters, f.dtypes, f.tensors = oh.parameters, list(oh.dtypes), oh.tensors
            f.details = {
                "ir_version": oh.ir_version, "producer": oh.producer_name, "producer_version": oh.producer_version,
                "opsets": oh.opsets, "nodes": oh.nodes, "metadata": oh.metadata,
                "inputs": [{"name": v.name, "elem_type": v.elem_type, "shape": list(v.shape or ())}
                           for v in oh.inputs],
                "outputs": [{"name": v.name, "elem_type": v.elem_type, "shape": list(v.shape or ())}
                            for v in oh.outputs],
            }
            if oh.external_data:
                f.details["external_data"] = list(oh.external_data)
            for p in oh.problems:
                self.problem(f.name, "warning", p)
        # pytorch: pickles are never parsed here; the scanner reports what they import

    async def _json(self, f: ModelFile, base: str) -> None:
        parser = None
        if base in kinds.CONFIG_NAMES and base == "config.json":
            parser, f.role, limit = configs.hf_config, "config", configs.MAX_CONFIG
        elif base in kinds.TOKENIZER_NAMES:
            parser, f.role, limit = configs.tokenizer, "tokenizer", configs.MAX_TOKENIZER
        elif base in kinds.ADAPTER_CONFIG_NAMES:
            parser, f.role, limit = configs.adapter_config, "adapter_config", configs.MAX_CONFIG
        if parser is None:
            f.role = "config" if base.endswith("config.json") else "other"
            return
        data = await _read_all(await self.opener(f.digest, f.size), limit)
        facts = parser(configs.load_json(data))
        self.facts.append(facts)
        f.details = {k: v for k, v in asdict(facts).items() if v not in (None, {}, "") and k != "kind"}

    async def config(self, manifest: Mapping[str, Any]) -> None:
        config = _obj(manifest, "config")
        media_type = config.get("mediaType")
        parser = {kinds.MODELPACK_CONFIG: configs.modelpack_config, kinds.KITOPS_CONFIG: configs.kitfile}.get(
            str(media_type))
        if parser is None:
            return
        try:
            data = await _read_all(await self.opener(str(config.get("digest")), int(config.get("size", 0))),
                                   configs.MAX_CONFIG)
            self.facts.append(parser(configs.load_json(data)))
        except HeaderError as exc:
            self.problem("config", "error", f"invalid model config: {exc}")
        except Exception as exc:
            self.problem("config", "error", f"could not be read: {type(exc).__name__}: {str(exc)[:200]}")


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _lineage(manifest: Mapping[str, Any], files: list[ModelFile], facts: list[configs.ModelFacts],
             headers: list[gguf.GgufHeader]) -> dict[str, Any]:
    annotations = _annotations(manifest)
    subject = manifest.get("subject") if isinstance(manifest.get("subject"), dict) else None
    adapter = any(f.role in ("adapter", "adapter_config") for f in files)
    relation = annotations.get(kinds.RELATION)
    if relation not in RELATIONS:
        quantized = any(h.quantization not in (None, "F32", "F16", "BF16") for h in headers)
        relation = "adapter" if adapter else "quantization" if subject and quantized else \
            "fine-tune" if subject else "base"
    base_model = _first(*(f.base_model for f in facts), annotations.get(kinds.BASE_NAME),
                        *(h.metadata.get("general.base_model.0.name") for h in headers))
    return {
        "relation": relation,
        "subject": {"digest": str(subject.get("digest")), "media_type": str(subject.get("mediaType", ""))}
        if subject else None,
        "base_model": str(base_model) if base_model is not None else None,
        "ancestors": [],
    }


async def build_view(manifest: Mapping[str, Any], *, digest: str, opener: BlobOpener) -> ModelView:
    """The view of a model manifest (see `manifest_is_model`). Never raises for bad content: what cannot be
    read becomes a finding."""
    b = _Builder(opener)
    await b.config(manifest)
    files = [await b.file(i, layer) for i, layer in enumerate(_layers(manifest))]
    weights = [f for f in files if f.role in ("weights", "adapter") and f.format]
    by_size: Counter[str] = Counter()
    for f in weights:
        by_size[str(f.format)] += max(f.size, 1)
    facts = b.facts
    declared_format = _first(*(x.format for x in facts))
    fmt = by_size.most_common(1)[0][0] if by_size else declared_format
    primary = [f for f in weights if f.format == fmt]
    counted = [f.parameters for f in primary if f.parameters is not None]
    parameters = sum(counted) if counted else _first(*(x.parameters for x in facts))
    dtypes = sorted({d for f in primary for d in f.dtypes})
    if not dtypes:
        dtypes = sorted({d.strip() for x in facts if x.dtype for d in x.dtype.split(",") if d.strip()})
    g = b.gguf[0] if b.gguf else None
    arch_meta = g.metadata if g else {}
    arch = g.architecture if g else None

    def gguf_int(suffix: str) -> int | None:
        value = arch_meta.get(f"{arch}.{suffix}") if arch else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    name = _first(str(arch_meta["general.name"]) if "general.name" in arch_meta else None,
                  *(x.name for x in facts))
    artifact_type = manifest.get("artifactType")
    return ModelView(
        digest=digest,
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
        format=fmt,
        parameters=parameters,
        architecture=_first(arch, *(x.architecture for x in facts if x.kind == "config"),
                            *(x.architecture for x in facts)),
        quantization=_first(g.quantization if g else None, *(x.quantization for x in facts)),
        context_length=_first(g.context_length if g else None, *(x.context_length for x in facts)),
        dtypes=dtypes,
        files=files,
        lineage=_lineage(manifest, files, facts, b.gguf),
        findings=b.findings,
        name=name,
        hidden_size=_first(gguf_int("embedding_length"), *(x.hidden_size for x in facts)),
        layers=_first(gguf_int("block_count"), *(x.layers for x in facts)),
        vocab_size=_first(*(x.vocab_size for x in facts if x.kind == "tokenizer"), *(x.vocab_size for x in facts)),
    )
