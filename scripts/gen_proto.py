"""Generate the protobuf/gRPC Python code in services/core/proto/ from proto/, deterministically.

Usage: `python scripts/gen_proto.py` (what `make proto` runs) regenerates the code;
`python scripts/gen_proto.py --check` regenerates into a temporary directory, lists every file that
differs from the committed code and exits 1 when any does.

protoc writes imports relative to its include root (`from hanzo.registry.v1 import events_pb2`);
we rewrite them to `services.core.proto.hanzo...` so the code imports without touching sys.path.
The output depends only on the .proto files and the pinned grpcio-tools version.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "services" / "core" / "proto"
PACKAGE = "services.core.proto"

# Top-level proto packages we own; imports of anything else (google.protobuf) stay as they are.
_OWN_ROOTS = ("hanzo",)
_GENERATED_SUFFIXES = (".py", ".pyi")


def proto_files(proto_dir: Path = PROTO_DIR) -> list[str]:
    """The .proto files under `proto_dir`, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(proto_dir).as_posix() for p in proto_dir.rglob("*.proto"))


def _rewrite_imports(text: str) -> str:
    roots = "|".join(re.escape(r) for r in _OWN_ROOTS)
    text = re.sub(rf"^(\s*)from ({roots})(\.| )", rf"\1from {PACKAGE}.\2\3", text, flags=re.MULTILINE)
    return re.sub(rf"^(\s*)import ({roots})\.", rf"\1import {PACKAGE}.\2.", text, flags=re.MULTILINE)


def _normalise(text: str) -> str:
    # Line endings and trailing blanks vary with nothing but the platform; fix them.
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).rstrip("\n") + "\n"


def _init_text(package: str) -> str:
    return f'"""Generated protobuf package {package}; do not edit (regenerate with `make proto`)."""\n'


def generate(*, proto_dir: Path = PROTO_DIR, out_dir: Path) -> list[str]:
    """Generate the code for every .proto under `proto_dir` into `out_dir` (created; files that are not
    generated any more are removed, unchanged files are left untouched). Returns the written relative paths.
    """
    files = proto_files(proto_dir)
    if not files:
        raise SystemExit(f"no .proto files under {proto_dir}")
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="hanzo-proto-") as tmp:
        raw = Path(tmp)
        # Relative file names with cwd=proto_dir keep absolute paths out of the generated code.
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"-I{well_known}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *files,
        ]
        result = subprocess.run(cmd, cwd=proto_dir, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"protoc failed ({result.returncode}):\n{result.stderr}")
        generated: dict[str, str] = {}
        for path in sorted(raw.rglob("*")):
            if path.is_file() and path.suffix in _GENERATED_SUFFIXES:
                rel = path.relative_to(raw).as_posix()
                generated[rel] = _normalise(_rewrite_imports(path.read_text(encoding="utf-8")))
    packages = {""} | {
        "/".join(Path(rel).parent.parts[:i]) for rel in generated for i in range(1, len(Path(rel).parent.parts) + 1)
    }
    for pkg in packages:
        rel = f"{pkg}/__init__.py" if pkg else "__init__.py"
        dotted = ".".join([PACKAGE, *pkg.split("/")]) if pkg else PACKAGE
        generated.setdefault(rel, _init_text(dotted))
    _sync(out_dir, generated)
    return sorted(generated)


def _existing(out_dir: Path) -> dict[str, Path]:
    if not out_dir.exists():
        return {}
    return {
        p.relative_to(out_dir).as_posix(): p
        for p in out_dir.rglob("*")
        if p.is_file() and p.suffix in _GENERATED_SUFFIXES and "__pycache__" not in p.parts
    }


def _sync(out_dir: Path, files: dict[str, str]) -> None:
    for rel, path in _existing(out_dir).items():
        if rel not in files:
            path.unlink()
    for rel, text in files.items():
        target = out_dir / rel
        data = text.encode("utf-8")
        # Leave unchanged files alone so mtimes (and bytecode caches) stay valid.
        if target.exists() and target.read_bytes() == data:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    # Drop directories left empty by removed protos.
    for directory in sorted((d for d in out_dir.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        if directory.name != "__pycache__" and not any(directory.iterdir()):
            directory.rmdir()


def stale_files(*, proto_dir: Path = PROTO_DIR, out_dir: Path = OUT_DIR) -> list[str]:
    """Relative paths under `out_dir` that differ from a fresh generation (changed, missing or extra)."""
    with tempfile.TemporaryDirectory(prefix="hanzo-proto-check-") as tmp:
        fresh_dir = Path(tmp) / "out"
        generate(proto_dir=proto_dir, out_dir=fresh_dir)
        fresh = _existing(fresh_dir)
        committed = _existing(out_dir)
        stale = [
            rel
            for rel in sorted(fresh.keys() | committed.keys())
            if rel not in fresh or rel not in committed or fresh[rel].read_bytes() != committed[rel].read_bytes()
        ]
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed code is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("generated protobuf code is stale; run `make proto`:", file=sys.stderr)
            for rel in stale:
                print(f"  {OUT_DIR.relative_to(ROOT) / rel}", file=sys.stderr)
            return 1
        print("generated protobuf code is up to date")
        return 0
    written = generate(out_dir=OUT_DIR)
    print(f"generated {len(written)} files in {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
