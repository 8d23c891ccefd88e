"""Access control seam of the OCI API: who is calling, and may they do this to that repository."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

PULL, PUSH, DELETE = "pull", "push", "delete"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    anonymous: bool = False
    may_force: bool = False
    teams: tuple[str, ...] = field(default=())


ANONYMOUS = Principal("anonymous", anonymous=True)


class AccessControl(Protocol):
    async def authenticate(self, request: web.Request) -> Principal:
        """Who sent the request (ANONYMOUS when it carries no credentials). UnauthorizedError on
        bad credentials."""
        ...

    async def authorize(
        self, request: web.Request, principal: Principal, repository: str, actions: Collection[str]
    ) -> None:
        """Raise UnauthorizedError (with a challenge) or DeniedError unless every action is allowed."""
        ...

    async def can_read(self, principal: Principal, repository: str) -> bool:
        """For filtering listings; never raises."""
        ...

    async def readable(self, principal: Principal, repositories: Sequence[str]) -> list[str]:
        """The subset of `repositories` the caller may pull (a catalog page), in order."""
        ...

    async def can_mount_from(self, principal: Principal, repository: str) -> bool:
        """Whether a cross-repository mount may read `repository` with the credential as presented
        (for a token: pull on the source is in its `access` claim)."""
        ...

    async def authorize_catalog(self, request: web.Request, principal: Principal) -> None: ...


class OpenAccess:
    """`auth.mode: none`: every caller may do everything. For local experiments only."""

    async def authenticate(self, request: web.Request) -> Principal:
        return Principal("anonymous", anonymous=True, may_force=True)

    async def authorize(
        self, request: web.Request, principal: Principal, repository: str, actions: Collection[str]
    ) -> None:
        return None

    async def can_read(self, principal: Principal, repository: str) -> bool:
        return True

    async def readable(self, principal: Principal, repositories: Sequence[str]) -> list[str]:
        return list(repositories)

    async def can_mount_from(self, principal: Principal, repository: str) -> bool:
        return True

    async def authorize_catalog(self, request: web.Request, principal: Principal) -> None:
        return None
