"""The management API under /v1/registry/: users, teams, memberships, API keys, permissions, visibility,
policies, the audit log, and the OpenAPI document describing all of it.

ROUTES is the one table of operations: each names its path, its pydantic models
(services/distribution/management_models.py) and who may call it (management_api.Requirement); the
OpenAPI document is generated from it (services/distribution/openapi.py). Handlers stay thin: they get a
validated Call (and body) and return a response model. Errors are the registry's typed errors, rendered
as its JSON error document.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from aiohttp import web

from services.core.auth.audit import AuditRecord
from services.core.auth.errors import InvalidRequestError, NotFoundError
from services.core.auth.model import ApiKey as ApiKeyRecord
from services.core.auth.model import Grant as GrantRecord
from services.core.auth.model import Role, SubjectKind
from services.core.auth.model import User as UserRecord
from services.core.oci.names import RepositoryName
from services.distribution import management_models as m
from services.distribution.management_api import PREFIX, Call, Requirement, Route, register
from services.distribution.management_gc import gc_routes
from services.distribution.management_models_api import model_routes
from services.distribution.management_policy import install as install_policies
from services.distribution.management_policy import policy_routes
from services.distribution.management_replication import replication_routes
from services.distribution.management_repositories import repository_routes
from services.distribution.management_upstreams import upstream_routes
from services.distribution.management_webhooks import webhook_routes
from services.distribution.openapi import build_document
from services.distribution.scanner_api import scanner_routes
from services.distribution.signer_api import signer_routes

__all__ = ["PREFIX", "ROUTES", "add_management_routes", "openapi_document"]


def user_model(user: UserRecord, *, teams: list[str] | None = None) -> m.User:
    fields: dict[str, Any] = {"name": user.name, "email": user.email, "admin": user.admin,
                              "created": m.timestamp(user.created)}
    if user.external:
        fields |= {"external_issuer": user.external_issuer, "signed_in": m.timestamp(user.last_sign_in())}
    if teams is not None:
        fields["teams"] = teams
    return m.User(**fields)


def key_model(key: ApiKeyRecord) -> dict[str, Any]:
    return {
        "prefix": key.prefix,
        "user": key.user,
        "name": key.name,
        "created": m.timestamp(key.created),
        "expires": m.maybe_timestamp(key.expires),
        "revoked": m.maybe_timestamp(key.revoked),
        "last_used": m.maybe_timestamp(key.last_used),
        "namespaces": list(key.namespaces) if key.namespaces is not None else None,
        "role": key.role.value if key.role else None,
    }


def grant_model(grant: GrantRecord) -> m.Grant:
    return m.Grant(
        id=grant.id,
        namespace=grant.namespace,
        repository=grant.repository,
        role=grant.role.value,
        created=m.timestamp(grant.created),
        created_by=grant.created_by,
        **{grant.subject_kind.value: grant.subject},
    )


def audit_model(record: AuditRecord) -> m.AuditEntry:
    return m.AuditEntry.model_validate(record.to_json())


# handlers


async def openapi(call: Call) -> m.OpenApiDocument:
    return m.OpenApiDocument.model_validate(openapi_document())


async def me(call: Call) -> m.User:
    caller = call.who
    user = await call.access.service.require_user(caller.name)
    return user_model(user, teams=sorted(caller.subject.teams))


async def create_user(call: Call, body: m.NewUser) -> m.User:
    user = await call.access.service.create_user(body.name, email=body.email, admin=body.admin,
                                                 actor=call.who.name, source=call.who.source)
    return user_model(user, teams=[])


async def list_users(call: Call) -> m.UserList:
    page: m.Page = call.query
    users = await call.access.service.store.users(after=page.after, limit=page.limit)
    return m.UserList(users=[user_model(u) for u in users])


async def get_user(call: Call) -> m.User:
    service = call.access.service
    user = await service.require_user(call.param("user"))
    return user_model(user, teams=await service.store.teams_of(user.name))


async def delete_user(call: Call) -> None:
    name = call.param("user")
    if name == call.who.name:
        raise InvalidRequestError("you cannot delete yourself")
    await call.access.service.delete_user(name, actor=call.who.name, source=call.who.source)


async def create_key(call: Call, body: m.NewApiKey) -> m.CreatedApiKey:
    created = await call.access.service.create_key(
        call.param("user"),
        name=body.name,
        expires_in=float(body.expires_in_seconds) if body.expires_in_seconds is not None else None,
        namespaces=body.namespaces,
        role=Role(body.role) if body.role is not None else None,
        actor=call.who.name,
        source=call.who.source,
    )
    return m.CreatedApiKey(**key_model(created.key), key=created.secret)


async def list_keys(call: Call) -> m.ApiKeyList:
    service = call.access.service
    user = await service.require_user(call.param("user"))
    return m.ApiKeyList(keys=[m.ApiKey(**key_model(k)) for k in await service.store.keys_of(user.name)])


async def revoke_key(call: Call) -> None:
    await call.access.service.revoke_key(call.param("user"), call.param("prefix"), actor=call.who.name,
                                         source=call.who.source)


async def create_team(call: Call, body: m.NewTeam) -> m.Team:
    team = await call.access.service.create_team(body.name, description=body.description, actor=call.who.name,
                                                 source=call.who.source)
    return m.Team(name=team.name, description=team.description, created=m.timestamp(team.created), members=[])


async def list_teams(call: Call) -> m.TeamList:
    page: m.Page = call.query
    teams = await call.access.service.store.teams(after=page.after, limit=page.limit)
    return m.TeamList(teams=[m.Team(name=t.name, description=t.description, created=m.timestamp(t.created))
                             for t in teams])


async def get_team(call: Call) -> m.Team:
    service = call.access.service
    team = await service.require_team(call.param("team"))
    return m.Team(name=team.name, description=team.description, created=m.timestamp(team.created),
                  members=await service.store.members(team.name))


async def delete_team(call: Call) -> None:
    await call.access.service.delete_team(call.param("team"), actor=call.who.name, source=call.who.source)


async def add_member(call: Call) -> None:
    await call.access.service.add_member(call.param("team"), call.param("user"), actor=call.who.name,
                                         source=call.who.source)


async def remove_member(call: Call) -> None:
    await call.access.service.remove_member(call.param("team"), call.param("user"), actor=call.who.name,
                                            source=call.who.source)


def _repository(namespace: str, value: str | None) -> str | None:
    if value is None:
        return None
    name = value if value == namespace or value.startswith(namespace + "/") else f"{namespace}/{value}"
    return str(RepositoryName(name))


async def create_grant(call: Call, body: m.NewGrant) -> m.Grant:
    namespace = call.namespace
    assert namespace is not None
    kind, subject = (SubjectKind.TEAM, body.team) if body.team is not None else (SubjectKind.USER, body.user)
    assert subject is not None
    grant = await call.access.service.put_grant(
        namespace,
        repository=_repository(namespace, body.repository),
        subject_kind=kind,
        subject=subject,
        role=Role(body.role),
        actor=call.who.name,
        source=call.who.source,
    )
    return grant_model(grant)


async def list_grants(call: Call) -> m.Permissions:
    namespace = call.namespace
    assert namespace is not None
    store = call.access.service.store
    grants = sorted(await store.grants_for(namespace), key=lambda g: g.id)
    marks = await store.public_marks(namespace)
    return m.Permissions(
        namespace=namespace,
        grants=[grant_model(g) for g in grants],
        public=None in marks,
        public_repositories=sorted(mark for mark in marks if mark is not None),
    )


async def revoke_grant(call: Call) -> None:
    assert call.namespace is not None
    await call.access.service.revoke_grant(call.namespace, call.param("grant"), actor=call.who.name,
                                           source=call.who.source)


async def set_visibility(call: Call, body: m.Visibility) -> m.VisibilityState:
    namespace = call.namespace
    assert namespace is not None
    repository = _repository(namespace, body.repository)
    await call.access.service.set_public(namespace, repository, public=body.public, actor=call.who.name,
                                         source=call.who.source)
    return m.VisibilityState(namespace=namespace, repository=repository, public=body.public)


async def list_audit(call: Call) -> m.AuditPage:
    query: m.AuditQuery = call.query
    where = {k: v for k, v in (("actor", query.actor), ("action", query.action)) if v}
    entries = await call.access.service.store.audit(after=query.after, limit=query.limit, where=where)
    return m.AuditPage(entries=[audit_model(e) for e in entries],
                       next=entries[-1].id if len(entries) == query.limit else None)


async def not_found(call: Call) -> None:
    request = call.request
    raise NotFoundError(f"no management endpoint {request.method} {request.path[:200]}")


async def _served_elsewhere(call: Call) -> None:  # pragma: no cover - documentation only
    raise NotFoundError("served by services/distribution/auth_token.py")


R = Requirement


def _namespace_routes(spelling: str) -> list[Route]:
    # The short spelling is the product's; /namespaces/ is unambiguous for a namespace named like
    # another route (users, teams, audit, me).
    ns = f"{spelling}/{{namespace}}"
    return [
        Route("POST", f"{ns}/permissions", create_grant, R.NAMESPACE_ADMIN,
              "Grant a role on the namespace or one of its repositories to a team or user",
              status=201, response=m.Grant, body=m.NewGrant, errors=(404,)),
        Route("GET", f"{ns}/permissions", list_grants, R.NAMESPACE_ADMIN,
              "Grants and visibility of a namespace", response=m.Permissions),
        Route("DELETE", f"{ns}/permissions/{{grant:.+}}", revoke_grant, R.NAMESPACE_ADMIN, "Revoke a grant",
              status=204, errors=(404,)),
        Route("PUT", f"{ns}/visibility", set_visibility, R.NAMESPACE_ADMIN,
              "Make the namespace or one of its repositories public (anonymous pull) or private",
              response=m.VisibilityState, body=m.Visibility),
    ]


ROUTES: list[Route] = [
    Route("GET", "/openapi.json", openapi, R.ANONYMOUS, "This document", response=m.OpenApiDocument,
          base_errors=()),
    Route("GET", "/me", me, R.USER, "The calling user", response=m.User),
    Route("POST", "/users", create_user, R.REGISTRY_ADMIN, "Create a user", status=201, response=m.User,
          body=m.NewUser, errors=(409,)),
    Route("GET", "/users", list_users, R.REGISTRY_ADMIN, "List users", response=m.UserList, query=m.Page),
    Route("GET", "/users/{user}", get_user, R.SELF_OR_ADMIN, "A user", response=m.User, errors=(404,)),
    Route("DELETE", "/users/{user}", delete_user, R.REGISTRY_ADMIN,
          "Delete a user with its keys, memberships and grants", status=204, errors=(404,)),
    Route("POST", "/users/{user}/keys", create_key, R.KEY_MANAGER,
          "Create an API key; the key is in this response only", status=201, response=m.CreatedApiKey,
          body=m.NewApiKey, errors=(404,), headers={"Cache-Control": "no-store"}),
    Route("GET", "/users/{user}/keys", list_keys, R.KEY_MANAGER, "The user's API keys (prefixes only)",
          response=m.ApiKeyList, errors=(404,)),
    Route("DELETE", "/users/{user}/keys/{prefix}", revoke_key, R.KEY_MANAGER, "Revoke an API key", status=204,
          errors=(404,)),
    Route("POST", "/teams", create_team, R.REGISTRY_ADMIN, "Create a team", status=201, response=m.Team,
          body=m.NewTeam, errors=(409,)),
    Route("GET", "/teams", list_teams, R.REGISTRY_ADMIN, "List teams", response=m.TeamList, query=m.Page),
    Route("GET", "/teams/{team}", get_team, R.REGISTRY_ADMIN, "A team and its members", response=m.Team,
          errors=(404,)),
    Route("DELETE", "/teams/{team}", delete_team, R.REGISTRY_ADMIN, "Delete a team with its memberships and grants",
          status=204, errors=(404,)),
    Route("PUT", "/teams/{team}/members/{user}", add_member, R.REGISTRY_ADMIN, "Add a member", status=204,
          errors=(404,)),
    Route("DELETE", "/teams/{team}/members/{user}", remove_member, R.REGISTRY_ADMIN, "Remove a member", status=204,
          errors=(404,)),
    Route("GET", "/audit", list_audit, R.REGISTRY_ADMIN, "The audit log, oldest first", response=m.AuditPage,
          query=m.AuditQuery),
    *webhook_routes(),
    *upstream_routes(),
    *policy_routes(),
    *repository_routes(),
    *replication_routes(),
    *scanner_routes(),
    *model_routes(),
    *_namespace_routes("/namespaces"),
    *_namespace_routes(""),
    *signer_routes(),
    *gc_routes(),
]
"""Every operation, in routing order (fixed paths before the namespace routes)."""

CATCH_ALL = Route("*", "/{tail:.*}", not_found, R.ANONYMOUS, "No such endpoint", documented=False)

TOKEN_ROUTES: list[Route] = [
    Route("GET", "/token", _served_elsewhere, R.ANONYMOUS,
          "Docker token authentication: a token granting the requested scopes you hold",
          response=m.Token, query=m.TokenQuery, base_errors=(400, 401, 429), prefix=""),
    Route("POST", "/token", _served_elsewhere, R.ANONYMOUS,
          "OAuth2 token request (password or refresh_token grant)", response=m.Token, body=m.TokenForm,
          body_media="application/x-www-form-urlencoded", base_errors=(400, 401, 429), errors=(413,),
          prefix=""),
]
"""The token endpoint (served by auth_token.py), documented in the same document."""


@cache
def _document() -> dict[str, Any]:
    return build_document([*TOKEN_ROUTES, *ROUTES])


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the OpenAPI document (callers may modify it)."""
    return copy.deepcopy(_document())


def add_management_routes(app: web.Application) -> None:
    install_policies(app)
    register(app, [*ROUTES, CATCH_ALL])
