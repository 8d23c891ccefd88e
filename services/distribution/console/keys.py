"""The console's page of the caller's own API keys: list, create (the key shown once) and revoke.

A user who signs in with single sign-on has no key for docker, podman or oras until it makes one: this is
the console's way (as Harbor's "CLI secret"). Each action goes through the management API's own handler and
its requirement (`key-manager`: an unrestricted credential of the user, so a session made with a limited key
cannot make an unlimited one), and every form POST carries the session's CSRF value.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web
from pydantic import ValidationError

from services.core.auth.errors import InvalidRequestError
from services.distribution import management as mgmt
from services.distribution import management_models as m
from services.distribution.console import session as sessions
from services.distribution.console.context import Ctx
from services.distribution.console.gateway import read, write
from services.distribution.console.headers import secured
from services.distribution.console.login import read_form
from services.distribution.console.render import page

PATH: Final = "/console/keys"
MAX_DAYS: Final = 3650


async def _page(ctx: Ctx, *, status: int = 200, created: m.CreatedApiKey | None = None, error: str = "",
                name: str = "") -> web.Response:
    listed = await read(ctx.request, mgmt.list_keys, m.ApiKeyList, params={"user": ctx.caller.name})
    keys = sorted(listed.keys, key=lambda k: (k.revoked is not None, -k.created.timestamp()))
    host = ctx.request.host
    login = f"docker login {host} -u {ctx.caller.name} --password-stdin"
    return page(ctx.request, "keys.html", status=status, title="API keys", **ctx.base(section="keys"), keys=keys,
                created=created, error=error, name=name, login_command=login)


async def keys(ctx: Ctx) -> web.StreamResponse:
    return await _page(ctx)


def _body(form: dict[str, str]) -> m.NewApiKey:
    days = form.get("expires_days", "").strip()
    fields: dict[str, Any] = {"name": form.get("name", "").strip()}
    if days:
        if not days.isdigit() or not 1 <= int(days) <= MAX_DAYS:
            raise InvalidRequestError(f"the lifetime is a whole number of days from 1 to {MAX_DAYS}, or empty")
        fields["expires_in_seconds"] = int(days) * 86400
    try:
        return m.NewApiKey(**fields)
    except ValidationError:
        raise InvalidRequestError("the name is at most 200 characters") from None


async def create(ctx: Ctx) -> web.StreamResponse:
    form = await read_form(ctx.request)
    sessions.check_csrf(ctx.session, form.get(sessions.CSRF_FIELD, ""))
    try:
        body = _body(form)
    except InvalidRequestError as error:
        return await _page(ctx, status=400, error=error.message, name=form.get("name", "")[:200])
    created = await write(ctx.request, mgmt.create_key, m.CreatedApiKey, body=body,
                          params={"user": ctx.caller.name})
    return await _page(ctx, status=201, created=created)


async def revoke(ctx: Ctx) -> web.StreamResponse:
    form = await read_form(ctx.request)
    sessions.check_csrf(ctx.session, form.get(sessions.CSRF_FIELD, ""))
    await write(ctx.request, mgmt.revoke_key, type(None),
                params={"user": ctx.caller.name, "prefix": ctx.request.match_info["prefix"]})
    return secured(web.Response(status=303, headers={"Location": PATH}))
