"""The OpenAPI 3.1 document of the management API (/v1/registry/) and the token endpoint, generated from
the route table (services/distribution/management_api.Route) and its pydantic models.

Served at /v1/registry/openapi.json; tests check every response of the implementation against it.
Each operation names its authorization requirement in `x-hanzo-access` (and in its description).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from services.distribution.management_api import Requirement, Route

REF = "#/components/schemas/{model}"
_ERROR_TEXT = {
    400: "Invalid request (the message names the field)",
    401: "Authentication required or invalid credentials",
    403: "The caller may not do this",
    404: "No such user, team, key, grant or policy",
    409: "Already exists, or a concurrent change won",
    413: "Request too large",
    429: "Too many failed logins from this address",
}
_SUCCESS_TEXT = {200: "OK", 201: "Created", 204: "Done"}
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    429: {"Retry-After": {"schema": {"type": "integer"}}},
}


class ErrorEntry(BaseModel):
    code: str = Field(pattern=r"^[A-Z_]+$")
    message: str
    detail: Any = None


class Error(BaseModel):
    """The registry's error document (the OCI distribution spec's)."""

    model_config = ConfigDict(title="Error")

    errors: list[ErrorEntry] = Field(min_length=1)


Mode = Literal["validation", "serialization"]


def _schemas(routes: Sequence[Route]) -> tuple[dict[Any, Any], dict[str, Any]]:
    wanted: list[tuple[type[BaseModel], Mode]] = [(Error, "serialization")]
    for route in routes:
        if route.body is not None:
            wanted.append((route.body, "validation"))
        if route.response is not None:
            wanted.append((route.response, "serialization"))
    unique = list(dict.fromkeys(wanted))
    refs, top = models_json_schema(unique, ref_template=REF)
    return dict(refs), top.get("$defs", {})


def _plain(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without the null of an optional field (absent is how it is unset)."""
    variants = schema.get("anyOf")
    if variants:
        rest = [v for v in variants if v.get("type") != "null"]
        if len(rest) == 1:
            merged = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            merged.update(rest[0])
            if schema.get("default") is not None:
                merged["default"] = schema["default"]
            return merged
    return {k: v for k, v in schema.items() if not (k == "default" and v is None)}


def _parameters(route: Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for part in route.template.split("/"):
        if part.startswith("{"):
            name = part[1:-1]
            params.append({"name": name, "in": "path", "required": True,
                           "schema": {"type": "string", "minLength": 1}})
    if route.query is not None:
        props = route.query.model_json_schema(ref_template=REF).get("properties", {})
        for name, schema in props.items():
            plain = _plain(schema)
            param: dict[str, Any] = {"name": name, "in": "query", "required": False}
            if plain.pop("explode", None):
                param["explode"] = True
            description = plain.pop("description", None)
            plain.pop("title", None)
            if description:
                param["description"] = description
            param["schema"] = plain
            params.append(param)
    return params


def _content(ref: Any, route: Route, *, media: str = "application/json") -> dict[str, Any]:
    content = {media: {"schema": ref}}
    if route.yaml:
        content["application/yaml"] = {"schema": ref}
    return content


def _operation(route: Route, refs: dict[Any, Any]) -> dict[str, Any]:
    error_ref = refs[(Error, "serialization")]
    requirement = route.requirement
    op: dict[str, Any] = {
        "summary": route.summary,
        "description": f"Authorization: `{requirement.value}`.",
        "x-hanzo-access": requirement.value,
        "operationId": f"{route.method.lower()}_{route.handler.__name__}",
    }
    params = _parameters(route)
    if params:
        op["parameters"] = params
    if route.body is not None:
        required = any(f.is_required() for f in route.body.model_fields.values())
        op["requestBody"] = {"required": required,
                             "content": _content(refs[(route.body, "validation")], route, media=route.body_media)}
    responses: dict[str, Any] = {}
    described = _SUCCESS_TEXT.get(route.status, "OK")
    if route.response is None:
        responses[str(route.status)] = {"description": described}
    else:
        ref = refs[(route.response, "serialization")]
        responses[str(route.status)] = {"description": described, "content": _content(ref, route)}
    for status in sorted({*route.base_errors, *route.errors}):
        entry: dict[str, Any] = {"description": _ERROR_TEXT.get(status, "Error"),
                                 "content": {"application/json": {"schema": error_ref}}}
        if status in _ERROR_HEADERS:
            entry["headers"] = _ERROR_HEADERS[status]
        responses[str(status)] = entry
    op["responses"] = responses
    if requirement is Requirement.ANONYMOUS:
        op["security"] = []
    return op


def build_document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI document of `routes` (those marked documented)."""
    shown = [r for r in routes if r.documented]
    refs, schemas = _schemas(shown)
    paths: dict[str, dict[str, Any]] = {}
    for route in shown:
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Hanzo Registry management API",
            "version": "1.0.0",
            "description": "Users, teams, API keys, permissions, policies and the audit log; the Docker token "
            "endpoint. Authenticate with `Authorization: Bearer <API key>`, Basic (user or `hanzo`, API key), "
            "or a registry token (read-only here). Each operation's `x-hanzo-access` names who may call it: "
            + "; ".join(f"`{r.value}`" for r in Requirement) + ".",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key (hzr_...) or a token"},
                "basic": {"type": "http", "scheme": "basic", "description": "User name (or `hanzo`) and API key"},
            },
        },
        "security": [{"apiKey": []}, {"basic": []}],
        "paths": paths,
    }
