"""The management API under /v1/registry/: users, teams, memberships, API keys, permissions, visibility,
the audit log, and the OpenAPI document describing all of it (services/distribution/openapi.py).

Registry admins may do everything. A user may read itself and manage its own API keys; a namespace
admin (role admin on the namespace) manages that namespace's permissions and visibility.
Errors are the registry's typed errors, rendered as its JSON error document.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.core.auth.audit import AuditRecord
from services.core.auth.errors import InvalidRequestError, NotFoundError
from services.core.auth.model import ApiKey, Grant, Role, Subject, SubjectKind, User, valid_namespace
from services.core.errors import DeniedError, NameInvalidError
from services.core.oci.names import RepositoryName
from services.distribution.auth_access import AuthPrincipal, TokenAccess, source_address
from services.distribution.keys import ACCESS
from services.distribution.openapi import openapi_document

PREFIX = "/v1/registry"
MAX_BODY = 64 * 1024
MAX_PAGE = 1000
MAX_KEY_LIFETIME = 10 * 365 * 24 * 3600


def _access(request: web.Request) -> TokenAccess:
    access = request.app[ACCESS]
    assert isinstance(access, TokenAccess)
    return access


def _time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class Caller:
    def __init__(self, principal: AuthPrincipal, subject: Subject, source: str) -> None:
        self.principal = principal
        self.subject = subject
        self.source = source

    @property
    def name(self) -> str:
        return self.principal.name

    @property
    def admin(self) -> bool:
        s = self.subject
        return s.admin and s.key_namespaces is None and s.key_role in (None, Role.ADMIN)

    @property
    def unrestricted_key(self) -> bool:
        """An API key with no namespace or role limit: the only credential that may manage keys, since a
        new key must never hold more than the credential that made it."""
        s = self.subject
        return self.principal.via == "key" and s.key_namespaces is None and s.key_role in (None, Role.ADMIN)


async def _caller(request: web.Request) -> Caller:
    access = _access(request)
    principal = await access.authenticate(request)
    assert isinstance(principal, AuthPrincipal)
    if principal.anonymous:
        raise access.challenge(request, "authentication required")
    subject = await access.subject(principal)
    if subject.user is None:
        raise access.challenge(request, "authentication required", error="invalid_token")
    if principal.via == "token" and request.method not in ("GET", "HEAD"):
        # A registry access token carries repository scopes for the OCI API and lives minutes; letting it
        # change users, keys or permissions would turn it into lasting power it was never issued for.
        raise DeniedError("registry access tokens cannot change the registry's settings; use an API key")
    return Caller(principal, subject, source_address(request))


async def _admin(request: web.Request) -> Caller:
    caller = await _caller(request)
    if not caller.admin:
        raise DeniedError("only registry admins may do this")
    return caller


async def _self_or_admin(request: web.Request, user: str) -> Caller:
    caller = await _caller(request)
    if not caller.admin and caller.name != user:
        raise DeniedError("only registry admins may manage other users")
    return caller


async def _key_manager(request: web.Request, user: str) -> Caller:
    caller = await _caller(request)
    if not caller.unrestricted_key:
        raise DeniedError("API keys are managed with an API key that has no namespace or role limit")
    if not caller.admin and caller.name != user:
        raise DeniedError("only registry admins may manage other users' keys")
    return caller


async def _namespace_manager(request: web.Request) -> tuple[Caller, str]:
    namespace = request.match_info["namespace"]
    if not valid_namespace(namespace):
        raise NameInvalidError(f"namespace {namespace[:100]!r} is invalid")
    caller = await _caller(request)
    if not caller.admin and not await _access(request).service.manages(caller.subject, namespace):
        raise DeniedError(f"only admins of namespace {namespace} may manage its permissions")
    return caller, namespace


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise InvalidRequestError(f"the request body is limited to {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise InvalidRequestError(f"the request body is limited to {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequestError("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequestError(f"field {name!r} is required")
        return None
    if isinstance(value, bool) and kind is not bool and (not isinstance(kind, tuple) or bool not in kind):
        raise InvalidRequestError(f"field {name!r} has the wrong type")
    if not isinstance(value, kind):
        raise InvalidRequestError(f"field {name!r} has the wrong type")
    return value


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise InvalidRequestError(f"unknown field(s): {', '.join(sorted(unknown))[:200]}")


def _page(request: web.Request) -> tuple[int, str | None]:
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidRequestError(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(raw), request.query.get("after") or None


def _role(value: Any) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InvalidRequestError(f"role must be one of {', '.join(r.value for r in Role)}") from None


# JSON shapes (they match the OpenAPI schemas)


def user_json(user: User, *, teams: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": user.name, "email": user.email, "admin": user.admin, "created": _time(user.created)}
    if teams is not None:
        body["teams"] = teams
    return body


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "prefix": key.prefix,
        "user": key.user,
        "name": key.name,
        "created": _time(key.created),
        "expires": _time(key.expires),
        "revoked": _time(key.revoked),
        "last_used": _time(key.last_used),
        "namespaces": list(key.namespaces) if key.namespaces is not None else None,
        "role": key.role.value if key.role else None,
    }


def grant_json(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "namespace": grant.namespace,
        "repository": grant.repository,
        grant.subject_kind.value: grant.subject,
        "role": grant.role.value,
        "created": _time(grant.created),
        "created_by": grant.created_by,
    }


def audit_json(record: AuditRecord) -> dict[str, Any]:
    return record.to_json()


# handlers


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def me(request: web.Request) -> web.Response:
    caller = await _caller(request)
    user = await _access(request).service.require_user(caller.name)
    return web.json_response(user_json(user, teams=sorted(caller.subject.teams)))


async def create_user(request: web.Request) -> web.Response:
    caller = await _admin(request)
    body = await _body(request)
    _check_fields(body, {"name", "email", "admin"})
    user = await _access(request).service.create_user(
        _field(body, "name", str, required=True),
        email=_field(body, "email", str),
        admin=bool(_field(body, "admin", bool)),
        actor=caller.name,
        source=caller.source,
    )
    return web.json_response(user_json(user, teams=[]), status=201)


async def list_users(request: web.Request) -> web.Response:
    await _admin(request)
    limit, after = _page(request)
    users = await _access(request).service.store.users(after=after, limit=limit)
    return web.json_response({"users": [user_json(u) for u in users]})


async def get_user(request: web.Request) -> web.Response:
    name = request.match_info["user"]
    await _self_or_admin(request, name)
    service = _access(request).service
    user = await service.require_user(name)
    return web.json_response(user_json(user, teams=await service.store.teams_of(name)))


async def delete_user(request: web.Request) -> web.Response:
    caller = await _admin(request)
    name = request.match_info["user"]
    if name == caller.name:
        raise InvalidRequestError("you cannot delete yourself")
    await _access(request).service.delete_user(name, actor=caller.name, source=caller.source)
    return web.Response(status=204)


async def create_key(request: web.Request) -> web.Response:
    user = request.match_info["user"]
    caller = await _key_manager(request, user)
    body = await _body(request)
    _check_fields(body, {"name", "expires_in_seconds", "namespaces", "role"})
    namespaces = _field(body, "namespaces", list)
    if namespaces is not None and not all(isinstance(n, str) for n in namespaces):
        raise InvalidRequestError("namespaces must be a list of strings")
    role_value = _field(body, "role", str)
    role = _role(role_value) if role_value is not None else None
    expires_in = _field(body, "expires_in_seconds", int)
    if expires_in is not None and not 1 <= expires_in <= MAX_KEY_LIFETIME:
        raise InvalidRequestError(f"expires_in_seconds must be an integer from 1 to {MAX_KEY_LIFETIME} (10 years)")
    created = await _access(request).service.create_key(
        user,
        name=(_field(body, "name", str) or "")[:200],
        expires_in=float(expires_in) if expires_in is not None else None,
        namespaces=namespaces,
        role=role,
        actor=caller.name,
        source=caller.source,
    )
    return web.json_response({**key_json(created.key), "key": created.secret}, status=201,
                             headers={"Cache-Control": "no-store"})


async def list_keys(request: web.Request) -> web.Response:
    user = request.match_info["user"]
    await _key_manager(request, user)
    service = _access(request).service
    await service.require_user(user)
    return web.json_response({"keys": [key_json(k) for k in await service.store.keys_of(user)]})


async def revoke_key(request: web.Request) -> web.Response:
    user = request.match_info["user"]
    caller = await _key_manager(request, user)
    await _access(request).service.revoke_key(user, request.match_info["prefix"], actor=caller.name,
                                              source=caller.source)
    return web.Response(status=204)


async def create_team(request: web.Request) -> web.Response:
    caller = await _admin(request)
    body = await _body(request)
    _check_fields(body, {"name", "description"})
    team = await _access(request).service.create_team(
        _field(body, "name", str, required=True),
        description=(_field(body, "description", str) or "")[:1000],
        actor=caller.name,
        source=caller.source,
    )
    return web.json_response(
        {"name": team.name, "description": team.description, "created": _time(team.created), "members": []},
        status=201,
    )


async def list_teams(request: web.Request) -> web.Response:
    await _admin(request)
    limit, after = _page(request)
    teams = await _access(request).service.store.teams(after=after, limit=limit)
    return web.json_response(
        {"teams": [{"name": t.name, "description": t.description, "created": _time(t.created)} for t in teams]}
    )


async def get_team(request: web.Request) -> web.Response:
    await _admin(request)
    service = _access(request).service
    team = await service.require_team(request.match_info["team"])
    members = await service.store.members(team.name)
    return web.json_response(
        {"name": team.name, "description": team.description, "created": _time(team.created), "members": members}
    )


async def delete_team(request: web.Request) -> web.Response:
    caller = await _admin(request)
    await _access(request).service.delete_team(request.match_info["team"], actor=caller.name, source=caller.source)
    return web.Response(status=204)


async def add_member(request: web.Request) -> web.Response:
    caller = await _admin(request)
    await _access(request).service.add_member(
        request.match_info["team"], request.match_info["user"], actor=caller.name, source=caller.source
    )
    return web.Response(status=204)


async def remove_member(request: web.Request) -> web.Response:
    caller = await _admin(request)
    await _access(request).service.remove_member(
        request.match_info["team"], request.match_info["user"], actor=caller.name, source=caller.source
    )
    return web.Response(status=204)


def _repository(namespace: str, value: str | None) -> str | None:
    if value is None:
        return None
    name = value if value == namespace or value.startswith(namespace + "/") else f"{namespace}/{value}"
    return str(RepositoryName(name))


async def create_grant(request: web.Request) -> web.Response:
    caller, namespace = await _namespace_manager(request)
    body = await _body(request)
    _check_fields(body, {"team", "user", "role", "repository"})
    team, user = _field(body, "team", str), _field(body, "user", str)
    if (team is None) == (user is None):
        raise InvalidRequestError("give exactly one of team and user")
    kind, subject = (SubjectKind.TEAM, team) if team is not None else (SubjectKind.USER, user)
    grant = await _access(request).service.put_grant(
        namespace,
        repository=_repository(namespace, _field(body, "repository", str)),
        subject_kind=kind,
        subject=subject,
        role=_role(_field(body, "role", str, required=True)),
        actor=caller.name,
        source=caller.source,
    )
    return web.json_response(grant_json(grant), status=201)


async def list_grants(request: web.Request) -> web.Response:
    _, namespace = await _namespace_manager(request)
    store = _access(request).service.store
    grants = sorted(await store.grants_for(namespace), key=lambda g: g.id)
    marks = await store.public_marks(namespace)
    return web.json_response(
        {
            "namespace": namespace,
            "grants": [grant_json(g) for g in grants],
            "public": None in marks,
            "public_repositories": sorted(m for m in marks if m is not None),
        }
    )


async def revoke_grant(request: web.Request) -> web.Response:
    caller, namespace = await _namespace_manager(request)
    await _access(request).service.revoke_grant(
        namespace, request.match_info["grant"], actor=caller.name, source=caller.source
    )
    return web.Response(status=204)


async def set_visibility(request: web.Request) -> web.Response:
    caller, namespace = await _namespace_manager(request)
    body = await _body(request)
    _check_fields(body, {"public", "repository"})
    public = _field(body, "public", bool, required=True)
    repository = _repository(namespace, _field(body, "repository", str))
    await _access(request).service.set_public(namespace, repository, public=public, actor=caller.name,
                                              source=caller.source)
    return web.json_response({"namespace": namespace, "repository": repository, "public": public})


async def list_audit(request: web.Request) -> web.Response:
    await _admin(request)
    limit, after = _page(request)
    where = {k: request.query[k] for k in ("actor", "action") if request.query.get(k)}
    entries = await _access(request).service.store.audit(after=after, limit=limit, where=where)
    return web.json_response(
        {
            "entries": [audit_json(e) for e in entries],
            "next": entries[-1].id if len(entries) == limit else None,
        }
    )


async def not_found(request: web.Request) -> web.Response:
    raise NotFoundError(f"no management endpoint {request.method} {request.path[:200]}")


def add_management_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/openapi.json", openapi)
    r.add_get(f"{PREFIX}/me", me)
    r.add_post(f"{PREFIX}/users", create_user)
    r.add_get(f"{PREFIX}/users", list_users)
    r.add_get(f"{PREFIX}/users/{{user}}", get_user)
    r.add_delete(f"{PREFIX}/users/{{user}}", delete_user)
    r.add_post(f"{PREFIX}/users/{{user}}/keys", create_key)
    r.add_get(f"{PREFIX}/users/{{user}}/keys", list_keys)
    r.add_delete(f"{PREFIX}/users/{{user}}/keys/{{prefix}}", revoke_key)
    r.add_post(f"{PREFIX}/teams", create_team)
    r.add_get(f"{PREFIX}/teams", list_teams)
    r.add_get(f"{PREFIX}/teams/{{team}}", get_team)
    r.add_delete(f"{PREFIX}/teams/{{team}}", delete_team)
    r.add_put(f"{PREFIX}/teams/{{team}}/members/{{user}}", add_member)
    r.add_delete(f"{PREFIX}/teams/{{team}}/members/{{user}}", remove_member)
    r.add_get(f"{PREFIX}/audit", list_audit)
    # Unambiguous spellings of the namespace routes below: the short ones are shadowed for a
    # namespace named like a route above (users, teams, audit, me).
    r.add_post(f"{PREFIX}/namespaces/{{namespace}}/permissions", create_grant)
    r.add_get(f"{PREFIX}/namespaces/{{namespace}}/permissions", list_grants)
    r.add_delete(f"{PREFIX}/namespaces/{{namespace}}/permissions/{{grant:.+}}", revoke_grant)
    r.add_put(f"{PREFIX}/namespaces/{{namespace}}/visibility", set_visibility)
    r.add_post(f"{PREFIX}/{{namespace}}/permissions", create_grant)
    r.add_get(f"{PREFIX}/{{namespace}}/permissions", list_grants)
    r.add_delete(f"{PREFIX}/{{namespace}}/permissions/{{grant:.+}}", revoke_grant)
    r.add_put(f"{PREFIX}/{{namespace}}/visibility", set_visibility)
    r.add_route("*", f"{PREFIX}/{{tail:.*}}", not_found)
