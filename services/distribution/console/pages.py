"""The console's content pages: repositories, a repository's tags, a tag's manifest, its vulnerability
report, signatures and model view. Each checks access as the API does (services.distribution.console.gateway)
and reads one page of content, never a whole listing."""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import web

from services.core.auth.errors import InvalidRequestError
from services.core.auth.model import namespace_of
from services.core.errors import DeniedError, RegistryError
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.storage.meta import ManifestRecord
from services.distribution.console.context import Ctx
from services.distribution.console.gateway import read, repository_name, require, token_access
from services.distribution.console.render import page
from services.distribution.console.views import (
    bounded,
    manifest_view,
    next_cursor,
    page_size,
    pretty_json,
    pull_commands,
)
from services.distribution.keys import GATES, REGISTRY, SETTINGS
from services.distribution.management_api import Requirement
from services.distribution.management_models_api import ModelUnknownError, ModelViewResponse, get_model
from services.distribution.scanner_api import VulnerabilityReport, get_vulnerabilities
from services.distribution.signer_api import Signatures, signatures

CATALOG_BATCH: Final = 500
CATALOG_SCAN_LIMIT: Final = 20_000
"""Repositories read for one page at most: a caller who may read few of many gets a short page and a link
to go on, rather than one request that reads the whole registry (as /v2/_catalog does)."""
SEVERITY_RANK: Final = {"critical": 0, "high": 1, "medium": 2, "low": 3, "unknown": 4}


def _repo_breadcrumbs(repository: str) -> list[tuple[str, str]]:
    return [("Repositories", "/console/repositories"), (repository, f"/console/repositories/{repository}")]


async def repositories(ctx: Ctx) -> web.StreamResponse:
    request = ctx.request
    q = bounded(request.query.get("q"))
    limit = page_size(request.query.get("limit"))
    after = bounded(request.query.get("after"), limit=300) or None
    access = token_access(request)
    meta = request.app[REGISTRY].meta
    shown: list[str] = []
    cursor, scanned, more = after, 0, False
    while True:
        batch = await meta.list_repositories(after=cursor, limit=CATALOG_BATCH)
        candidates = [r for r in batch if q.lower() in r] if q else batch
        for repository in await access.readable(ctx.caller.principal, candidates):
            shown.append(repository)
            if len(shown) > limit:
                break
        if len(shown) > limit:
            shown, cursor = next_cursor(shown, limit)
            more = True
            break
        scanned += len(batch)
        if len(batch) < CATALOG_BATCH:
            break
        cursor = batch[-1]
        if scanned >= CATALOG_SCAN_LIMIT:
            more = True
            break
    return page(
        request,
        "repositories.html",
        **ctx.base(
            title="Repositories",
            section="repositories",
            repositories=shown,
            q=q,
            limit=limit,
            next=cursor if more else None,
            first=after is not None,
        ),
    )


async def _tag_rows(request: web.Request, repository: str, names: list[str]) -> list[dict[str, object]]:
    registry = request.app[REGISTRY]
    repo = RepositoryName(repository)
    # Two batched reads for the page (its tags, then their manifests), not one read per row.
    records = await registry.meta.tags(repository, names)
    digests = sorted({str(r.digest) for r in records.values()})
    manifests = await registry.meta.manifests(repository, [Digest.parse(d) for d in digests])
    views = {d: manifest_view(m) for d, m in manifests.items()}
    decisions = await asyncio.gather(*(registry.tag_decision(repo, n) for n in names))
    rows: list[dict[str, object]] = []
    for name, decision in zip(names, decisions, strict=True):
        record = records.get(name)
        if record is None:  # deleted between the listing and now
            continue
        view = views.get(str(record.digest))
        rows.append(
            {
                "name": name,
                "digest": str(record.digest),
                "pushed": record.updated,
                "size": view.total_size if view else None,
                "kind": ("index" if view.is_index else "image") if view else "",
                "platforms": len(view.platforms) if view else 0,
                "immutable": decision.immutable,
                "rule": decision.rule or "",
            }
        )
    return rows


async def tags(ctx: Ctx) -> web.StreamResponse:
    request = ctx.request
    repository = repository_name(request.match_info["repository"])
    await require(request, Requirement.REPOSITORY_READER, repository=repository)
    limit = page_size(request.query.get("limit"))
    after = bounded(request.query.get("after"), limit=128) or None
    # One page of names from the (repository, name) index, then only that page's tags and manifests.
    names = await request.app[REGISTRY].list_tags(RepositoryName(repository), after=after, limit=limit + 1)
    names, cursor = next_cursor(names, limit)
    namespace = namespace_of(repository)
    manages = ctx.caller.admin or await token_access(request).service.manages(ctx.caller.subject, namespace)
    return page(
        request,
        "tags.html",
        **ctx.base(
            title=repository,
            section="repositories",
            breadcrumbs=_repo_breadcrumbs(repository)[:1],
            repository=repository,
            rows=await _tag_rows(request, repository, names),
            limit=limit,
            next=cursor,
            first=after is not None,
            namespace=namespace,
            manages=manages,
        ),
    )


def _reference(value: str) -> Tag | Digest:
    try:
        return Digest.parse(value) if ":" in value else Tag(value)
    except (RegistryError, ValueError):
        raise InvalidRequestError(f"reference {value[:100]!r} is neither a tag nor a digest") from None


async def _resolved(ctx: Ctx) -> tuple[str, str, ManifestRecord]:
    request = ctx.request
    repository = repository_name(request.match_info["repository"])
    await require(request, Requirement.REPOSITORY_READER, repository=repository)
    reference = request.match_info["reference"]
    record = await request.app[REGISTRY].resolve(RepositoryName(repository), _reference(reference))
    return repository, reference, record


def _tab_context(ctx: Ctx, repository: str, reference: str, tab: str) -> dict[str, Any]:
    return ctx.base(
        title=f"{repository}:{reference}" if ":" not in reference else f"{repository}@{reference}",
        section="repositories",
        breadcrumbs=_repo_breadcrumbs(repository),
        repository=repository,
        reference=reference,
        tab=tab,
    )


def _host(request: web.Request) -> tuple[str, bool]:
    """The registry's host as clients name it, and whether they reach it over plain HTTP."""
    configured = request.app[SETTINGS].registry.public_base_url.rstrip("/")
    if configured:
        scheme, _, host = configured.partition("://")
        return host, scheme == "http"
    return request.host, request.scheme == "http"


async def manifest(ctx: Ctx) -> web.StreamResponse:
    repository, reference, record = await _resolved(ctx)
    host, plain_http = _host(ctx.request)
    return page(
        ctx.request,
        "manifest.html",
        **_tab_context(ctx, repository, reference, "manifest"),
        view=manifest_view(record),
        commands=pull_commands(host, repository, reference, plain_http=plain_http),
        digest_commands=pull_commands(host, repository, str(record.digest), plain_http=plain_http)
        if ":" not in reference
        else [],
        raw=pretty_json(record.data),
    )


async def _verdict(ctx: Ctx, repository: str, record: ManifestRecord) -> str:
    """The pull gates' decision for this manifest ("" when allowed), as a pull would meet it."""
    try:
        await ctx.request.app[GATES].check(namespace_of(repository), repository, record)
    except DeniedError as refusal:
        return refusal.message
    return ""


async def vulnerabilities(ctx: Ctx) -> web.StreamResponse:
    repository, reference, record = await _resolved(ctx)
    report = await read(
        ctx.request, get_vulnerabilities, VulnerabilityReport, repository=repository, params={"reference": reference}
    )
    policy = await ctx.request.app[GATES].effective_policy(namespace_of(repository), repository)
    order = lambda f: (SEVERITY_RANK.get(f.severity, 9), f.ignored, f.id)  # noqa: E731
    return page(
        ctx.request,
        "vulnerabilities.html",
        **_tab_context(ctx, repository, reference, "vulnerabilities"),
        report=report,
        findings=sorted(report.vulnerabilities, key=order),
        platforms=[(p, sorted(p.vulnerabilities, key=order)) for p in report.platforms],
        scan=policy.scan,
        refusal=await _verdict(ctx, repository, record),
    )


async def signatures_page(ctx: Ctx) -> web.StreamResponse:
    repository, reference, record = await _resolved(ctx)
    found = await read(ctx.request, signatures, Signatures, repository=repository, params={"reference": reference})
    policy = await ctx.request.app[GATES].effective_policy(namespace_of(repository), repository)
    return page(
        ctx.request,
        "signatures.html",
        **_tab_context(ctx, repository, reference, "signatures"),
        signatures=found.signatures,
        digest=found.digest,
        signing=policy.signing,
        refusal=await _verdict(ctx, repository, record),
    )


async def model(ctx: Ctx) -> web.StreamResponse:
    repository, reference, _ = await _resolved(ctx)
    view: ModelViewResponse | None = None
    try:
        view = await read(
            ctx.request, get_model, ModelViewResponse, repository=repository, params={"reference": reference}
        )
    except ModelUnknownError:
        view = None
    return page(ctx.request, "model.html", **_tab_context(ctx, repository, reference, "model"), model=view)
