"""The distribution service's aiohttp application factory: OCI /v2/ API plus ops endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

from aiohttp import web

from services.core.activity import RequestActivity
from services.core.bootstrap import Container
from services.core.content.graph import indexes_listing
from services.core.content.registry import Registry
from services.core.halfclose import answer_half_closed_requests
from services.core.outages import OutageTracker
from services.core.policy.gates import PullGates
from services.core.policy.service import PolicyService
from services.core.policy.store import PolicyStore
from services.core.runtime import add_ops_routes, dependency_probes
from services.core.signing.gate import with_signature_gate
from services.core.storage.meta import ManifestRecord
from services.distribution import oci_api
from services.distribution.access import AccessControl
from services.distribution.accesslog import access_log_middleware
from services.distribution.auth_access import TokenAccess, audit_middleware
from services.distribution.auth_token import add_token_routes
from services.distribution.cache.service import PullThroughCache
from services.distribution.console.routes import add_console_routes
from services.distribution.forwarded import forwarded_middleware
from services.distribution.keys import ACCESS, GATES, METRICS, OUTAGES, PULLTHROUGH, REGISTRY, SETTINGS
from services.distribution.management import add_management_routes
from services.distribution.middleware import Handler, errors_middleware, telemetry_middleware
from services.distribution.oidc_login import add_oidc_routes
from services.distribution.scanner_api import install_scan_gate


def build_registry(c: Container, gates: PullGates | None = None) -> Registry:
    return Registry(
        blobs=c.blobs,
        meta=c.meta,
        outbox=c.outbox,
        settings=c.settings.registry,
        topics=c.settings.topics,
        # Tag rules of the effective policies, from the cache the pull gates keep (one invalidation for both).
        policies=gates.effective_policy if gates is not None else None,
    )


def build_gates(c: Container) -> PullGates:
    """The pull gates after repository access; the scan and signature gates are added by their services'
    issues. Policies are read from metadata (default <- namespace <- repository) and cached with the decisions."""
    policies = PolicyService(store=PolicyStore(c.docs), outbox=c.outbox, topics=c.settings.topics,
                             default=c.settings.policy.default)

    async def parents(repository: str, manifest: ManifestRecord) -> list[ManifestRecord]:
        return await indexes_listing(c.meta, repository, manifest)

    gates = PullGates([], policies.effective, parents, ttl_seconds=c.settings.registry.pull_gate_cache_seconds)
    install_scan_gate(c, gates)
    return with_signature_gate(c, gates)


def _setup_policies(c: Container) -> Callable[[web.Application], Awaitable[None]]:
    async def setup(app: web.Application) -> None:
        await PolicyStore(c.docs).setup()

    return setup


async def _close_outages(app: web.Application) -> None:
    await app[OUTAGES].close()


def version() -> str:
    try:
        return metadata.version("hanzo-registry")
    except metadata.PackageNotFoundError:
        return "unknown"


def _root(api: dict[str, str]) -> Any:
    body = {"name": "hanzo-registry", "version": version(), "api": api}

    async def root(request: web.Request) -> web.Response:
        """Where the APIs are, until a console lives here."""
        return web.json_response(body)

    return root


def activity_middleware(activity: RequestActivity) -> Any:
    """Counts requests in flight for background work in this process (services/core/activity.py)."""

    @web.middleware
    async def counting(request: web.Request, handler: Handler) -> web.StreamResponse:
        activity.started()
        try:
            return await handler(request)
        finally:
            activity.ended()

    return counting


def create_app(c: Container, *, access: AccessControl, registry: Registry | None = None) -> web.Application:
    middlewares: list[Any] = [activity_middleware(c.activity)]
    if c.settings.server.trusted_proxies:
        # First: everything after it sees the client's address, scheme and host.
        middlewares.append(forwarded_middleware(c.settings.server.trusted_proxies))
    middlewares.append(telemetry_middleware)
    if c.settings.telemetry.access_log:
        middlewares.append(access_log_middleware)
    middlewares += [audit_middleware, errors_middleware]
    # No client_max_size: blob bodies stream through request.content and are never buffered whole.
    answer_half_closed_requests()
    app = web.Application(middlewares=middlewares, client_max_size=1 << 62)
    app[SETTINGS] = c.settings
    gates = build_gates(c)
    app[REGISTRY] = registry or build_registry(c, gates)
    app[ACCESS] = access
    app[METRICS] = c.metrics
    app[GATES] = gates
    app[OUTAGES] = OutageTracker(dependency_probes(c))
    app.on_cleanup.append(_close_outages)
    if c.settings.proxy.enabled:
        cache = PullThroughCache(settings=c.settings, registry=app[REGISTRY], docs=c.docs, metrics=c.metrics)
        app[PULLTHROUGH] = cache
        app.cleanup_ctx.append(cache.lifetime)
    app.on_startup.append(_setup_policies(c))
    app.router.add_get("/v2/", oci_api.base)
    app.router.add_get("/v2", oci_api.base)
    app.router.add_get("/v2/_catalog", oci_api.catalog)
    app.router.add_route("*", r"/v2/{tail:[\s\S]+}", oci_api.dispatch)  # a %0A in a name too (Route.router_path)
    if isinstance(access, TokenAccess):
        add_token_routes(app)
        add_oidc_routes(app)  # before the management routes: /v1/registry/auth/oidc/* is not a namespace
        add_management_routes(app)
        add_console_routes(app)  # /console/: its own session cookie; never an OCI challenge
    add_ops_routes(app, c.metrics, dependency_probes(c))
    api = {"oci": "/v2/"}
    if isinstance(access, TokenAccess):
        api |= {"management": "/v1/registry/", "openapi": "/v1/registry/openapi.json", "token": "/token",
                "console": "/console/"}
    api["metrics"] = "/metrics"
    app.router.add_get("/", _root(api))
    return app
