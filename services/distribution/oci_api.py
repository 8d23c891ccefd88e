"""HTTP handlers of the OCI Distribution API (/v2/): parse the request, call Registry, shape the reply."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from aiohttp import web
from multidict import CIMultiDict

from services.core.content.registry import Registry
from services.core.errors import (
    DeniedError,
    DigestInvalidError,
    ManifestTooLargeError,
    ManifestUnknownError,
    NameInvalidError,
    PaginationNumberInvalidError,
    RangeInvalidError,
    SizeInvalidError,
    TagInvalidError,
    TooManyTagsError,
    UnauthorizedError,
    UnsupportedError,
)
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag, parse_reference
from services.core.oci.ranges import parse_content_range, parse_range_header
from services.core.storage.blobs import BlobPresigner, LocalBlobFiles
from services.distribution.access import DELETE, PULL, PUSH, AccessControl, Principal
from services.distribution.cache.service import STALE_WARNING
from services.distribution.keys import ACCESS, AUDIT_DETAIL, GATES, METRICS, PULLTHROUGH, REGISTRY, SETTINGS
from services.distribution.sendfile import send_file

CHUNK = 1 << 20
REFERRERS_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MAX_PAGE = 10_000
MAX_TAG_PARAMS = 100
CATALOG_SCAN_LIMIT = 5000
_UPLOADS, _BLOBS, _MANIFESTS, _REFERRERS, _TAGS = (
    "/blobs/uploads",
    "/blobs/",
    "/manifests/",
    "/referrers/",
    "/tags/list",
)


@dataclass(frozen=True, slots=True)
class Route:
    kind: str  # uploads | upload | blob | manifest | referrers | tags
    name: str
    rest: str = ""


def route_of(path: str) -> Route | None:
    """Split `/v2/<name>/<kind>/...` on the last kind segment, since names contain `/`."""
    tail = path[len("/v2/") :]
    if tail.endswith(_TAGS):
        return Route("tags", tail[: -len(_TAGS)])
    for marker, kind in ((_UPLOADS + "/", "upload"), (_MANIFESTS, "manifest"), (_REFERRERS, "referrers")):
        name, found, rest = tail.rpartition(marker)
        if found and "/" not in rest:
            if kind == "upload" and not rest:
                return Route("uploads", name)
            return Route(kind, name, rest)
    if tail.endswith(_UPLOADS):
        return Route("uploads", tail[: -len(_UPLOADS)])
    name, found, rest = tail.rpartition(_BLOBS)
    if found and rest and "/" not in rest:
        return Route("blob", name, rest)
    return None


def _repo(route: Route) -> RepositoryName:
    if not route.name:
        raise NameInvalidError("repository name is empty")
    return RepositoryName(route.name)


def _registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def _access(request: web.Request) -> AccessControl:
    return request.app[ACCESS]


async def _allow(request: web.Request, repo: RepositoryName, *actions: str) -> Principal:
    access = _access(request)
    principal = await access.authenticate(request)
    await access.authorize(request, principal, str(repo), actions)
    return principal


def _count(request: web.Request, direction: str, n: int) -> None:
    request.app[METRICS].blob_bytes.labels(service="distribution", direction=direction).inc(n)


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        total += len(chunk)
        yield chunk
    _count(request, "in", total)


def _upload_location(repo: RepositoryName, upload_id: str) -> str:
    return f"/v2/{repo}/blobs/uploads/{upload_id}"


def _range_header(size: int) -> str:
    return f"0-{max(size - 1, 0)}"


def _upload_accepted(
    request: web.Request, repo: RepositoryName, upload_id: str, size: int, status: int
) -> web.Response:
    headers = {
        "Location": _upload_location(repo, upload_id),
        "Range": _range_header(size),
        "Docker-Upload-UUID": upload_id,
        "Content-Length": "0",
    }
    min_chunk = request.app[SETTINGS].registry.upload_chunk_min_bytes
    if min_chunk:
        headers["OCI-Chunk-Min-Length"] = str(min_chunk)
    return web.Response(status=status, headers=headers)


def _blob_created(repo: RepositoryName, digest: Digest) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": f"/v2/{repo}/blobs/{digest}",
            "Docker-Content-Digest": str(digest),
            "Content-Length": "0",
        },
    )


def _query_digest(request: web.Request, name: str = "digest") -> Digest | None:
    value = request.query.get(name)
    return None if value is None else Digest.parse(value)


def _chunk_offset(request: web.Request) -> int | None:
    """Where a chunk starts, from its Content-Range (None: a streamed chunk appends at the end)."""
    content_range = request.headers.get("Content-Range")
    if not content_range:
        return None
    start, end = parse_content_range(content_range)
    if request.content_length is not None and request.content_length != end - start + 1:
        raise SizeInvalidError(f"Content-Length {request.content_length} does not match Content-Range {start}-{end}")
    return start


# handlers


async def base(request: web.Request) -> web.Response:
    access = _access(request)
    principal = await access.authenticate(request)
    await access.authorize(request, principal, "", ())
    return web.json_response({})


async def dispatch(request: web.Request) -> web.StreamResponse:
    route = route_of(request.path)
    if route is None:
        raise web.HTTPNotFound()
    handler = _HANDLERS.get((route.kind, request.method))
    if handler is None:
        raise UnsupportedError(f"{request.method} is not supported on {route.kind} endpoints")
    cache = request.app.get(PULLTHROUGH)
    if cache is not None:
        # Pull-through cache (services/distribution/cache/): a containerd mirror request (?ns=<upstream host>)
        # is served from that upstream's cached repository; pushes under the cache namespace are refused.
        route = dataclasses.replace(route, name=await cache.mirror_name(request.query.get("ns"), route.name))
        cache.refuse_writes(route.name, kind=route.kind, method=request.method)
    return await handler(request, route)


async def get_blob(request: web.Request, route: Route) -> web.StreamResponse:
    repo = _repo(route)
    digest = Digest.parse(route.rest)
    await _allow(request, repo, PULL)
    registry = _registry(request)
    cache = request.app.get(PULLTHROUGH)
    if cache is not None and cache.covers(str(repo)) and not await cache.is_cached(repo, digest):
        # Pull-through miss: streamed from upstream while stored (None: linked from local bytes, served below).
        fetched = await cache.serve_blob(request, repo, digest, lambda n: _count(request, "out", n))
        if fetched is not None:
            return fetched
    settings = request.app[SETTINGS]
    redirect = settings.storage.redirect and isinstance(registry.blobs, BlobPresigner)
    if request.method == "GET" and not redirect:
        info = await registry.linked_blob(repo, digest)  # the read below finds out if the bytes are gone
    else:
        info = await registry.stat_blob(repo, digest)
    etag = f'"{digest}"'
    headers = {
        "Docker-Content-Digest": str(digest),
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "ETag": etag,
        "Cache-Control": "max-age=31536000, immutable",
    }
    if etag in request.headers.get("If-None-Match", ""):
        # Content-addressed: a client holding this digest holds these bytes.
        return web.Response(status=304, headers={"ETag": etag, "Docker-Content-Digest": str(digest)})
    if request.method == "GET" and redirect:
        assert isinstance(registry.blobs, BlobPresigner)
        url = await registry.blobs.presign_get(digest, expires_seconds=settings.storage.redirect_expiry_seconds)
        return web.Response(status=307, headers={"Location": url, "Docker-Content-Digest": str(digest)})
    byte_range = parse_range_header(request.headers.get("Range"), info.size)
    if byte_range is None:
        status, offset, length = 200, 0, info.size
    else:
        status, offset, length = 206, byte_range.start, byte_range.length
        headers["Content-Range"] = byte_range.content_range(info.size)
    headers["Content-Length"] = str(length)
    response = web.StreamResponse(status=status, headers=headers)
    if request.method == "HEAD":
        return response
    if cache is not None and cache.covers(str(repo)):
        await cache.blob_served(repo, digest, length)  # pull-through hit: metrics and last-pull time
    path = registry.blobs.local_path(digest) if isinstance(registry.blobs, LocalBlobFiles) else None
    if path is not None:
        await send_file(request, response, path, offset, length)
    else:
        chunks = registry.blobs.read(digest, offset=offset, length=length)
        # The first chunk before the headers: bytes missing from storage are still a clean 404.
        first = await anext(chunks, b"")
        await response.prepare(request)
        if first:
            await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    _count(request, "out", length)
    return response


async def delete_blob(request: web.Request, route: Route) -> web.Response:
    repo = _repo(route)
    digest = Digest.parse(route.rest)
    principal = await _allow(request, repo, DELETE)
    await _registry(request).delete_blob(repo, digest, actor=principal.name)
    return web.Response(status=202, headers={"Content-Length": "0"})


async def start_upload(request: web.Request, route: Route) -> web.Response:
    repo = _repo(route)
    principal = await _allow(request, repo, PULL, PUSH)
    registry = _registry(request)
    mount = _query_digest(request, "mount")
    source = request.query.get("from")
    if mount is not None:
        sources = [source] if source else await registry.meta.repositories_linking(mount, limit=50)
        for candidate in sources:
            source_repo = RepositoryName(candidate)
            if source_repo != repo and await _access(request).can_mount_from(principal, str(source_repo)):
                mounted = await registry.mount(repo, source_repo, mount)
                if mounted is not None:
                    return _blob_created(repo, mounted.digest)
    digest = _query_digest(request)
    if digest is not None:
        info = await registry.put_blob(repo, digest, _body(request), actor=principal.name)
        return _blob_created(repo, info.digest)
    upload_id = await registry.start_upload(repo, actor=principal.name)
    return _upload_accepted(request, repo, upload_id, 0, 202)


async def upload_status(request: web.Request, route: Route) -> web.Response:
    repo = _repo(route)
    await _allow(request, repo, PULL, PUSH)
    size = await _registry(request).upload_size(repo, route.rest)
    return _upload_accepted(request, repo, route.rest, size, 204)


async def patch_upload(request: web.Request, route: Route) -> web.Response:
    repo = _repo(route)
    await _allow(request, repo, PULL, PUSH)
    registry = _registry(request)
    offset = _chunk_offset(request)
    try:
        size = await registry.append(repo, route.rest, _body(request), offset=offset)
    except RangeInvalidError:
        current = await registry.upload_size(repo, route.rest)
        raise RangeInvalidError(
            f"chunk does not start at the next expected offset {current} of upload {route.rest}",
            headers={"Range": _range_header(current), "Location": _upload_location(repo, route.rest)},
        ) from None
    return _upload_accepted(request, repo, route.rest, size, 202)


async def finish_upload(request: web.Request, route: Route) -> web.Response:
    repo = _repo(route)
    await _allow(request, repo, PULL, PUSH)
    digest = _query_digest(request)
    if digest is None:
        raise DigestInvalidError("the final PUT of an upload needs ?digest=<digest of the whole blob>")
    registry = _registry(request)
    offset = _chunk_offset(request)
    body = _body(request) if offset is not None or request.content_length or request.body_exists else None
    info = await registry.finish_upload(repo, route.rest, digest, body=body, offset=offset)
    return _blob_created(repo, info.digest)


async def cancel_upload(request: web.Request, route: Route) -> web.Response:
    repo = _repo(route)
    await _allow(request, repo, PUSH)
    await _registry(request).cancel_upload(repo, route.rest)
    return web.Response(status=204)


async def _may_push(request: web.Request, principal: Principal, repo: RepositoryName) -> bool:
    """Whether an authenticated caller may push to `repo` with the credential it sent (never anonymous, so
    `auth.mode: none` gates everyone)."""
    if principal.anonymous:
        return False
    try:
        await _access(request).authorize(request, principal, str(repo), (PULL, PUSH))
    except (DeniedError, UnauthorizedError):
        return False
    return True


def _accepts(request: web.Request, media_type: str) -> bool:
    accept = request.headers.getall("Accept", [])
    types = {part.split(";", 1)[0].strip() for header in accept for part in header.split(",")}
    types.discard("")
    # Old clients ask for `application/json` to get whatever is stored; we never convert, so serving
    # the stored bytes is right.
    return not types or bool({media_type, "*/*", "application/json"} & types)


def _lookup_reference(repo: RepositoryName, text: str) -> Tag | Digest:
    """For reads, a malformed tag simply names nothing (404), as the spec's conformance suite expects."""
    try:
        return parse_reference(text)
    except TagInvalidError:
        raise ManifestUnknownError(f"manifest {text[:130]!r} is not in repository {repo}") from None


async def get_manifest(request: web.Request, route: Route) -> web.StreamResponse:
    repo = _repo(route)
    reference = _lookup_reference(repo, route.rest)
    principal = await _allow(request, repo, PULL)
    cache = request.app.get(PULLTHROUGH)
    stale = False
    if cache is not None and cache.covers(str(repo)):
        # Pull-through: cached, revalidated after the remote's ttl, or fetched; stale when the upstream fails.
        record, stale = await cache.manifest(repo, reference)
    else:
        record = await _registry(request).resolve(repo, reference)
    try:
        await request.app[GATES].check(repo.namespace, str(repo), record)
    except DeniedError:
        # Those who may push here read what they push: a CI job signs (cosign and notation read the image
        # first) or scans an image the gates still hold back from its consumers.
        if not await _may_push(request, principal, repo):
            raise
    if not _accepts(request, record.media_type):
        raise ManifestUnknownError(
            f"manifest {route.rest} of {repo} is a {record.media_type}, which the request's Accept header excludes"
        )
    headers = {
        "Content-Type": record.media_type,
        "Docker-Content-Digest": str(record.digest),
        "ETag": f'"{record.digest}"',
        "Content-Length": str(record.size),
    }
    if stale:
        headers["Warning"] = STALE_WARNING
    if request.method == "HEAD":
        return web.Response(status=200, headers=headers)
    return web.Response(status=200, body=record.data, headers=headers)


async def put_manifest(request: web.Request, route: Route) -> web.Response:
    repo = _repo(route)
    reference = parse_reference(route.rest)
    principal = await _allow(request, repo, PULL, PUSH)
    limit = request.app[SETTINGS].registry.max_manifest_bytes
    data = await _read_limited(request, limit)
    force = _force(request, principal, repo)
    extra_tags = request.query.getall("tag", [])
    if extra_tags and not isinstance(reference, Digest):
        raise TagInvalidError("?tag= parameters are only allowed on a push by digest")
    if len(extra_tags) > MAX_TAG_PARAMS:
        raise TooManyTagsError(f"at most {MAX_TAG_PARAMS} tag parameters per push; got {len(extra_tags)}")
    pushed = await _registry(request).put_manifest(
        repo,
        reference,
        data,
        request.headers.get("Content-Type"),
        actor=principal.name,
        extra_tags=[Tag(t) for t in extra_tags],
        force=force,
    )
    headers = CIMultiDict(
        {
            "Location": f"/v2/{repo}/manifests/{pushed.digest}",
            "Docker-Content-Digest": str(pushed.digest),
            "Content-Length": "0",
        }
    )
    if pushed.subject is not None:
        headers["OCI-Subject"] = str(pushed.subject)
    if extra_tags:
        for tag in pushed.tags:
            headers.add("OCI-Tag", tag)
    if pushed.forced_moves:
        request[AUDIT_DETAIL] = {
            "forced": "true",
            "previous": ",".join(f"{tag}={digest}" for tag, digest in pushed.forced_moves)[:600],
        }
    return web.Response(status=201, headers=headers)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ManifestTooLargeError(f"manifest is {request.content_length} bytes; the limit is {limit} bytes")
    parts: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        total += len(chunk)
        if total > limit:
            raise ManifestTooLargeError(f"manifest exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def delete_manifest(request: web.Request, route: Route) -> web.Response:
    repo = _repo(route)
    reference = _lookup_reference(repo, route.rest)
    principal = await _allow(request, repo, DELETE)
    force = _force(request, principal, repo)
    deleted = await _registry(request).delete_manifest(repo, reference, actor=principal.name, force=force)
    if force:
        request[AUDIT_DETAIL] = {
            "forced": "true",
            "digest": str(deleted.digest),
            "tags": ",".join(t.name for t in deleted.tags)[:600],
        }
    return web.Response(status=202, headers={"Content-Length": "0"})


def _force(request: web.Request, principal: Principal, repo: RepositoryName) -> bool:
    """X-Hanzo-Force: true moves or deletes an immutable tag; only registry admins may send it."""
    force = request.headers.get("X-Hanzo-Force", "").lower() == "true"
    if force and not principal.may_force:
        raise DeniedError(f"{principal.name} may not force changes to immutable tags in {repo}")
    return force


def _page(request: web.Request) -> tuple[int | None, str | None]:
    raw = request.query.get("n")
    limit: int | None = None
    if raw is not None:
        if not re.fullmatch(r"\d{1,9}", raw):
            raise PaginationNumberInvalidError(f"n must be a non-negative integer, not {raw[:40]!r}")
        limit = min(int(raw), MAX_PAGE)
    return limit, request.query.get("last") or None


def _next_link(path: str, limit: int, last: str, **extra: str) -> str:
    return f'<{path}?{urlencode({**extra, "n": limit, "last": last}, quote_via=quote)}>; rel="next"'


async def list_tags(request: web.Request, route: Route) -> web.Response:
    repo = _repo(route)
    await _allow(request, repo, PULL)
    limit, last = _page(request)
    if limit == 0:
        return web.json_response({"name": str(repo), "tags": []})
    fetch = None if limit is None else limit + 1
    tags = await _registry(request).list_tags(repo, after=last, limit=fetch)
    headers = {}
    if limit is not None and len(tags) > limit:
        tags = tags[:limit]
        headers["Link"] = _next_link(f"/v2/{repo}/tags/list", limit, tags[-1])
    return web.json_response({"name": str(repo), "tags": tags}, headers=headers)


async def catalog(request: web.Request) -> web.Response:
    access = _access(request)
    principal = await access.authenticate(request)
    await access.authorize_catalog(request, principal)
    limit, last = _page(request)
    page = limit if limit is not None else 1000
    if page == 0:
        return web.json_response({"repositories": []})
    repos: list[str] = []
    cursor = last
    more = False
    scanned = 0
    meta = _registry(request).meta
    while len(repos) <= page:
        batch = await meta.list_repositories(after=cursor, limit=page + 1)
        if not batch:
            break
        readable = await access.readable(principal, batch)
        if len(repos) + len(readable) > page:
            # The page is full: the next one starts after the last repository this one shows.
            repos.extend(readable[: page - len(repos)])
            cursor, more = repos[-1], True
            break
        repos.extend(readable)
        cursor = batch[-1]
        scanned += len(batch)
        if len(batch) < page + 1:
            break
        if scanned >= CATALOG_SCAN_LIMIT:
            # A caller who can read few of many repositories gets a short page and a link to go on,
            # rather than one request that reads the whole registry.
            more = True
            break
    headers = {"Link": _next_link("/v2/_catalog", page, cursor)} if more and cursor else {}
    return web.json_response({"repositories": repos}, headers=headers)


async def referrers(request: web.Request, route: Route) -> web.Response:
    repo = _repo(route)
    digest = Digest.parse(route.rest)
    await _allow(request, repo, PULL)
    artifact_type = request.query.get("artifactType") or None
    body = await _registry(request).referrers(repo, digest, artifact_type=artifact_type)
    headers = {"Content-Type": REFERRERS_MEDIA_TYPE}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    return web.Response(status=200, body=body, headers=headers)


_HANDLERS = {
    ("blob", "GET"): get_blob,
    ("blob", "HEAD"): get_blob,
    ("blob", "DELETE"): delete_blob,
    ("uploads", "POST"): start_upload,
    ("upload", "GET"): upload_status,
    ("upload", "PATCH"): patch_upload,
    ("upload", "PUT"): finish_upload,
    ("upload", "DELETE"): cancel_upload,
    ("manifest", "GET"): get_manifest,
    ("manifest", "HEAD"): get_manifest,
    ("manifest", "PUT"): put_manifest,
    ("manifest", "DELETE"): delete_manifest,
    ("tags", "GET"): list_tags,
    ("referrers", "GET"): referrers,
}
