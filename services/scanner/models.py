"""Pickle-based model files (`.pt .pth .bin .ckpt .pkl .joblib`, zip-wrapped PyTorch checkpoints) scanned for
code that runs on load, with picklescan, without unpickling anything. A dangerous import (`os.system`,
`builtins.eval`, `subprocess`...) is a CRITICAL finding; an unknown import a MEDIUM one; a file picklescan
cannot parse a HIGH one (a loader would still try it)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from picklescan.scanner import SafetyLevel, scan_pickle_bytes, scan_zip_bytes

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib")
TITLE_ANNOTATION = "org.opencontainers.image.title"
MODEL_FILEPATH_ANNOTATION = "org.cncf.model.filepath"


@dataclass(frozen=True, slots=True)
class ModelIssue:
    file: str
    severity: str
    what: str


def is_pickle_name(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


def scan_model_file(name: str, fileobj: IO[bytes]) -> list[ModelIssue]:
    """The issues of one model file (read from `fileobj`, which must be seekable)."""
    head = fileobj.read(4)
    fileobj.seek(0)
    try:
        scan = scan_zip_bytes if head.startswith(b"PK\x03\x04") else scan_pickle_bytes
        result = scan(fileobj, name)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        return [ModelIssue(name, "high", f"unparseable pickle data: {str(exc)[:200]}")]
    issues: list[ModelIssue] = []
    for g in result.globals:
        if g.safety == SafetyLevel.Dangerous:
            issues.append(ModelIssue(name, "critical", f"imports {g.module}.{g.name} (runs code on load)"))
        elif g.safety == SafetyLevel.Suspicious:
            issues.append(ModelIssue(name, "medium", f"imports {g.module}.{g.name} (not on the safe list)"))
    if result.scan_err and not issues:
        issues.append(ModelIssue(name, "high", "the pickle data could not be fully parsed"))
    return issues


def issue_id(issue: ModelIssue) -> str:
    """A stable id of a model finding (what a policy's scan.ignore names)."""
    h = hashlib.sha256(f"{issue.file}\0{issue.what}".encode()).hexdigest()[:12]
    return f"HANZO-MODEL-{h}"


def scan_model_tar(fileobj: IO[bytes], names: Iterable[str] = ()) -> list[ModelIssue]:
    """Pickle files inside an (uncompressed, already decompressed) tar stream, each read into memory only
    up to 256 MiB (a pickle is a loader's program; its tensors are elsewhere in a zip checkpoint)."""
    issues: list[ModelIssue] = []
    with tarfile.open(fileobj=fileobj, mode="r|") as tf:
        for m in tf:
            if m.isreg() and is_pickle_name(m.name) and m.size <= 256 * 1024 * 1024:
                f = tf.extractfile(m)
                if f is not None:
                    issues += scan_model_file(m.name, io.BytesIO(f.read()))
    return issues
