"""The model view on both assemblies, for real small models made here (safetensors, GGUF, ONNX, a LoRA adapter
whose subject is its base), each checked against parameter counts computed from the arrays that went in."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from services.cli.oci import LocalFile, Out, model_files, push_files
from services.core.client import ClientOptions, Credentials, ImageReference, OciClient, RegistryOptions
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from tests.integration.conftest import Assembly
from tests.unit.models import makers


def _registry(a: Assembly) -> str:
    return f"{a.client.host}:{a.client.port}"


def _client(a: Assembly) -> OciClient:
    key = a.c.settings.auth.bootstrap_admin_key
    assert key is not None
    creds = Credentials("admin", key.get_secret_value())
    return OciClient(ClientOptions(registries={_registry(a): RegistryOptions(credentials=creds)}))


def _auth(a: Assembly) -> dict[str, str]:
    import base64

    key = a.c.settings.auth.bootstrap_admin_key
    assert key is not None
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{key.get_secret_value()}".encode()).decode()}


async def _view(a: Assembly, repo: str, ref: str, expect: int = 200) -> Any:
    resp = await a.client.get(f"/v1/registry/{repo}/{ref}/model", headers=_auth(a))
    body = await resp.json()
    assert resp.status == expect, body
    return body


async def _push_dir(client: OciClient, a: Assembly, directory: Path, ref: str, *, base: str | None = None,
                    annotations: dict[str, str] | None = None) -> str:
    image = ImageReference.parse(f"{_registry(a)}/{ref}")
    subject = ImageReference.parse(f"{_registry(a)}/{base}") if base else None
    result = await push_files(client, image, model_files(directory), artifact_type="application/vnd.hanzo.model.v1",
                              annotations=annotations or {}, subject=subject, out=Out())
    return str(result["digest"])


async def test_model_views_of_real_models(auth_assembly: Assembly, tmp_path: Path) -> None:
    a = auth_assembly
    base_dir, gguf_dir, onnx_dir, lora_dir = (tmp_path / n for n in ("base", "gguf", "onnx", "lora"))
    for d in (base_dir, gguf_dir, onnx_dir, lora_dir):
        d.mkdir()
    base = makers.safetensors_model(base_dir / "model.safetensors", metadata={"format": "pt"})
    makers.hf_config(base_dir / "config.json")
    makers.tokenizer_json(base_dir / "tokenizer.json", vocab=64)
    quant = makers.gguf_model(gguf_dir / "model-f16.gguf", context=2048, file_type=1)
    graph = makers.onnx_model(onnx_dir / "model.onnx")
    adapter = makers.lora_adapter(lora_dir / "adapter_model.safetensors")
    makers.adapter_config(lora_dir / "adapter_config.json", base="tiny/llama")

    async with _client(a) as client:
        base_digest = await _push_dir(client, a, base_dir, "models/llama:v1")
        quant_digest = await _push_dir(client, a, gguf_dir, "models/llama:v1-f16", base="models/llama:v1",
                                       annotations={"vnd.hanzo.model.relation": "quantization"})
        await _push_dir(client, a, onnx_dir, "models/mlp:v1")
        adapter_digest = await _push_dir(client, a, lora_dir, "models/llama:v1-lora", base="models/llama:v1")

    view = await _view(a, "models/llama", "v1")
    assert view["status"] == "indexed" and view["digest"] == base_digest
    assert (view["format"], view["parameters"], view["architecture"]) == ("safetensors", base.parameters,
                                                                          "LlamaForCausalLM")
    assert view["dtypes"] == list(base.dtypes)
    assert (view["context_length"], view["hidden_size"], view["layers"], view["vocab_size"]) == (4096, 32, 2, 64)
    assert view["findings"] == [] and view["lineage"]["relation"] == "base"
    weights = next(f for f in view["files"] if f["name"] == "model.safetensors")
    assert (weights["media_type"], weights["format"], weights["parameters"], weights["tensors"]) == (
        "application/vnd.hanzo.safetensors", "safetensors", base.parameters, base.tensors)
    assert weights["size"] == (base_dir / "model.safetensors").stat().st_size
    assert {f["name"] for f in view["files"]} == {"model.safetensors", "config.json", "tokenizer.json"}

    view = await _view(a, "models/llama", "v1-f16")
    assert (view["format"], view["parameters"], view["architecture"]) == ("gguf", quant.parameters, "llama")
    assert (view["quantization"], view["context_length"], view["name"]) == ("F16", 2048, "tiny-test-llama")
    assert view["lineage"]["relation"] == "quantization" and view["digest"] == quant_digest
    assert view["lineage"]["subject"]["digest"] == base_digest

    view = await _view(a, "models/mlp", "v1")
    assert (view["format"], view["parameters"]) == ("onnx", graph.parameters)
    onnx_file = view["files"][0]
    assert onnx_file["details"]["opsets"] == {"ai.onnx": 17}
    assert onnx_file["details"]["inputs"] == [{"name": "x", "elem_type": "FLOAT", "shape": ["batch", 16]}]

    view = await _view(a, "models/llama", adapter_digest)
    assert view["lineage"]["relation"] == "adapter"
    assert view["lineage"]["subject"]["digest"] == base_digest
    assert view["lineage"]["base_model"] == "tiny/llama"
    assert view["lineage"]["ancestors"][0]["digest"] == base_digest
    assert view["lineage"]["ancestors"][0]["parameters"] == base.parameters
    assert view["parameters"] == adapter.parameters
    assert next(f for f in view["files"] if f["name"] == "adapter_model.safetensors")["role"] == "adapter"

    auth = _auth(a)
    resp = await a.client.get("/v1/registry/models", params={"format": "gguf"}, headers=auth)
    listed = (await resp.json())["models"]
    assert [(m["repository"], m["digest"], m["parameters"]) for m in listed] == [
        ("models/llama", quant_digest, quant.parameters)]
    resp = await a.client.get("/v1/registry/models",
                              params={"min_parameters": str(quant.parameters + 1), "q": "llama"}, headers=auth)
    assert {m["digest"] for m in (await resp.json())["models"]} == {base_digest}
    resp = await a.client.get("/v1/registry/models", params={"limit": "1"}, headers=auth)
    page = await resp.json()
    assert len(page["models"]) == 1 and page["next"]
    resp = await a.client.get("/v1/registry/models")
    assert resp.status == 401


async def test_non_models_and_invalid_headers(auth_assembly: Assembly, tmp_path: Path) -> None:
    a = auth_assembly
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer = b"not a model"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 30) + b"{this is not json at all!!!!!}" + bytes(16))
    async with _client(a) as client:
        repo = ImageReference.parse(f"{_registry(a)}/team/app:v1").repository
        for blob in (config, layer):
            await client.push_blob(repo, blob, digest=Digest.of(blob))
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": str(Digest.of(config)), "size": len(config)},
            "layers": [{"mediaType": mt.OCI_LAYER_TAR_GZIP, "digest": str(Digest.of(layer)), "size": len(layer)}],
        }).encode()
        await client.push_manifest(repo, manifest, reference="v1", media_type=mt.OCI_MANIFEST)
        image = ImageReference.parse(f"{_registry(a)}/models/broken:v1")
        await push_files(client, image, [LocalFile(bad, "application/vnd.hanzo.safetensors")],
                         artifact_type="application/vnd.hanzo.model.v1", annotations={}, subject=None, out=Out())
    body = await _view(a, "team/app", "v1", expect=404)
    assert body["errors"][0]["code"] == "MODEL_UNKNOWN"
    view = await _view(a, "models/broken", "v1")
    assert view["status"] == "indexed" and view["parameters"] is None
    assert view["findings"][0]["file"] == "bad.safetensors"
    assert "invalid safetensors header" in view["findings"][0]["message"]
    body = await _view(a, "models/broken", "nope", expect=404)
    assert body["errors"][0]["code"] == "MANIFEST_UNKNOWN"
