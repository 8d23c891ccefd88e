"""The OCI commands of `hanzo-registry` on the core OCI client (services/core/client): login/logout, push/pull
of files and models, ls, rm, inspect and the model commands. Errors end as one line on stderr and an exit
code (main.EXIT_CODES); data goes to stdout as text or, with `--output json`, as one JSON document."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import platform as host_platform
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from yarl import URL

from services.cli import checks, dockerconfig, layouts, upload_state
from services.core.client import (
    ClientOptions,
    Credentials,
    ImageReference,
    OciAuthenticationError,
    OciClient,
    OciClientError,
    OciConnectionError,
    OciDeniedError,
    OciDigestMismatchError,
    OciNotFoundError,
    OciResponseError,
    OciUnauthorizedError,
    RegistryOptions,
    RemoteRepository,
)
from services.core.client.auth import repository_scope
from services.core.client.blobs import UploadSession
from services.core.client.reference import _is_registry
from services.core.errors import RegistryError
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest, Digester

DEFAULT_REGISTRY: Final = "127.0.0.1:5000"
EMPTY_CONFIG: Final = b"{}"
TITLE: Final = "org.opencontainers.image.title"
CREATED: Final = "org.opencontainers.image.created"
MODEL_ARTIFACT: Final = "application/vnd.hanzo.model.v1"
RELATION: Final = "vnd.hanzo.model.relation"
READ_CHUNK: Final = 8 * 1024 * 1024
CHUNKED_ABOVE: Final = 64 * 1024 * 1024
"""Files larger than this are pushed in resumable PATCH chunks of PUSH_CHUNK bytes, smaller ones in one PUT."""
PUSH_CHUNK: Final = 32 * 1024 * 1024
"""Bytes per PATCH of a large file: at most this much is sent again after a break, and held in memory."""
MODEL_MEDIA_TYPES: Final = {
    ".safetensors": "application/vnd.hanzo.safetensors",
    ".gguf": "application/vnd.hanzo.gguf",
    ".onnx": "application/vnd.hanzo.onnx",
    ".pt": "application/vnd.hanzo.pytorch",
    ".pth": "application/vnd.hanzo.pytorch",
    ".bin": "application/vnd.hanzo.pytorch",
    ".ckpt": "application/vnd.hanzo.pytorch",
    ".json": "application/json",
}
LORA: Final = "application/vnd.hanzo.lora"
MODEL_POLL_SECONDS: Final = 30.0

log = logging.getLogger(__name__)


class CliError(Exception):
    """A failure explained in one line; `exit_code` as documented in main.EXIT_CODES."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------------- addressing


def default_registry() -> tuple[str, bool | None]:
    """The registry of references without one: $HANZO_REGISTRY_URL (its scheme decides plain HTTP), else
    $HANZO_REGISTRY_ADDR, else 127.0.0.1:5000; an every-interface address means this machine."""
    url = os.environ.get("HANZO_REGISTRY_URL", "").strip().rstrip("/")
    if url:
        scheme, sep, rest = url.partition("://")
        return (rest, scheme == "http") if sep else (url, None)
    addr = os.environ.get("HANZO_REGISTRY_ADDR", "").strip() or DEFAULT_REGISTRY
    host, _, port = addr.rpartition(":")
    if host in ("0.0.0.0", ""):
        addr = f"127.0.0.1:{port}"
    elif host in ("[::]", "::"):
        addr = f"[::1]:{port}"
    return addr, None


def parse_reference(text: str) -> ImageReference:
    """`[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`; CliError (exit 2) naming what is wrong."""
    text = text.strip()
    if "://" in text:
        raise CliError(f"bad reference {text!r}: write host[:port]/repository[:tag], without a scheme", exit_code=2)
    first, sep, _ = text.partition("/")
    if not (sep and _is_registry(first)):
        text = f"{default_registry()[0]}/{text}"
    try:
        return ImageReference.parse(text)
    except (RegistryError, ValueError) as exc:
        raise CliError(f"bad reference {text!r}: {getattr(exc, 'message', exc)}", exit_code=2) from None


def parse_repository(text: str) -> RemoteRepository:
    ref = parse_reference(text)
    if ":" in text.rpartition("/")[2] or "@" in text:
        raise CliError(f"{text!r} names a manifest; give a repository", exit_code=2)
    return ref.repository


def registry_of(text: str | None) -> str:
    if not text:
        return default_registry()[0]
    if "/" in text or not _is_registry(text):
        raise CliError(f"{text!r} is not a registry (host[:port])", exit_code=2)
    return text


# ---------------------------------------------------------------------------------------------- the client


def _password(args: argparse.Namespace, stdin: IO[str]) -> str | None:
    if getattr(args, "password_stdin", False):
        return stdin.readline().rstrip("\r\n")
    return os.environ.get("HANZO_REGISTRY_API_KEY") or None


def credentials(args: argparse.Namespace, registry: str, stdin: IO[str]) -> Credentials | None:
    password = _password(args, stdin)
    if password is not None:
        return Credentials(args.username or "hanzo", password)
    try:
        stored = dockerconfig.get(registry)
    except OSError as exc:
        raise CliError(str(exc), exit_code=2) from None
    if stored is not None and (args.username is None or args.username == stored[0]):
        return Credentials(*stored)
    return None


def options(args: argparse.Namespace, registries: Sequence[str], stdin: IO[str], *,
            basic: bool = False) -> ClientOptions:
    """`basic`: send the API key as Basic on every request (management API calls that change something refuse
    registry access tokens)."""
    env_registry, env_plain = default_registry()
    per: dict[str, RegistryOptions] = {}
    for registry in dict.fromkeys(registries):
        plain = True if getattr(args, "plain_http", False) else (env_plain if registry == env_registry else None)
        per[registry] = RegistryOptions(credentials=credentials(args, registry, stdin), plain_http=plain,
                                        insecure=getattr(args, "insecure", False),
                                        ca_file=getattr(args, "ca_file", None), basic_always=basic)
    # A long transfer may break many times; each resume continues from the registry's offset.
    return ClientOptions(registries=per, user_agent="hanzo-registry-cli", trace_headers=False, max_resumes=6)


# ---------------------------------------------------------------------------------------------- output, progress


@dataclass
class Out:
    json: bool = False
    progress: bool = False
    stdout: IO[str] = field(default_factory=lambda: sys.stdout)

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        if self.json:
            print(json.dumps(data, indent=2, default=str), file=self.stdout)
        else:
            shown = text() if callable(text) else text
            if shown:
                print(shown, file=self.stdout)

    def bar(self) -> Any:
        """A rich progress display on stderr (bytes, rate, ETA), or a stand-in that shows nothing."""
        if not self.progress:
            return _NoProgress()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=Console(stderr=True), transient=False)


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: int | None = None) -> int:
        return 0

    def update(self, task: int, *, advance: int = 0, completed: int | None = None) -> None:
        return None


def human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def count(n: int | None) -> str:
    if n is None:
        return "-"
    for scale, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix} ({n})"
    return str(n)


# ---------------------------------------------------------------------------------------------- files


def _check_title(title: str) -> str:
    if not title or "/" in title or "\\" in title or title in (".", "..") or "\0" in title:
        raise CliError(f"refusing the file name {title[:100]!r} from the registry (a path, not a name)")
    return title


async def file_digest(path: Path) -> tuple[Digest, int]:
    def run() -> tuple[Digest, int]:
        h, size = hashlib.sha256(), 0
        with path.open("rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                h.update(chunk)
                size += len(chunk)
        return Digest.parse(f"sha256:{h.hexdigest()}"), size

    return await asyncio.to_thread(run)


async def file_chunks(path: Path, on_chunk: Callable[[int], None], *, offset: int = 0) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        if offset:
            handle.seek(offset)
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
            on_chunk(len(chunk))
            yield chunk
    finally:
        handle.close()


@dataclass(frozen=True)
class LocalFile:
    path: Path
    media_type: str

    @property
    def title(self) -> str:
        return self.path.name


def model_media_type(path: Path) -> str:
    suffix = path.suffix.lower()
    name = path.name.lower()
    if suffix in (".safetensors", ".gguf") and "adapter" in name:
        return LORA
    return MODEL_MEDIA_TYPES.get(suffix, "application/octet-stream")


def model_files(directory: Path) -> list[LocalFile]:
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory", exit_code=2)
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise CliError(f"{directory} holds no files to push", exit_code=2)
    return [LocalFile(p, model_media_type(p)) for p in files]


def local_files(specs: Sequence[str]) -> list[LocalFile]:
    out = []
    for spec in specs:
        path_text, media_type = spec, mt.OCI_LAYER_TAR  # oras' default for a file
        if ":" in spec and not Path(spec).exists():
            path_text, _, media_type = spec.rpartition(":")
        path = Path(path_text)
        if not path.is_file():
            raise CliError(f"{path}: no such file", exit_code=2)
        out.append(LocalFile(path, media_type))
    return out


def _annotations(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"annotation {pair!r} is not KEY=VALUE", exit_code=2)
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------- push, pull


async def push_files(client: OciClient, ref: ImageReference, files: Sequence[LocalFile], *, artifact_type: str,
                     annotations: dict[str, str], subject: ImageReference | None, out: Out) -> dict[str, Any]:
    """Push `files` as the layers of an artifact manifest (empty config, titles), tagged by `ref`."""
    repo = ref.repository
    titles = [f.title for f in files]
    if len(set(titles)) != len(titles):
        raise CliError("two files have the same name", exit_code=2)
    subject_desc = None
    if subject is not None:
        if subject.repository != repo:
            raise CliError("the subject (base) must be in the same repository", exit_code=2)
        subject_desc = await client.resolve(repo, subject.reference)
    layers: list[dict[str, Any]] = []
    with out.bar() as bar:
        for f in files:
            digest, size = await file_digest(f.path)
            task = bar.add_task(f.title, total=size)

            def advance(n: int, task: Any = task) -> None:
                bar.update(task, advance=n)

            def done(n: int, task: Any = task) -> None:
                bar.update(task, completed=n)

            if size > CHUNKED_ABOVE:
                transfer = await push_resumable(client, repo, f.path, digest, size, done)
            else:
                result = await client.push_blob(repo, file_chunks(f.path, advance), digest=digest, size=size)
                transfer = {"uploaded": result, "resumed_from": 0, "bytes_sent": size if result == "uploaded" else 0}
            bar.update(task, completed=size)
            layers.append({"mediaType": f.media_type, "digest": str(digest), "size": size,
                           "annotations": {TITLE: f.title}, "_result": transfer})
        await client.push_blob(repo, EMPTY_CONFIG, digest=Digest.of(EMPTY_CONFIG), size=len(EMPTY_CONFIG))
    created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": mt.OCI_EMPTY, "digest": str(Digest.of(EMPTY_CONFIG)), "size": 2, "data": "e30="},
        "layers": [{k: v for k, v in layer.items() if k != "_result"} for layer in layers],
        "annotations": {CREATED: created, **annotations},
    }
    if subject_desc is not None:
        doc["subject"] = {"mediaType": subject_desc.media_type, "digest": str(subject_desc.digest),
                          "size": subject_desc.size}
    body = json.dumps(doc, separators=(",", ":")).encode()
    reference = ref.tag if ref.digest is None else None
    pushed = await client.push_manifest(repo, body, reference=reference, media_type=mt.OCI_MANIFEST)
    if ref.digest is not None and pushed.digest != ref.digest:
        raise CliError(f"the manifest has digest {pushed.digest}, not {ref.digest}")
    return {
        "reference": str(ref), "digest": str(pushed.digest), "media_type": mt.OCI_MANIFEST,
        "artifact_type": artifact_type, "size": pushed.size,
        "subject": str(subject_desc.digest) if subject_desc else None,
        "files": [{"name": layer["annotations"][TITLE], "media_type": layer["mediaType"], "digest": layer["digest"],
                   "size": layer["size"], **layer["_result"]} for layer in layers],
    }


async def push_resumable(client: OciClient, repo: RemoteRepository, path: Path, digest: Digest, size: int,
                         progress: Callable[[int], None]) -> dict[str, Any]:
    """A large file in PATCH chunks whose session is saved after every chunk (services/cli/upload_state.py):
    a run killed mid-way is continued by the next one from the registry's offset."""
    if await client.blob_size(repo, digest) is not None:
        upload_state.remove(repo.registry, str(repo.name), str(digest))
        return {"uploaded": "exists", "resumed_from": 0, "bytes_sent": 0}
    saved = upload_state.load(repo.registry, str(repo.name), str(digest), size)

    def remember(session: UploadSession) -> None:
        upload_state.save(upload_state.UploadState(registry=repo.registry, repository=str(repo.name),
                                                   digest=str(digest), size=size, location=str(session.location),
                                                   offset=session.offset))
        progress(session.offset)

    result = await client.push_blob_resumable(
        repo, lambda offset: file_chunks(path, lambda n: None, offset=offset), digest=digest, size=size,
        chunk_size=PUSH_CHUNK, session=URL(saved.location) if saved else None, on_session=remember)
    upload_state.remove(repo.registry, str(repo.name), str(digest))
    return {"uploaded": "uploaded", "resumed_from": result.resumed_from, "bytes_sent": result.bytes_sent,
            "resumes": result.resumes}


async def _hash_prefix(path: Path, digest: Digest, size: int) -> Digester | None:
    """A digester over a `.part` file an earlier pull left (None: nothing usable; an over-long one is dropped)."""
    def run() -> Digester | None:
        try:
            held = path.stat().st_size
        except FileNotFoundError:
            return None
        if held == 0 or held > size:
            path.unlink()
            return None
        digester = Digester(digest.algorithm)
        with path.open("rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                digester.update(chunk)
        return digester

    return await asyncio.to_thread(run)


async def pull_to_file(client: OciClient, repo: RemoteRepository, digest: Digest, size: int, target: Path,
                       progress: Callable[[int], None]) -> dict[str, Any]:
    """One blob into `target`, through `.<name>.part` beside it: a part left by a killed run is hashed and
    continued with `Range`, the digest checked over the whole file before it is renamed into place. A part
    that does not verify is deleted and the blob pulled once more from zero (the part may have been another
    file's, or damaged); a fresh pull that does not verify is an error."""
    partial = target.with_name(f".{target.name}.part")
    prefix = await _hash_prefix(partial, digest, size)
    resumed_from = prefix.size if prefix else 0
    progress(resumed_from)
    received = 0
    try:
        with partial.open("ab" if prefix else "wb") as handle:
            async for chunk in client.pull_blob(repo, digest, size=size, prefix=prefix):
                await asyncio.to_thread(handle.write, chunk)
                received += len(chunk)
                progress(resumed_from + received)
    except OciDigestMismatchError:
        partial.unlink(missing_ok=True)
        if prefix is None:
            raise
        log.warning("%s: the part left by an earlier pull does not verify; pulling it again", target.name)
        again = await pull_to_file(client, repo, digest, size, target, progress)
        return {**again, "bytes_received": received + again["bytes_received"]}
    os.replace(partial, target)
    return {"resumed_from": resumed_from, "bytes_received": received}


async def pull_files(client: OciClient, ref: ImageReference, directory: Path, *, out: Out) -> dict[str, Any]:
    """Every titled layer of an artifact into `directory` (through `.NAME.part`, renamed when verified)."""
    repo = ref.repository
    fetched = await client.get_manifest(repo, ref.reference)
    doc = fetched.json()
    if fetched.descriptor.media_type in mt.INDEX_TYPES or not isinstance(doc.get("layers"), list):
        raise CliError(f"{ref} is an index, not an artifact with files; pull one of its manifests")
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    with out.bar() as bar:
        for index, layer in enumerate(doc["layers"]):
            title = (layer.get("annotations") or {}).get(TITLE)
            if not title:
                continue  # oras skips untitled layers too
            name = _check_title(str(title))
            digest, size = Digest.parse(str(layer["digest"])), int(layer["size"])
            target = directory / name
            task = bar.add_task(name, total=size)

            def done(n: int, task: Any = task) -> None:
                bar.update(task, completed=n)

            transfer = await pull_to_file(client, repo, digest, size, target, done)
            files.append({"name": name, "media_type": layer.get("mediaType"), "digest": str(digest), "size": size,
                          "path": str(target), "layer": index, **transfer})
    return {"reference": str(ref), "digest": str(fetched.descriptor.digest), "artifact_type": doc.get("artifactType"),
            "files": files}


# ---------------------------------------------------------------------------------------------- images on disk


def _progress(bar: Any) -> layouts.Progress:
    tasks: dict[str, Any] = {}

    def update(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=done)

    return update


async def push_image(client: OciClient, ref: ImageReference, source: str, *, out: Out) -> dict[str, Any]:
    """`push REF --from oci:DIR[:TAG]|docker-archive:FILE`."""
    try:
        location = layouts.parse_location(source)
        tag = str(ref.tag) if ref.digest is None and ref.tag is not None else None
        with out.bar() as bar:
            if location.kind == "oci":
                result = await layouts.push_oci_layout(client, ref.repository, location, tag=tag,
                                                       progress=_progress(bar))
            else:
                result = await layouts.push_docker_archive(client, ref.repository, location, tag=tag,
                                                           progress=_progress(bar))
    except layouts.LayoutError as exc:
        raise CliError(str(exc), exit_code=2) from None
    if ref.digest is not None and result["digest"] != str(ref.digest):
        raise CliError(f"the image has digest {result['digest']}, not {ref.digest}")
    return {"reference": str(ref), "source": source, **result}


def _this_platform() -> str:
    machine = host_platform.machine().lower()
    return "linux/" + {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7"}.get(machine, machine)


def pick_platform(index: dict[str, Any], wanted: str) -> Digest:
    """The digest of `wanted` (os/arch[/variant]) in an index; CliError listing what it has otherwise."""
    have = []
    for m in index.get("manifests") or []:
        p = m.get("platform") or {}
        name = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
        have.append(name)
        if name == wanted or (name.count("/") == 2 and wanted.count("/") == 1 and name.startswith(wanted + "/")):
            return Digest.parse(str(m["digest"]))
    raise CliError(f"the index has no {wanted} image (it has: {', '.join(have) or 'none'}); use --platform",
                   exit_code=2)


async def pull_image(client: OciClient, ref: ImageReference, destination: str, *, platform: str | None,
                     out: Out) -> dict[str, Any]:
    """`pull REF --to oci:DIR[:TAG]|docker-archive:FILE`."""
    repo = ref.repository
    try:
        location = layouts.parse_location(destination)
        with out.bar() as bar:
            if location.kind == "oci":
                tag = location.tag or (str(ref.tag) if ref.tag is not None else None)
                result = await layouts.pull_oci_layout(client, repo, ref.reference, location, tag=tag,
                                                       progress=_progress(bar))
                return {"reference": str(ref), "destination": destination, **result}
            fetched = await client.get_manifest(repo, ref.reference)
            top = fetched.descriptor.digest
            if fetched.descriptor.media_type in mt.INDEX_TYPES:
                fetched = await client.get_manifest(repo, pick_platform(fetched.json(), platform or _this_platform()))
            repo_tag = location.tag or f"{repo.registry}/{repo.name}:{ref.tag or 'latest'}"
            result = await layouts.pull_docker_archive(client, repo, fetched.json(), location, repo_tag=repo_tag,
                                                       progress=_progress(bar))
    except layouts.LayoutError as exc:
        raise CliError(str(exc), exit_code=2) from None
    return {"reference": str(ref), "destination": destination, "digest": str(top),
            "image": str(fetched.descriptor.digest), **result}


# ---------------------------------------------------------------------------------------------- management API


async def api_get(client: OciClient, registry: str, path: str, *, scopes: Sequence[str],
                  params: dict[str, str] | None = None) -> Any:
    async with client.transport.expect(registry, "GET", path, ok=(200,), scopes=scopes, params=params) as resp:
        return await resp.json(content_type=None)


async def model_view(client: OciClient, ref: ImageReference, *, wait: float = MODEL_POLL_SECONDS) -> dict[str, Any]:
    """The registry's model view of `ref`, polled while it is pending (up to `wait` seconds)."""
    repo = ref.repository
    path = f"/v1/registry/{repo.name}/{ref.reference}/model"
    scopes = (repository_scope(str(repo.name), "pull"),)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        view: dict[str, Any] = await api_get(client, repo.registry, path, scopes=scopes)
        if view.get("status") != "pending" or loop.time() > deadline:
            return view
        await asyncio.sleep(1.0)


async def list_models(client: OciClient, registry: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    params = {k: str(v) for k in ("architecture", "format", "quantization", "min_parameters", "max_parameters", "q")
              if (v := getattr(args, k, None)) is not None}
    models: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = await api_get(client, registry, "/v1/registry/models", scopes=(),
                             params={**params, **({"after": after} if after else {})})
        models += page.get("models") or []
        after = page.get("next")
        if not after:
            return models


# ---------------------------------------------------------------------------------------------- commands


def _view_text(view: dict[str, Any]) -> str:
    if view.get("status") == "pending":
        return f"{view.get('repository')}@{view.get('digest')}: the model view is still being indexed"
    lineage = view.get("lineage") or {}
    lines = [
        f"digest:         {view.get('digest')}",
        f"name:           {view.get('name') or '-'}",
        f"format:         {view.get('format') or '-'}",
        f"architecture:   {view.get('architecture') or '-'}",
        f"parameters:     {count(view.get('parameters'))}",
        f"quantization:   {view.get('quantization') or '-'}",
        f"context length: {view.get('context_length') or '-'}",
        f"dtypes:         {', '.join(view.get('dtypes') or []) or '-'}",
        f"lineage:        {lineage.get('relation', '-')}"
        + (f" of {lineage['subject']['digest']}" if lineage.get("subject") else "")
        + (f" (base model {lineage['base_model']})" if lineage.get("base_model") else ""),
        "files:",
    ]
    for f in view.get("files") or []:
        extra = f", {count(f.get('parameters'))} parameters, {f.get('tensors')} tensors" \
            if f.get("parameters") is not None else ""
        lines.append(f"  {f.get('name')}  {f.get('format') or '-'}  {human(f.get('size'))}{extra}")
    for finding in view.get("findings") or []:
        lines.append(f"finding: {finding.get('severity')}: {finding.get('file')}: {finding.get('message')}")
    return "\n".join(lines)


async def _inspect(client: OciClient, ref: ImageReference) -> dict[str, Any]:
    repo = ref.repository
    fetched = await client.get_manifest(repo, ref.reference)
    doc = fetched.json()
    desc = fetched.descriptor
    result: dict[str, Any] = {"reference": str(ref), "digest": str(desc.digest), "media_type": desc.media_type,
                              "size": desc.size, "artifact_type": doc.get("artifactType"),
                              "annotations": doc.get("annotations") or {}, "manifest": doc}
    if desc.media_type in mt.INDEX_TYPES:
        platforms = []
        for m in doc.get("manifests") or []:
            p = m.get("platform") or {}
            name = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x) or "unknown"
            entry: dict[str, Any] = {"platform": name, "digest": m.get("digest"), "media_type": m.get("mediaType")}
            try:
                child = (await client.get_manifest(repo, Digest.parse(str(m["digest"])))).json()
                parts = [child.get("config") or {}, *child.get("layers", [])]
                entry["size"] = sum(int(x.get("size", 0)) for x in parts)
            except (OciClientError, RegistryError, KeyError, ValueError, TypeError):
                entry["size"] = None
            platforms.append(entry)
        result["platforms"] = platforms
        result["total_size"] = sum(p["size"] or 0 for p in platforms)
    else:
        config = doc.get("config") or {}
        layers = doc.get("layers") or []
        result["config"] = {"media_type": config.get("mediaType"), "digest": config.get("digest"),
                            "size": config.get("size")}
        result["layers"] = [{"media_type": x.get("mediaType"), "digest": x.get("digest"), "size": x.get("size"),
                             "title": (x.get("annotations") or {}).get(TITLE)} for x in layers]
        result["total_size"] = sum(int(x.get("size", 0)) for x in [config, *layers])
        result["subject"] = (doc.get("subject") or {}).get("digest")
        try:
            view = await model_view(client, ref if ref.digest else ImageReference(repo, None, desc.digest), wait=10)
            result["model"] = view
        except OciNotFoundError as exc:
            if exc.code not in ("MODEL_UNKNOWN", "NOT_FOUND"):
                raise
    return result


def _inspect_text(r: dict[str, Any]) -> str:
    lines = [f"reference:  {r['reference']}", f"digest:     {r['digest']}", f"media type: {r['media_type']}"]
    if r.get("artifact_type"):
        lines.append(f"artifact:   {r['artifact_type']}")
    if "platforms" in r:
        lines.append("platforms:")
        lines += [f"  {p['platform']:<20} {p['digest']}  {human(p['size'])}" for p in r["platforms"]]
    else:
        lines.append(f"config:     {r['config']['media_type']}  {human(r['config']['size'])}")
        lines.append("layers:")
        lines += [f"  {x['digest']}  {human(x['size'])}  {x['media_type']}" + (f"  {x['title']}" if x["title"] else "")
                  for x in r["layers"]]
        if r.get("subject"):
            lines.append(f"subject:    {r['subject']}")
    lines.append(f"total size: {human(r['total_size'])}")
    if r.get("model"):
        lines += ["model:", *("  " + line for line in _view_text(r["model"]).splitlines())]
    return "\n".join(lines)


async def run(args: argparse.Namespace, out: Out, stdin: IO[str]) -> int:
    command = args.command if args.command != "model" else f"model {args.model_command}"
    if command == "logout":
        removed = dockerconfig.erase(registry_of(args.registry))
        out.emit({"registry": args.registry, "removed": removed},
                 f"removed the credentials of {args.registry}" if removed else f"no credentials for {args.registry}")
        return 0
    refs: list[ImageReference] = []
    registry: str
    if command == "login":
        registry = registry_of(args.registry)
        if not args.username:
            raise CliError("login needs -u/--username (and --password-stdin or $HANZO_REGISTRY_API_KEY)", exit_code=2)
        password = _password(args, stdin)
        if not password:
            raise CliError("login needs a password: --password-stdin or $HANZO_REGISTRY_API_KEY", exit_code=2)
        opts = ClientOptions(registries={registry: RegistryOptions(
            credentials=Credentials(args.username, password), plain_http=True if args.plain_http else None,
            insecure=args.insecure, ca_file=args.ca_file)})
        async with OciClient(opts) as client:
            await client.ping(registry)  # with token auth: the token endpoint checks the credentials
        path = dockerconfig.store(registry, args.username, password)
        out.emit({"registry": registry, "config": str(path)}, f"Login Succeeded ({registry}; saved in {path})")
        return 0
    if command in ("ls", "model ls"):
        target = args.target
        models = command == "model ls" or args.models
        if target and ("/" in target or not _is_registry(target)):
            repo = parse_repository(target)
            registry = repo.registry
        else:
            repo, registry = None, registry_of(target)
        async with OciClient(options(args, [registry], stdin)) as client:
            if models:
                found = await list_models(client, registry, args)
                if repo is not None:
                    found = [m for m in found if m.get("repository") == str(repo.name)]
                out.emit(found, lambda: "\n".join(
                    f"{m['repository']}@{m['digest']}  {m.get('name') or '-'}  {m.get('format') or '-'}  "
                    f"{m.get('architecture') or '-'}  {count(m.get('parameters'))}  {m.get('quantization') or '-'}"
                    for m in found))
            elif repo is not None:
                tags = [t async for t in client.list_tags(repo)]
                out.emit({"repository": str(repo), "tags": tags}, "\n".join(tags))
            else:
                names = [n async for n in client.catalog(registry)]
                out.emit({"registry": registry, "repositories": names}, "\n".join(names))
        return 0
    ref = parse_reference(args.reference)
    refs.append(ref)
    subject_text = getattr(args, "subject", None) or getattr(args, "base", None)
    subject = parse_reference(subject_text) if subject_text else None
    basic = command in ("scan", "verify")
    async with OciClient(options(args, [r.repository.registry for r in refs], stdin, basic=basic)) as client:
        if command == "push" and getattr(args, "source", None):
            result = await push_image(client, ref, args.source, out=out)
            out.emit(result, f"pushed {ref} ({result['digest']}) from {args.source}")
        elif command == "pull" and getattr(args, "destination", None):
            result = await pull_image(client, ref, args.destination, platform=args.platform, out=out)
            out.emit(result, f"pulled {ref} ({result['digest']}) into {args.destination}")
        elif command == "scan":
            report = await checks.scan(client, ref, rescan=args.rescan, wait=args.wait)
            out.emit(report, lambda: checks.scan_text(report))
        elif command == "verify":
            try:
                verdict = await checks.verify(client, ref, key=args.key_ref)
            except ValueError as exc:
                raise CliError(str(exc), exit_code=2) from None
            out.emit(verdict, lambda: checks.verify_text(verdict))
            if not verdict["verified"]:
                raise CliError(f"{ref}: no signature verified" + (f" by {args.key_ref}" if args.key_ref else ""))
        elif command in ("push", "model push"):
            if command == "push":
                files = local_files(args.files)
                annotations, artifact_type = _annotations(args.annotation), args.artifact_type
            else:
                files = model_files(Path(args.directory))
                annotations, artifact_type = _annotations(args.annotation), MODEL_ARTIFACT
                relation = args.relation or ("adapter" if any(f.media_type == LORA or f.title == "adapter_config.json"
                                                              for f in files) and subject else None)
                if relation:
                    annotations[RELATION] = relation
            result = await push_files(client, ref, files, artifact_type=artifact_type, annotations=annotations,
                                      subject=subject, out=out)
            out.emit(result, f"pushed {ref} ({result['digest']}, {len(files)} files)")
        elif command in ("pull", "model pull"):
            directory = Path(args.dir if command == "pull" else args.directory)
            result = await pull_files(client, ref, directory, out=out)
            out.emit(result, lambda: "\n".join(
                [*(f"{f['path']}  {human(f['size'])}" for f in result["files"]), f"pulled {ref} ({result['digest']})"]))
        elif command == "rm":
            desc = await client.resolve(ref.repository, ref.reference)
            await client.delete_manifest(ref.repository, desc.digest)
            out.emit({"reference": str(ref), "digest": str(desc.digest), "deleted": True},
                     f"deleted {ref.repository}@{desc.digest}")
        elif command == "inspect":
            result = await _inspect(client, ref)
            out.emit(result, lambda: _inspect_text(result))
        elif command == "model inspect":
            try:
                view = await model_view(client, ref)
            except OciNotFoundError as exc:
                if exc.code == "MODEL_UNKNOWN":
                    raise CliError(f"{ref} is not a model") from None
                raise
            out.emit(view, lambda: _view_text(view))
        else:  # pragma: no cover - argparse allows nothing else
            raise CliError(f"unknown command {command}", exit_code=2)
    return 0


def _explain(exc: BaseException) -> tuple[str, int]:
    """One line and an exit code for an error of the OCI client."""
    if isinstance(exc, OciConnectionError):
        cause = exc.__cause__
        text = str(exc) if cause is None else f"{str(exc).split(': ', 1)[0]}: {str(cause) or type(cause).__name__}"
        return f"cannot reach the registry (or the connection was lost): {text[:300]}", 3
    if isinstance(exc, OciAuthenticationError):
        return f"authentication failed: {exc}", 1
    if isinstance(exc, OciUnauthorizedError):
        return (f"unauthorized: {exc.message} (log in with `hanzo-registry login REGISTRY -u USER "
                f"--password-stdin`, or set $HANZO_REGISTRY_API_KEY)"), 1
    if isinstance(exc, OciDeniedError):
        return f"denied: {exc.message}", 1
    if isinstance(exc, OciNotFoundError):
        return f"not found: {exc.message}", 1
    if isinstance(exc, OciResponseError):
        return f"the registry refused: {exc.status} {exc.message}", 1
    if isinstance(exc, OciDigestMismatchError):
        return f"content does not match its digest: {exc}", 1
    return f"{type(exc).__name__}: {exc}", 1


def main(args: argparse.Namespace, *, stdin: IO[str]) -> int:
    name = args.command if args.command != "model" else f"model {args.model_command}"
    as_json = getattr(args, "output", "text") == "json"
    out = Out(json=as_json, progress=not as_json and not getattr(args, "quiet", False) and sys.stderr.isatty())
    try:
        return asyncio.run(run(args, out, stdin))
    except CliError as exc:
        message, code = str(exc), exc.exit_code
    except OciClientError as exc:
        message, code = _explain(exc)
    except OSError as exc:
        message, code = f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}", 2
    except KeyboardInterrupt:
        message, code = "interrupted", 130
    print(f"hanzo-registry {name}: {message}", file=sys.stderr)
    return code
