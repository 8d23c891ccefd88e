"""The OpenAPI 3.1 document of the management API (/v1/registry/) and the token endpoint.

Served at /v1/registry/openapi.json; tests check every response of the implementation against it.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_TIME = {"type": "string", "format": "date-time"}
_NAME = {"type": "string", "minLength": 1, "maxLength": 64}
_ROLE = {"type": "string", "enum": ["reader", "writer", "admin"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["errors"],
        "properties": {
            "errors": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "pattern": "^[A-Z_]+$"},
                        "message": {"type": "string"},
                        "detail": {},
                    },
                },
            }
        },
    },
    "User": {
        "type": "object",
        "required": ["name", "email", "admin", "created"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "email": {"type": ["string", "null"]},
            "admin": {"type": "boolean"},
            "created": _TIME,
            "teams": {"type": "array", "items": {"type": "string"}},
        },
    },
    "NewUser": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {**_NAME, "pattern": "^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"},
            "email": {"type": "string", "format": "email"},
            "admin": {"type": "boolean", "default": False},
        },
    },
    "UserList": {
        "type": "object",
        "required": ["users"],
        "additionalProperties": False,
        "properties": {"users": {"type": "array", "items": {"$ref": "#/components/schemas/User"}}},
    },
    "ApiKey": {
        "type": "object",
        "required": ["prefix", "user", "name", "created", "expires", "revoked", "last_used", "namespaces", "role"],
        "additionalProperties": False,
        "properties": {
            "prefix": {"type": "string", "description": "Identifies the key (hzr_<prefix>_...); not secret"},
            "user": {"type": "string"},
            "name": {"type": "string"},
            "created": _TIME,
            "expires": _NULLABLE_TIME,
            "revoked": _NULLABLE_TIME,
            "last_used": _NULLABLE_TIME,
            "namespaces": {"type": ["array", "null"], "items": {"type": "string"}},
            "role": {"type": ["string", "null"], "enum": ["reader", "writer", "admin", None]},
        },
    },
    "NewApiKey": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "maxLength": 200},
            "expires_in_seconds": {"type": "integer", "minimum": 1},
            "namespaces": {"type": "array", "items": {"type": "string"}},
            "role": _ROLE,
        },
    },
    "ApiKeyList": {
        "type": "object",
        "required": ["keys"],
        "additionalProperties": False,
        "properties": {"keys": {"type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}}},
    },
    "Team": {
        "type": "object",
        "required": ["name", "description", "created"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "created": _TIME,
            "members": {"type": "array", "items": {"type": "string"}},
        },
    },
    "NewTeam": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {**_NAME, "pattern": "^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"},
            "description": {"type": "string", "maxLength": 1000},
        },
    },
    "TeamList": {
        "type": "object",
        "required": ["teams"],
        "additionalProperties": False,
        "properties": {"teams": {"type": "array", "items": {"$ref": "#/components/schemas/Team"}}},
    },
    "Grant": {
        "type": "object",
        "required": ["id", "namespace", "repository", "role", "created", "created_by"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "description": "<user|team>:<name>@<namespace or repository>"},
            "namespace": {"type": "string"},
            "repository": {"type": ["string", "null"]},
            "team": {"type": "string"},
            "user": {"type": "string"},
            "role": _ROLE,
            "created": _TIME,
            "created_by": {"type": "string"},
        },
        "oneOf": [{"required": ["team"]}, {"required": ["user"]}],
    },
    "NewGrant": {
        "type": "object",
        "required": ["role"],
        "additionalProperties": False,
        "properties": {
            "team": {"type": "string"},
            "user": {"type": "string"},
            "role": _ROLE,
            "repository": {
                "type": "string",
                "description": "A repository of the namespace (full name or relative); omit for the whole namespace",
            },
        },
        "oneOf": [{"required": ["team"]}, {"required": ["user"]}],
    },
    "Permissions": {
        "type": "object",
        "required": ["namespace", "grants", "public", "public_repositories"],
        "additionalProperties": False,
        "properties": {
            "namespace": {"type": "string"},
            "grants": {"type": "array", "items": {"$ref": "#/components/schemas/Grant"}},
            "public": {"type": "boolean"},
            "public_repositories": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Visibility": {
        "type": "object",
        "required": ["public"],
        "additionalProperties": False,
        "properties": {"public": {"type": "boolean"}, "repository": {"type": "string"}},
    },
    "VisibilityState": {
        "type": "object",
        "required": ["namespace", "repository", "public"],
        "additionalProperties": False,
        "properties": {
            "namespace": {"type": "string"},
            "repository": {"type": ["string", "null"]},
            "public": {"type": "boolean"},
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "time", "actor", "action", "resource", "outcome", "source_address", "detail"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "time": _TIME,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "resource": {"type": "string"},
            "outcome": {"type": "string", "enum": ["success", "denied", "failure"]},
            "source_address": {"type": "string"},
            "detail": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "AuditPage": {
        "type": "object",
        "required": ["entries", "next"],
        "additionalProperties": False,
        "properties": {
            "entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}},
            "next": {"type": ["string", "null"], "description": "Pass as ?after= for the next page"},
        },
    },
    "Token": {
        "type": "object",
        "required": ["token", "access_token", "expires_in", "issued_at"],
        "additionalProperties": False,
        "properties": {
            "token": {"type": "string"},
            "access_token": {"type": "string"},
            "expires_in": {"type": "integer", "minimum": 60},
            "issued_at": _TIME,
            "scope": {"type": "string"},
            "refresh_token": {"type": "string"},
        },
    },
}
SCHEMAS["CreatedApiKey"] = {
    **SCHEMAS["ApiKey"],
    "required": [*SCHEMAS["ApiKey"]["required"], "key"],
    "properties": {
        **SCHEMAS["ApiKey"]["properties"],
        "key": {"type": "string", "description": "The key (hzr_<prefix>_<secret>); shown only in this response"},
    },
}


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json("Error")}


_ERRORS = {
    "400": _error("Invalid request"),
    "401": {**_error("Authentication required or invalid credentials"),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
    "403": _error("The caller may not do this"),
    "429": {**_error("Too many failed logins from this address"),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}


def _op(summary: str, responses: dict[str, Any], *, body: str | None = None, params: list[Any] | None = None,
        errors: tuple[str, ...] = ("400", "401", "403", "429"), security: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **{e: _ERRORS[e] for e in errors}}}
    if body:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    if not security:
        op["security"] = []
    return op


def _path(name: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_PAGE = [_query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
         _query("after", {"type": "string"}, "Return items after this one")]
_NO_CONTENT = {"204": {"description": "Done"}}
_NOT_FOUND = {"404": _error("No such user, team, key or grant")}
_CONFLICT = {"409": _error("Already exists")}


def _paths() -> dict[str, Any]:
    user, team, ns = _path("user"), _path("team"), _path("namespace")
    return {
        "/token": {
            "get": _op(
                "Docker token authentication: a token granting the requested scopes you hold",
                {"200": {"description": "A token", **_json("Token")}},
                params=[
                    _query("service", {"type": "string"}),
                    {**_query("scope", {"type": "array", "items": {"type": "string"}}), "explode": True},
                    _query("account", {"type": "string"}),
                    _query("offline_token", {"type": "string", "enum": ["true", "false"]}),
                    _query("client_id", {"type": "string"}),
                ],
                errors=("400", "401", "429"),
            ),
            "post": {
                "summary": "OAuth2 token request (password or refresh_token grant)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "required": ["grant_type"],
                                "properties": {
                                    "grant_type": {"type": "string", "enum": ["password", "refresh_token"]},
                                    "username": {"type": "string"},
                                    "password": {"type": "string"},
                                    "refresh_token": {"type": "string"},
                                    "service": {"type": "string"},
                                    "client_id": {"type": "string"},
                                    "access_type": {"type": "string", "enum": ["online", "offline"]},
                                    "scope": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "A token", **_json("Token")},
                              **{e: _ERRORS[e] for e in ("400", "401", "429")},
                              "413": _error("Request too large")},
                "security": [],
            },
        },
        "/v1/registry/openapi.json": {
            "get": {"summary": "This document", "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}}
        },
        "/v1/registry/me": {"get": _op("The calling user", {"200": {"description": "You", **_json("User")}})},
        "/v1/registry/users": {
            "get": _op("List users (admins)", {"200": {"description": "Users", **_json("UserList")}}, params=_PAGE),
            "post": _op("Create a user (admins)", {"201": {"description": "Created", **_json("User")}, **_CONFLICT},
                        body="NewUser"),
        },
        "/v1/registry/users/{user}": {
            "get": _op("A user (admins, or the user)", {"200": {"description": "The user", **_json("User")},
                                                         **_NOT_FOUND}, params=[user]),
            "delete": _op("Delete a user with its keys, memberships and grants (admins)",
                          {**_NO_CONTENT, **_NOT_FOUND}, params=[user]),
        },
        "/v1/registry/users/{user}/keys": {
            "get": _op("The user's API keys (prefixes only)", {"200": {"description": "Keys", **_json("ApiKeyList")},
                                                               **_NOT_FOUND}, params=[user]),
            "post": _op("Create an API key; the key is in this response only",
                        {"201": {"description": "Created", **_json("CreatedApiKey")}, **_NOT_FOUND},
                        body="NewApiKey", params=[user]),
        },
        "/v1/registry/users/{user}/keys/{prefix}": {
            "delete": _op("Revoke an API key", {**_NO_CONTENT, **_NOT_FOUND}, params=[user, _path("prefix")]),
        },
        "/v1/registry/teams": {
            "get": _op("List teams (admins)", {"200": {"description": "Teams", **_json("TeamList")}}, params=_PAGE),
            "post": _op("Create a team (admins)", {"201": {"description": "Created", **_json("Team")}, **_CONFLICT},
                        body="NewTeam"),
        },
        "/v1/registry/teams/{team}": {
            "get": _op("A team and its members (admins)", {"200": {"description": "The team", **_json("Team")},
                                                           **_NOT_FOUND}, params=[team]),
            "delete": _op("Delete a team with its memberships and grants (admins)", {**_NO_CONTENT, **_NOT_FOUND},
                          params=[team]),
        },
        "/v1/registry/teams/{team}/members/{user}": {
            "put": _op("Add a member (admins)", {**_NO_CONTENT, **_NOT_FOUND}, params=[team, user]),
            "delete": _op("Remove a member (admins)", {**_NO_CONTENT, **_NOT_FOUND}, params=[team, user]),
        },
        "/v1/registry/audit": {
            "get": _op(
                "The audit log, oldest first (admins)",
                {"200": {"description": "Entries", **_json("AuditPage")}},
                params=[*_PAGE, _query("actor", {"type": "string"}), _query("action", {"type": "string"})],
            ),
        },
        **{
            # The short spelling is the product's; /namespaces/ is unambiguous for a namespace
            # named like another route (users, teams, audit, me).
            f"/v1/registry{spelling}/{{namespace}}/{rest}": item
            for spelling in ("", "/namespaces")
            for rest, item in _namespace_paths(ns).items()
        },
    }


def _namespace_paths(ns: dict[str, Any]) -> dict[str, Any]:
    return {
        "permissions": {
            "get": _op("Grants and visibility of a namespace (admins, namespace admins)",
                       {"200": {"description": "Grants", **_json("Permissions")}}, params=[ns]),
            "post": _op("Grant a role on the namespace or one of its repositories to a team or user",
                        {"201": {"description": "Granted", **_json("Grant")}, **_NOT_FOUND},
                        body="NewGrant", params=[ns]),
        },
        "permissions/{grant}": {
            "delete": _op("Revoke a grant", {**_NO_CONTENT, **_NOT_FOUND}, params=[ns, _path("grant")]),
        },
        "visibility": {
            "put": _op("Make the namespace or one of its repositories public (anonymous pull) or private",
                       {"200": {"description": "The new state", **_json("VisibilityState")}},
                       body="Visibility", params=[ns]),
        },
    }


@cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Hanzo Registry management API",
            "version": "1.0.0",
            "description": "Users, teams, API keys, permissions and the audit log; the Docker token endpoint. "
            "Authenticate with `Authorization: Bearer <API key>`, Basic (user or `hanzo`, API key), or a "
            "registry token.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key (hzr_...) or a token"},
                "basic": {"type": "http", "scheme": "basic", "description": "User name (or `hanzo`) and API key"},
            },
        },
        "security": [{"apiKey": []}, {"basic": []}],
        "paths": _paths(),
    }


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may modify it)."""
    return copy.deepcopy(_document())
