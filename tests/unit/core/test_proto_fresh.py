"""The generated protobuf code in services/core/proto/ matches proto/ (run `make proto` when this fails)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(gen_proto: ModuleType) -> None:
    stale = gen_proto.stale_files()
    assert stale == [], f"generated protobuf code is stale, run `make proto`: {stale}"


def test_generation_is_deterministic(gen_proto: ModuleType, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    gen_proto.generate(out_dir=first)
    gen_proto.generate(out_dir=second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
        # Nothing machine-specific leaks into the code.
        assert str(ROOT).encode() not in (first / rel).read_bytes(), rel
        assert str(tmp_path).encode() not in (first / rel).read_bytes(), rel


def test_generated_imports_are_absolute() -> None:
    for path in (ROOT / "services" / "core" / "proto").rglob("*.py*"):
        if "__pycache__" in path.parts:
            continue
        for line in path.read_text().splitlines():
            assert not line.lstrip().startswith(("from hanzo", "import hanzo")), f"{path}: {line}"


@pytest.mark.parametrize("name", ["events", "scanner", "signer", "gc", "replicator"])
def test_generated_modules_import(name: str) -> None:
    pb2 = importlib.import_module(f"services.core.proto.hanzo.registry.v1.{name}_pb2")
    importlib.import_module(f"services.core.proto.hanzo.registry.v1.{name}_pb2_grpc")
    assert pb2.DESCRIPTOR.package == "hanzo.registry.v1"
