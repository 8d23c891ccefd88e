"""HTTP middlewares: the one place errors become OCI error documents; metrics and trace spans."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import trace

from services.core.errors import NameUnknownError, RegistryError, error_body
from services.core.outages import outage_of
from services.core.telemetry import extract_context
from services.distribution.keys import METRICS, OUTAGES

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


def route_label(path: str) -> str:
    """A low-cardinality label for metrics: never the repository name or digest."""
    if path in ("/v2", "/v2/"):
        return "base"
    if path.startswith("/v2/_catalog"):
        return "catalog"
    if path.startswith("/v2/"):
        for marker, label in (
            ("/blobs/uploads", "upload"),
            ("/blobs/", "blob"),
            ("/manifests/", "manifest"),
            ("/tags/list", "tags"),
            ("/referrers/", "referrers"),
        ):
            if marker in path:
                return label
        return "v2-other"
    if path.startswith("/v1/"):
        return "management"
    if path.startswith("/token"):
        return "token"
    if path.startswith("/console"):
        return "console"
    return "ops"


def error_response(request: web.Request, error: RegistryError) -> web.Response:
    """The one rendering of an error: status, the spec's JSON body (none for HEAD), the error's headers."""
    merged = {**API_VERSION, **error.headers}
    if request.method == "HEAD":
        return web.Response(status=error.status, headers=merged)
    return web.json_response(error_body([error]), status=error.status, headers=merged)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except RegistryError as error:
        return error_response(request, error)
    except web.HTTPException as exc:
        if exc.status == 404 and request.path.startswith("/v2/"):
            return error_response(request, NameUnknownError("no such endpoint"))
        exc.headers.update(API_VERSION)
        raise
    except (ConnectionResetError, TimeoutError) as exc:
        # The client went away mid-request; the handler's cleanup already ran.
        log.info("request %s %s aborted: %s", request.method, request.path, exc)
        raise
    except Exception as exc:
        dependency = outage_of(exc)
        if dependency is not None:
            # An expected outage: 503 with Retry-After, logged once per outage by the tracker.
            return error_response(request, request.app[OUTAGES].unavailable(dependency, exc))
        log.exception("unhandled error in %s %s", request.method, request.rel_url.path)
        return error_response(request, RegistryError("internal error; see the server log"))
    if not response.prepared:
        response.headers.update(API_VERSION)
    return response


@web.middleware
async def telemetry_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    label = route_label(request.path)
    start = time.perf_counter()
    status = 500
    tracer = trace.get_tracer("hanzo-registry.distribution")
    ctx = extract_context(request.headers)
    with tracer.start_as_current_span(f"{request.method} {label}", context=ctx, kind=trace.SpanKind.SERVER) as span:
        span.set_attribute("http.request.method", request.method)
        span.set_attribute("http.route", label)
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            metrics.http_requests.labels(
                service="distribution", method=request.method, route=label, status=str(status)
            ).inc()
            metrics.http_request_duration.labels(service="distribution", method=request.method, route=label).observe(
                time.perf_counter() - start
            )
