"""The pull-through cache's upstreams over the management API (registry admins):

- `GET /v1/registry/admin/proxy/remotes`: the remotes in force (from the settings until a list is PUT), with
  whether each has a password; passwords are never returned.
- `PUT /v1/registry/admin/proxy/remotes`: replace the list. Passwords are sealed with the master key
  (`signer.master_key`; refused without one); a remote whose password is left out keeps its stored one as long
  as its user name stays. URLs are checked as admin-set (trusted) ones: never link-local or cloud metadata.
"""

from __future__ import annotations

import time

from pydantic import Field, SecretStr, ValidationError

from services.core.auth.audit import AuditRecord, Outcome
from services.core.auth.errors import InvalidRequestError
from services.core.errors import UnsupportedError
from services.core.secrets import MasterKeyMissingError
from services.core.settings import WEEK_SECONDS, ProxyRemote
from services.distribution.cache.remotes import Remotes
from services.distribution.cache.service import PullThroughCache
from services.distribution.keys import PULLTHROUGH
from services.distribution.management_api import Call, Requirement, Route
from services.distribution.management_models import Name, Request, Response


class NewRemote(Request):
    name: Name = Field(description="The remote's path component: cache/<name>/<path> pulls <path> from it")
    url: str = Field(description="http(s)://host[:port] of the upstream registry")
    username: str | None = Field(None, max_length=256, description="Upstream user (anonymous when unset)")
    password: str | None = Field(None, max_length=4096,
                                 description="Upstream password or token; stored sealed, never returned")
    ttl: float = Field(float(WEEK_SECONDS), ge=0, description="Seconds a cached tag is trusted before a HEAD "
                       "revalidates it")
    insecure: bool = Field(False, description="Skip TLS verification of the upstream")
    ca_file: str | None = Field(None, max_length=4096, description="A CA bundle (path on the server) to trust")


class RemoteList(Request):
    remotes: list[NewRemote] = Field(max_length=256, description="The whole list; it replaces the one in force")


class RemoteView(Response):
    name: str
    url: str
    username: str | None = None
    password_set: bool = Field(description="Whether a password is stored (it is never returned)")
    ttl: float
    insecure: bool
    ca_file: str | None = None


class RemotesView(Response):
    remotes: list[RemoteView]
    default_remote: str = Field(description="Serves cache/<path> when <path>'s first component names no remote")
    source: str = Field(description="settings (the settings file's proxy.remotes) or api (the list PUT here)")


def _view(remotes: Remotes) -> RemotesView:
    return RemotesView(
        remotes=[RemoteView(name=r.name, url=r.url, username=r.username, password_set=bool(r.password), ttl=r.ttl,
                            insecure=r.insecure, ca_file=r.ca_file) for r in remotes.by_name.values()],
        default_remote=remotes.default, source=remotes.source,
    )


def _cache(call: Call) -> PullThroughCache:
    cache = call.request.app.get(PULLTHROUGH)
    if cache is None:
        raise UnsupportedError("the pull-through cache is off (proxy.enabled: false)")
    return cache


async def get_remotes(call: Call) -> RemotesView:
    return _view(await _cache(call).remotes.current())


async def put_remotes(call: Call, body: RemoteList) -> RemotesView:
    config = _cache(call).remotes
    problems: list[dict[str, str]] = []
    remotes: list[ProxyRemote] = []
    for i, entry in enumerate(body.remotes):
        try:
            remotes.append(ProxyRemote(
                name=entry.name, url=entry.url, username=entry.username,
                password=SecretStr(entry.password) if entry.password is not None else None, ttl=entry.ttl,
                insecure=entry.insecure, ca_file=entry.ca_file))
        except ValidationError as exc:
            problems += [{"field": f"remotes.{i}.{'.'.join(map(str, e['loc']))}", "message": e["msg"]}
                         for e in exc.errors()]
    names = [r.name for r in remotes]
    if len(names) != len(set(names)):
        problems.append({"field": "remotes", "message": "remote names must be unique"})
    if problems:
        raise InvalidRequestError("; ".join(f"field {p['field']!r}: {p['message']}" for p in problems[:5]),
                                  detail=problems[:20])
    stored = await config.sealed_passwords()
    keep = {r.name: stored[r.name][1] for r in remotes
            if r.password is None and r.name in stored and stored[r.name][0] == r.username}
    try:
        current = await config.replace(remotes, keep=keep, actor=call.who.name, now=time.time())
    except MasterKeyMissingError:
        raise UnsupportedError("upstream passwords are stored sealed with the master key (signer.master_key): "
                               "none is configured") from None
    await call.access.service.record_quietly(AuditRecord(
        actor=call.who.name, action="proxy.remotes.put", resource="proxy/remotes", outcome=Outcome.SUCCESS,
        source=call.who.source, detail={"remotes": ",".join(names)[:600]}))
    return _view(current)


def upstream_routes() -> list[Route]:
    admin = Requirement.REGISTRY_ADMIN
    return [
        Route("GET", "/admin/proxy/remotes", get_remotes, admin,
              "The pull-through cache's upstreams in force (passwords are never returned)", response=RemotesView,
              errors=(405,)),
        Route("PUT", "/admin/proxy/remotes", put_remotes, admin,
              "Replace the pull-through cache's upstreams (passwords sealed with the master key)",
              response=RemotesView, body=RemoteList, errors=(405,)),
    ]
