"""Records of identity and access: users, teams, API keys, grants, signing keys, and roles' actions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from services.core.auth.scopes import DELETE, PULL, PUSH


class Role(StrEnum):
    """reader: pull (and view scan results); writer: + push and tag changes; admin: + delete, policies,
    permissions of the namespace or repository it is granted on."""

    READER = "reader"
    WRITER = "writer"
    ADMIN = "admin"


ROLE_ACTIONS: dict[Role, frozenset[str]] = {
    Role.READER: frozenset({PULL}),
    Role.WRITER: frozenset({PULL, PUSH}),
    Role.ADMIN: frozenset({PULL, PUSH, DELETE}),
}

_USER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,190}")
_NAMESPACE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
RESERVED_USERS = frozenset({"hanzo", "anonymous"})
"""`hanzo` is the user name clients may send with an API key as password; `anonymous` names no one."""


def valid_user_name(name: str) -> bool:
    return bool(_USER_NAME.fullmatch(name)) and name not in RESERVED_USERS


def valid_team_name(name: str) -> bool:
    return bool(_USER_NAME.fullmatch(name))


def valid_email(email: str) -> bool:
    return bool(_EMAIL.fullmatch(email))


def valid_namespace(name: str) -> bool:
    """A namespace is the first path component of repository names (OCI path-component grammar)."""
    return len(name) <= 255 and bool(_NAMESPACE.fullmatch(name))


def namespace_of(repository: str) -> str:
    return repository.partition("/")[0]


@dataclass(frozen=True, slots=True)
class User:
    """A registry user. An external user (`external_issuer` set) was made by a login through that OpenID
    Connect issuer, is bound to the IdP's `sub` (`external_subject`), and has its admin flag and its
    IdP-sourced team memberships synced at every login; like every user it has no password."""

    name: str
    email: str | None = None
    admin: bool = False
    created: float = 0.0
    external_issuer: str | None = None
    external_subject: str | None = None
    signed_in: float | None = None
    """An external user's last sign-in through the IdP (recorded at most once per SIGN_IN_RECORD_SECONDS);
    None for local users, and for external users made before it was recorded (`created` stands in)."""

    @property
    def external(self) -> bool:
        return self.external_issuer is not None

    def last_sign_in(self) -> float:
        return self.signed_in if self.signed_in is not None else self.created


class MembershipSource(StrEnum):
    """Who made a team membership: an admin (through the API), or the identity provider's groups claim
    (synced at login: only these are ever removed by a login)."""

    ADMIN = "admin"
    IDP = "idp"


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    description: str = ""
    created: float = 0.0


class SubjectKind(StrEnum):
    USER = "user"
    TEAM = "team"


@dataclass(frozen=True, slots=True)
class Grant:
    """`role` on a namespace (repository None) or on one repository of it, held by a user or a team."""

    namespace: str
    repository: str | None
    subject_kind: SubjectKind
    subject: str
    role: Role
    created: float = 0.0
    created_by: str = ""

    @property
    def id(self) -> str:
        """E.g. `team:ml-engineers@ml` (a namespace grant) or `user:bob@ml/llama` (a repository grant)."""
        return f"{self.subject_kind.value}:{self.subject}@{self.repository or self.namespace}"

    def applies_to(self, repository: str) -> bool:
        if self.repository is not None:
            return self.repository == repository
        return namespace_of(repository) == self.namespace


class KeyKind(StrEnum):
    API = "api"
    REFRESH = "refresh"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: only the hash of the secret is kept. `namespaces`/`role` limit what it may do."""

    prefix: str
    user: str
    hash: str
    name: str = ""
    kind: KeyKind = KeyKind.API
    created: float = 0.0
    expires: float | None = None
    revoked: float | None = None
    namespaces: tuple[str, ...] | None = None
    role: Role | None = None
    last_used: float | None = None
    parent: str | None = None
    """For a refresh token: the prefix of the API key it was obtained with (it dies with that key)."""

    def usable(self, now: float) -> bool:
        return self.revoked is None and (self.expires is None or now < self.expires)


@dataclass(frozen=True, slots=True)
class Subject:
    """Who an authorization decision is about: the user (None: anonymous), the teams they belong to,
    whether they are a registry admin, and the limits of the API key they used (if any)."""

    user: str | None
    teams: frozenset[str] = frozenset()
    admin: bool = False
    key_namespaces: tuple[str, ...] | None = None
    key_role: Role | None = None
    grants: tuple[Grant, ...] = field(default=())


ANONYMOUS_SUBJECT = Subject(user=None)
