"""The console's pages for registry admins (GC history, replication status, storage usage) and for
namespace admins (a namespace's permissions and policy). Each section comes from its management API
handler; a section whose service is not there (405 UNSUPPORTED, e.g. no gc service to ask) or not
reachable says so instead of failing the page."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import yaml
from aiohttp import web

from services.core.auth.errors import NotFoundError
from services.core.errors import DeniedError, RegistryError, UnauthorizedError
from services.core.policy.document import PolicyDocument
from services.distribution import management as mgmt
from services.distribution import management_models as m
from services.distribution.console.context import Ctx
from services.distribution.console.gateway import namespace_name, read, require
from services.distribution.console.render import page
from services.distribution.management_api import Requirement
from services.distribution.management_gc import GcHistoryQuery, GcRunHistory, StorageUsage, run_history, storage_usage
from services.distribution.management_policy import get_policy
from services.distribution.management_replication import ReplicationState, replication_state

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Section(Generic[T]):
    """One section of a page: its data, or why it is not available."""

    value: T | None
    unavailable: str = ""


async def section(read_it: Awaitable[T]) -> Section[T]:
    try:
        return Section(await read_it)
    except (DeniedError, UnauthorizedError):
        raise  # access is decided for the whole page; never shown as "not available"
    except RegistryError as error:
        return Section(None, error.message)


async def admin(ctx: Ctx) -> web.StreamResponse:
    request = ctx.request
    await require(request, Requirement.REGISTRY_ADMIN)
    gc = await section(read(request, run_history, GcRunHistory, query=GcHistoryQuery(limit=20)))
    storage = await section(read(request, storage_usage, StorageUsage))
    replication = await section(read(request, replication_state, ReplicationState))
    return page(
        request,
        "admin.html",
        **ctx.base(title="Administration", section="admin", gc=gc, storage=storage, replication=replication),
    )


def _policy_text(document: PolicyDocument) -> str:
    data: Any = document.model_dump(mode="json", exclude_unset=True)
    return yaml.safe_dump(data, sort_keys=False) if data else ""


async def namespace(ctx: Ctx) -> web.StreamResponse:
    request = ctx.request
    name = namespace_name(request.match_info["namespace"])
    # The permissions route needs namespace admin: a reader of the namespace gets the 403 page.
    permissions = await read(request, mgmt.list_grants, m.Permissions, namespace=name)
    policy: Section[PolicyDocument]
    try:
        policy = Section(await read(request, get_policy, PolicyDocument, namespace=name))
    except NotFoundError:
        policy = Section(None, "")  # no policy of its own: it inherits the registry's default
    except RegistryError as error:
        policy = Section(None, error.message)
    return page(
        request,
        "namespace.html",
        **ctx.base(
            title=f"Namespace {name}",
            section="repositories",
            namespace=name,
            permissions=permissions,
            policy=_policy_text(policy.value) if policy.value is not None else None,
            policy_unavailable=policy.unavailable,
        ),
    )
