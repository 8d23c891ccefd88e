"""The console's routes under /console/ (mounted by the distribution app when `auth.mode` is token)."""

from __future__ import annotations

from aiohttp import web

from services.core.auth.errors import NotFoundError
from services.distribution.console import admin, keys, login, pages
from services.distribution.console.context import Ctx, with_session
from services.distribution.console.headers import secured
from services.distribution.console.render import CONSOLE, STATIC, environment, error_page, load_static

PREFIX = "/console"
_ITEM = PREFIX + "/repositories/{repository:.+}/-/{page}/{reference}"


async def home(request: web.Request) -> web.StreamResponse:
    return secured(web.Response(status=303, headers={"Location": login.HOME}))


async def static(request: web.Request) -> web.StreamResponse:
    asset = request.app[STATIC].get(request.match_info["name"])
    if asset is None:
        return error_page(request, NotFoundError("no such file"))
    return secured(web.Response(body=asset.body, content_type=asset.content_type), cacheable=True)


_ITEM_PAGES = {
    "manifest": pages.manifest,
    "vulnerabilities": pages.vulnerabilities,
    "signatures": pages.signatures_page,
    "model": pages.model,
}


async def _item(ctx: Ctx) -> web.StreamResponse:
    handler = _ITEM_PAGES.get(ctx.request.match_info["page"])
    if handler is None:
        raise NotFoundError("no such page")
    return await handler(ctx)


async def _not_found(ctx: Ctx) -> web.StreamResponse:
    raise NotFoundError(f"no console page {ctx.request.path[:200]}")


def add_console_routes(app: web.Application) -> None:
    static_files = load_static()
    app[STATIC] = static_files
    app[CONSOLE] = environment(static_files)
    router = app.router
    router.add_get(PREFIX, home)
    router.add_get(PREFIX + "/", home)
    router.add_get(PREFIX + "/static/{name}", static)
    router.add_get(PREFIX + "/login", login.login_form)
    router.add_post(PREFIX + "/login", login.login)
    router.add_get(login.SSO, login.sso_start)
    router.add_get(login.SSO + "/done", login.sso_done)
    router.add_post(PREFIX + "/logout", login.logout)
    router.add_get(PREFIX + "/repositories", with_session(pages.repositories))
    router.add_get(_ITEM, with_session(_item))
    router.add_get(PREFIX + "/repositories/{repository:.+}", with_session(pages.tags))
    router.add_get(PREFIX + "/namespaces/{namespace}", with_session(admin.namespace))
    router.add_get(PREFIX + "/admin", with_session(admin.admin))
    router.add_get(keys.PATH, with_session(keys.keys))
    router.add_post(keys.PATH, with_session(keys.create))
    router.add_post(keys.PATH + "/{prefix}/revoke", with_session(keys.revoke))
    router.add_route("*", PREFIX + "/{tail:.*}", with_session(_not_found))
