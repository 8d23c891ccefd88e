"""Request and response bodies (and query parameters) of the management API, as pydantic models.

Requests are validated strictly (no string for a number, no number for a boolean), unknown fields are
refused, and every string, list and integer is bounded. Responses are rendered from these models with
the fields they set (a grant names either its team or its user); the OpenAPI document is generated from them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

MAX_KEY_LIFETIME = 10 * 365 * 24 * 3600
MAX_PAGE = 1000

RoleName = Literal["reader", "writer", "admin"]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")]
NamespaceName = Annotated[str, StringConstraints(min_length=1, max_length=255)]
RepositoryRef = Annotated[str, StringConstraints(min_length=1, max_length=255)]


def timestamp(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def maybe_timestamp(value: float | None) -> datetime | None:
    return None if value is None else timestamp(value)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    """Query parameters (parsed from strings; parameters not listed are ignored, as HTTP caches add some)."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _no_control_characters(cls, data: Any) -> Any:
        # Cursors and filters reach the metadata store, which refuses U+0000 (SQLite cuts strings there):
        # a 400 naming the parameter, never a 500.
        if isinstance(data, dict):
            for name, value in data.items():
                if isinstance(value, str) and any(ord(ch) < 32 for ch in value):
                    raise ValueError(f"query parameter {name!r} contains a control character")
        return data


# requests


class NewUser(Request):
    name: Name
    email: str | None = Field(None, max_length=256, json_schema_extra={"format": "email"})
    admin: bool = False


class NewApiKey(Request):
    name: str = Field("", max_length=200)
    expires_in_seconds: int | None = Field(
        None, ge=1, le=MAX_KEY_LIFETIME, description="Lifetime of the key; at most 10 years; omit for none"
    )
    namespaces: list[NamespaceName] | None = Field(
        None, max_length=100, description="Limit the key to these namespaces"
    )
    role: RoleName | None = Field(None, description="Limit the key to this role")


class NewTeam(Request):
    name: Name
    description: str = Field("", max_length=1000)


class NewGrant(Request):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["team"]}, {"required": ["user"]}]}
    )

    team: str | None = Field(None, min_length=1, max_length=64)
    user: str | None = Field(None, min_length=1, max_length=64)
    role: RoleName
    repository: RepositoryRef | None = Field(
        None, description="A repository of the namespace (full name or relative); omit for the whole namespace"
    )

    @model_validator(mode="after")
    def _one_subject(self) -> NewGrant:
        if (self.team is None) == (self.user is None):
            raise ValueError("give exactly one of team and user")
        return self


class Visibility(Request):
    public: bool
    repository: RepositoryRef | None = None


# queries


class Page(Query):
    limit: int = Field(100, ge=1, le=MAX_PAGE)
    after: str | None = Field(None, max_length=300, description="Return items after this one")


class AuditQuery(Page):
    actor: str | None = Field(None, max_length=200)
    action: str | None = Field(None, max_length=200)


class PolicyQuery(Query):
    effective: bool = Field(
        False, description="The policy in force (registry default <- namespace <- repository, field by field)"
    )


# responses


class User(Response):
    name: str
    email: str | None
    admin: bool
    created: datetime
    teams: list[str] = Field(default_factory=list)
    external_issuer: str | None = Field(None, description="The OIDC issuer of an external user (null: local)")
    signed_in: datetime | None = Field(
        None, description="An external user's last sign-in through the IdP, to the hour: its API keys pause "
        "auth.oidc.key_signin_max_age_seconds after it")


class UserList(Response):
    users: list[User]


class ApiKey(Response):
    prefix: str = Field(description="Identifies the key (hzr_<prefix>_...); not secret")
    user: str
    name: str
    created: datetime
    expires: datetime | None
    revoked: datetime | None
    last_used: datetime | None
    namespaces: list[str] | None
    role: RoleName | None


class CreatedApiKey(ApiKey):
    key: str = Field(description="The key (hzr_<prefix>_<secret>); shown only in this response")


class ApiKeyList(Response):
    keys: list[ApiKey]


class Team(Response):
    name: str
    description: str
    created: datetime
    members: list[str] = Field(default_factory=list)


class TeamList(Response):
    teams: list[Team]


class Grant(Response):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["team"]}, {"required": ["user"]}]}
    )

    id: str = Field(description="<user|team>:<name>@<namespace or repository>")
    namespace: str
    repository: str | None
    team: str = Field("", description="Set for a team's grant")
    user: str = Field("", description="Set for a user's grant")
    role: RoleName
    created: datetime
    created_by: str


class Permissions(Response):
    namespace: str
    grants: list[Grant]
    public: bool
    public_repositories: list[str]


class VisibilityState(Response):
    namespace: str
    repository: str | None
    public: bool


class AuditEntry(Response):
    id: str
    time: datetime
    actor: str
    action: str
    resource: str
    outcome: Literal["success", "denied", "failure"]
    source_address: str
    detail: dict[str, str]


class AuditPage(Response):
    entries: list[AuditEntry]
    next: str | None = Field(description="Pass as ?after= for the next page")


class OpenApiDocument(BaseModel):
    """This document (OpenAPI 3.1)."""

    model_config = ConfigDict(extra="allow")

    openapi: str


# the token endpoint (served by services/distribution/auth_token.py; documented here)


class TokenQuery(Query):
    service: str | None = None
    scope: list[str] | None = Field(None, json_schema_extra={"explode": True})
    account: str | None = None
    offline_token: Literal["true", "false"] | None = None
    client_id: str | None = None


class TokenForm(Request):
    model_config = ConfigDict(extra="allow")

    grant_type: Literal["password", "refresh_token"]
    username: str | None = None
    password: str | None = None
    refresh_token: str | None = None
    service: str | None = None
    client_id: str | None = None
    access_type: Literal["online", "offline"] | None = None
    scope: str | None = None


class Token(Response):
    token: str
    access_token: str
    expires_in: int = Field(ge=60)
    issued_at: datetime
    scope: str = ""
    refresh_token: str = ""
