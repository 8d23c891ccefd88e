"""Models as first-class artifacts: pure parsers of model file headers (safetensors, GGUF, ONNX, JSON configs),
read through ranged reads only, and the normalised model view built from a manifest and those headers.

- `source`: the ranged byte source and a bounded, buffered cursor over it.
- `safetensors`, `gguf`, `onnx`, `configs`: one parser per format; an invalid header is a `HeaderError`.
- `kinds`: which manifests are models, and what each layer holds (by media type, file name and magic).
- `view`: the model view (`build_view`), with lineage and findings.
- `index`: views stored per manifest (`model_views`), the indexer and its manifest-event handler.
"""
