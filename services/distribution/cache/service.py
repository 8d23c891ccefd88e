"""`PullThroughCache`: what the /v2 handlers call for a repository under `proxy.namespace`.

Manifests: by digest, cached forever; by tag, trusted for the remote's `ttl` after the upstream last confirmed
them, then revalidated with a HEAD (not a pull on Docker Hub); a moved tag is fetched again. Blobs: cached
forever (until GC), fetched once per digest while every client that wants them streams along. What is fetched
is stored through the content model (events, tags, GC guard). When the upstream fails (unreachable, slower than
`proxy.timeout_seconds`, 429, 5xx), cached content is served with `Warning: 110 - "stale"`; with nothing
cached the client gets 502 naming the upstream's answer, or 429 with the upstream's Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, TypeVar

import aiohttp
from aiohttp import web

from services.core.client import ClientOptions, OciClient, OciClientError
from services.core.content.cachefill import CacheFillRegistry
from services.core.content.registry import Registry
from services.core.errors import (
    BlobUnknownError,
    ManifestUnknownError,
    RegistryError,
    TooManyRequestsError,
    UnsupportedError,
)
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.oci.ranges import parse_range_header
from services.core.secrets import SecretBox, secret_box
from services.core.settings import Settings
from services.core.ssrf import Trust, UrlPolicy, guarded_connector
from services.core.storage.blobs import LocalBlobFiles
from services.core.storage.documents import DocumentStore
from services.core.storage.meta import ManifestRecord
from services.core.telemetry import Metrics
from services.distribution.cache.blobfetch import BlobFetches, FetchFailedError
from services.distribution.cache.records import BLOB, MANIFEST, CacheRecords
from services.distribution.cache.remotes import Remote, RemoteConfig, Upstream
from services.distribution.cache.upstream import (
    UpstreamFailure,
    blob_size,
    classify,
    get_manifest,
    guarded,
    head_manifest,
)

log = logging.getLogger(__name__)

ACTOR: Final = "pull-through"
STALE_WARNING: Final = '110 - "stale"'
DEFAULT_RETRY_AFTER: Final = "60"
T = TypeVar("T")


class UpstreamError(RegistryError):
    """The upstream failed and nothing is cached to serve instead."""

    code, status = "UNAVAILABLE", 502


class PullThroughCache:
    def __init__(self, *, settings: Settings, registry: Registry, docs: DocumentStore, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings.proxy
        self.namespace = settings.proxy.namespace
        self.registry = registry
        self.meta = registry.meta
        self.fill = CacheFillRegistry(blobs=registry.blobs, meta=registry.meta, outbox=registry.outbox,
                                      settings=registry.settings, topics=registry.topics,
                                      blob_guard=registry.blob_guard)
        master_key = settings.signer.master_key

        def box() -> SecretBox:
            return secret_box(master_key)

        self.remotes = RemoteConfig(docs, settings.proxy, box=box)
        self.records = CacheRecords(docs, retention=settings.proxy.retention, clock=clock)
        # A store slower than the upstream (S3) would pace every client's pull: spool ahead of it (blobfetch.py).
        self.fetches = BlobFetches(spool=not isinstance(registry.blobs, LocalBlobFiles),
                                   spool_dir=settings.proxy.spool_dir)
        self.metrics = metrics
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[tuple[object, ...], OciClient] = {}
        self._flights: dict[tuple[str, ...], asyncio.Task[ManifestRecord]] = {}

    # -- lifetime ---------------------------------------------------------------------------------

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: collections, upstream session and the flush loop."""
        await self.remotes.setup()
        await self.records.setup()
        flusher = asyncio.create_task(self.records.flush_loop(self.settings.access_flush_seconds))
        yield
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        await self.fetches.close()
        for task in list(self._flights.values()):
            task.cancel()
        await asyncio.gather(*self._flights.values(), return_exceptions=True)
        for client in self._clients.values():
            await client.close()
        if self._session is not None:
            await self._session.close()

    def client(self, remote: Remote) -> OciClient:
        """The OCI client of `remote` (a new one when its configuration changed). Connections pass the SSRF
        guard as admin-set (trusted) URLs: anything but link-local and cloud metadata addresses."""
        found = self._clients.get(remote.fingerprint)
        if found is None:
            if self._session is None or self._session.closed:
                self._session = aiohttp.ClientSession(connector=guarded_connector(UrlPolicy(Trust.TRUSTED)),
                                                      auto_decompress=False)
            timeout = self.settings.timeout_seconds
            options = ClientOptions(registries={remote.host: remote.options()}, connect_timeout=timeout,
                                    read_timeout=timeout, max_manifest_bytes=self.registry.settings.max_manifest_bytes,
                                    user_agent="hanzo-registry pull-through", url_policy=UrlPolicy(Trust.TRUSTED))
            found = self._clients[remote.fingerprint] = OciClient(options, session=self._session)
        return found

    # -- routing ----------------------------------------------------------------------------------

    def covers(self, repository: str) -> bool:
        """Whether `repository` is a cached one (under `proxy.namespace`)."""
        return self.settings.enabled and (repository == self.namespace or
                                          repository.startswith(self.namespace + "/"))

    def refuse_writes(self, repository: str, *, kind: str, method: str) -> None:
        """Pushes under the cache namespace are refused (405 UNSUPPORTED): its content is the upstreams'."""
        if self.covers(repository) and (kind in ("uploads", "upload") or (kind == "manifest" and method == "PUT")):
            raise UnsupportedError(f"{repository} is in the pull-through cache ({self.namespace}/): it is "
                                   "filled from its upstream and cannot be pushed to")

    async def mirror_name(self, ns: str | None, repository: str) -> str:
        """containerd's mirror requests (`/v2/<path>/...?ns=<registry host>`): the cached repository of the
        remote whose host `ns` names; `repository` unchanged when none does."""
        if not ns or not self.settings.enabled or self.covers(repository):
            return repository
        remote = (await self.remotes.current()).for_mirror(ns)
        return f"{self.namespace}/{remote.name}/{repository}" if remote is not None else repository

    async def upstream(self, repository: str) -> Upstream:
        return (await self.remotes.current()).upstream_of(self.namespace, repository)

    # -- manifests --------------------------------------------------------------------------------

    async def manifest(self, repo: RepositoryName, reference: Tag | Digest) -> tuple[ManifestRecord, bool]:
        """The manifest to answer with and whether it is stale (the upstream failed to revalidate it)."""
        up = await self.upstream(str(repo))
        name = up.remote.name
        if isinstance(reference, Digest):
            record = await self.meta.manifest(str(repo), reference)
            if record is not None:
                return self._hit(up, record), False
            return await self._fetch_manifest(up, repo, reference), False
        tag = await self.meta.tag(str(repo), str(reference))
        record = await self.meta.manifest(str(repo), tag.digest) if tag is not None else None
        if record is None:
            return await self._fetch_manifest(up, repo, reference), False
        confirmed = await self.records.validated(str(repo), str(reference), record.digest)
        if confirmed is not None and self._clock() - confirmed < up.remote.ttl:
            return self._hit(up, record), False
        client = self.client(up.remote)
        try:
            digest = await self._timed(name, "head", guarded(
                f"upstream {name}", self.settings.timeout_seconds,
                lambda: head_manifest(client, up.repository, reference)))
        except UpstreamFailure as failure:
            self._upstream_error(name, failure)
            if failure.not_found:
                raise ManifestUnknownError(f"tag {reference} is no longer on upstream {name}: {failure.message}"
                                           ) from None
            return self._stale(up, record, failure), True
        if digest == record.digest:
            await self.records.confirm(str(repo), str(reference), digest)
            return self._hit(up, record), False
        try:  # the tag moved upstream
            return await self._fetch_manifest(up, repo, reference), False
        except (UpstreamError, TooManyRequestsError) as exc:
            log.info("pull-through: tag %s:%s moved upstream but could not be fetched (%s); serving the cached one",
                     repo, reference, exc.message)
            return self._stale(up, record, None), True

    def _hit(self, up: Upstream, record: ManifestRecord) -> ManifestRecord:
        self.metrics.cache_requests.labels(remote=up.remote.name, kind=MANIFEST, result="hit").inc()
        self.metrics.cache_bytes.labels(remote=up.remote.name, source="cache").inc(record.size)
        self.records.pulled(MANIFEST, record.repository, record.digest)
        return record

    def _stale(self, up: Upstream, record: ManifestRecord, failure: UpstreamFailure | None) -> ManifestRecord:
        if failure is not None:
            log.info("pull-through: upstream %s failed (%s); serving %s@%s stale", up.remote.name, failure.message,
                     record.repository, record.digest)
        self.metrics.cache_requests.labels(remote=up.remote.name, kind=MANIFEST, result="stale").inc()
        self.metrics.cache_bytes.labels(remote=up.remote.name, source="cache").inc(record.size)
        self.records.pulled(MANIFEST, record.repository, record.digest)
        return record

    async def _fetch_manifest(self, up: Upstream, repo: RepositoryName, reference: Tag | Digest) -> ManifestRecord:
        """Fetch, verify and store a manifest (one fetch per repository and reference at a time)."""
        return await self._once(("manifest", str(repo), str(reference)),
                                lambda: self._fill_manifest(up, repo, reference))

    async def _fill_manifest(self, up: Upstream, repo: RepositoryName, reference: Tag | Digest) -> ManifestRecord:
        name = up.remote.name
        client = self.client(up.remote)
        limit = self.registry.settings.max_manifest_bytes
        try:
            digest, media_type, content = await self._timed(name, "manifest", guarded(
                f"upstream {name}", self.settings.timeout_seconds,
                lambda: get_manifest(client, up.repository, reference, max_bytes=limit)))
        except UpstreamFailure as failure:
            self._upstream_error(name, failure)
            raise self._answer(up, failure, ManifestUnknownError, f"manifest {up.repository}:{reference}") from None
        self.metrics.cache_requests.labels(remote=name, kind=MANIFEST, result="miss").inc()
        self.metrics.cache_bytes.labels(remote=name, source="upstream").inc(len(content))
        # Stored by digest and (for a tag) moved by force: the upstream decides where its tags point.
        await self.fill.put_manifest(repo, reference, content, media_type or None, actor=ACTOR, force=True)
        if isinstance(reference, Tag):
            await self.records.confirm(str(repo), str(reference), digest)
        self.records.pulled(MANIFEST, str(repo), digest)
        record = await self.meta.manifest(str(repo), digest)
        if record is None:  # deleted between the store and this read: answer what was fetched
            raise UpstreamError(f"manifest {digest} of {repo} was deleted while it was cached; retry")
        return record

    async def _once(self, key: tuple[str, ...], make: Callable[[], Awaitable[ManifestRecord]]) -> ManifestRecord:
        """Single flight: concurrent callers with the same key share one call (a caller that goes away does
        not cancel it for the others)."""
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._flights[key] = task

            def done(t: asyncio.Task[ManifestRecord]) -> None:
                if self._flights.get(key) is t:
                    del self._flights[key]
                if not t.cancelled():
                    t.exception()  # retrieved: nobody may be left waiting for it

            task.add_done_callback(done)
        return await asyncio.shield(task)

    # -- blobs ------------------------------------------------------------------------------------

    async def is_cached(self, repo: RepositoryName, digest: Digest) -> bool:
        return await self.meta.blob_link(str(repo), digest) is not None

    async def blob_served(self, repo: RepositoryName, digest: Digest, length: int) -> None:
        """A cached blob was served from local storage."""
        up = await self.upstream(str(repo))
        self.metrics.cache_requests.labels(remote=up.remote.name, kind=BLOB, result="hit").inc()
        self.metrics.cache_bytes.labels(remote=up.remote.name, source="cache").inc(length)
        self.records.pulled(BLOB, str(repo), digest)

    async def serve_blob(self, request: web.Request, repo: RepositoryName, digest: Digest,
                         count_out: Callable[[int], None]) -> web.StreamResponse | None:
        """Answer a GET/HEAD of a blob `repo` does not link yet: from upstream, streamed while it is stored.
        None when the bytes were already stored for another repository and are now linked to `repo` too
        (the caller serves them as usual)."""
        up = await self.upstream(str(repo))
        name = up.remote.name
        client = self.client(up.remote)
        flying = self.fetches.current(digest)
        if flying is not None and flying.repository == str(repo) and flying.error is None:
            # Being fetched for this repository (a spooling fetch may have served its clients and still be
            # storing): the upstream said so already, and may be gone by now.
            size = flying.size
        else:
            try:  # also when the bytes are here: the upstream must say that this repository has them
                size = await self._timed(name, "head", guarded(f"upstream {name}", self.settings.timeout_seconds,
                                                               lambda: blob_size(client, up.repository, digest)))
            except UpstreamFailure as failure:
                self._upstream_error(name, failure)
                raise self._answer(up, failure, BlobUnknownError, f"blob {up.repository}@{digest}") from None
        if await self.registry.blobs.stat(digest) is not None:
            if await self.is_cached(repo, digest):
                return None  # a fetch for this repository ended since the caller's check: no second fetch
            for source in await self.meta.repositories_linking(digest, limit=5):
                if source != str(repo) and await self.registry.mount(repo, RepositoryName(source), digest):
                    return None
        etag = f'"{digest}"'
        headers = {"Docker-Content-Digest": str(digest), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream", "ETag": etag}
        byte_range = parse_range_header(request.headers.get("Range"), size)
        status, offset, length = (200, 0, size) if byte_range is None else (206, byte_range.start, byte_range.length)
        if byte_range is not None:
            headers["Content-Range"] = byte_range.content_range(size)
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        if flying is not None and flying.ok:
            return None  # stored for this repository meanwhile: served from storage
        blobs = self.registry.blobs
        in_flight = self.fetches.current(digest)
        fetch = self.fetches.join(
            digest, size, repository=str(repo),
            source=lambda: self._pull(client, up, digest, size),
            store=lambda chunks: self.fill.put_blob(repo, digest, chunks, actor=ACTOR),
            read_stored=lambda at, n: blobs.read(digest, offset=at, length=n),
        )
        # A request that joins a fetch in flight costs the upstream nothing: it is a hit, its bytes are the
        # cache's (the fetch counted the upstream's once). Counted on joining, not on timing: a client may
        # finish reading before the fetch has stored the blob, and its next pull joins the same fetch.
        shared = fetch is in_flight
        self.metrics.cache_requests.labels(remote=name, kind=BLOB, result="hit" if shared else "miss").inc()
        reading = fetch.read(offset, length)
        try:
            await fetch.started()
            if fetch.error is not None and fetch.available == 0:
                raise self._fetch_error(up, fetch.error, digest)
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            sent = 0
            try:
                async for chunk in reading:
                    await response.write(chunk)
                    sent += len(chunk)
            except FetchFailedError as failed:
                # Headers are out: end the transfer short of its Content-Length, which every client sees as
                # an error; nothing was cached.
                log.warning("pull-through: fetch of %s from %s failed mid-stream: %s", digest, name, failed)
                if request.transport is not None:
                    request.transport.close()
                raise ConnectionResetError(f"upstream fetch of {digest} failed") from None
            finally:
                count_out(sent)
                if shared:
                    self.metrics.cache_bytes.labels(remote=name, source="cache").inc(sent)
        finally:
            await reading.aclose()
        if fetch.repository != str(repo):  # fetched for another repository meanwhile: link it here too
            await fetch.finished()  # a spooling fetch serves its last byte before the store committed it
            if fetch.ok:
                await self.registry.mount(repo, RepositoryName(fetch.repository), digest)
        self.records.pulled(BLOB, str(repo), digest)
        await response.write_eof()
        return response

    async def _pull(self, client: OciClient, up: Upstream, digest: Digest, size: int) -> AsyncIterator[bytes]:
        name = up.remote.name
        started = time.perf_counter()
        try:
            async for chunk in client.pull_blob(up.repository, digest, size=size):
                self.metrics.cache_bytes.labels(remote=name, source="upstream").inc(len(chunk))
                yield chunk
        except (OciClientError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            failure = classify(exc, f"upstream {name}: GET {up.repository}@{digest}")
            self._upstream_error(name, failure)
            raise failure from exc
        finally:
            self.metrics.cache_upstream_seconds.labels(remote=name, kind="blob").observe(
                time.perf_counter() - started)

    def _fetch_error(self, up: Upstream, error: BaseException, digest: Digest) -> BaseException:
        if isinstance(error, UpstreamFailure):
            return self._answer(up, error, BlobUnknownError, f"blob {up.repository}@{digest}")
        return error

    # -- helpers ----------------------------------------------------------------------------------

    async def _timed(self, remote: str, kind: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.metrics.cache_upstream_seconds.labels(remote=remote, kind=kind).observe(time.perf_counter() - started)

    def _upstream_error(self, remote: str, failure: UpstreamFailure) -> None:
        if not failure.not_found:
            self.metrics.cache_upstream_errors.labels(remote=remote, reason=failure.reason).inc()

    def _answer(self, up: Upstream, failure: UpstreamFailure, unknown: type[RegistryError], what: str
                ) -> RegistryError:
        """The client's error when the upstream failed and nothing is cached: it names the upstream's answer."""
        remote = up.remote
        if failure.not_found:
            return unknown(f"{what} is not on upstream {remote.name} ({remote.host})")
        if failure.reason == "429":
            return TooManyRequestsError(
                f"upstream {remote.name} ({remote.host}) is rate limiting and {what} is not cached: {failure.message}",
                headers={"Retry-After": failure.retry_after or DEFAULT_RETRY_AFTER})
        return UpstreamError(f"upstream {remote.name} ({remote.host}) failed and {what} is not cached: "
                             f"{failure.message}")
