"""AuthService: identity and access over AuthStore and the outbox, HTTP-free.

Authenticates API keys and refresh tokens, evaluates grants, issues and verifies tokens with rotating
signing keys, creates the bootstrap admin, and performs (audited) management changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from services.core.auth import apikeys
from services.core.auth.audit import AuditRecord, Outcome, audit_writes
from services.core.auth.errors import AlreadyExistsError, AuthenticationError, InvalidRequestError, NotFoundError
from services.core.auth.model import (
    ANONYMOUS_SUBJECT,
    ApiKey,
    Grant,
    KeyKind,
    MembershipSource,
    Role,
    Subject,
    SubjectKind,
    Team,
    User,
    namespace_of,
    valid_email,
    valid_namespace,
    valid_team_name,
    valid_user_name,
)
from services.core.auth.oidc import IdpIdentity
from services.core.auth.policy import allowed_actions, grant_scopes, manages_namespace
from services.core.auth.scopes import PULL, ResourceScope
from services.core.auth.store import AuthStore
from services.core.auth.tokens import (
    KEY_CLAIM,
    IssuedToken,
    SigningKey,
    VerifiedToken,
    new_signing_key,
    token_header,
    verify_token,
)
from services.core.auth.tokens import (
    issue_token as sign_token,
)
from services.core.errors import ConflictError
from services.core.events.outbox import Operation, Outbox
from services.core.settings import AuthSettings, TopicSettings
from services.core.storage.documents import DuplicateKeyError
from services.core.telemetry import iso_time

log = logging.getLogger(__name__)

BOOTSTRAP_ADMIN = "admin"
BOOTSTRAP_KEY_FILE = "bootstrap-admin.key"
_RELOAD_INTERVAL = 1.0
_TOUCH_INTERVAL = 60.0
SIGN_IN_RECORD_SECONDS = 3600.0
"""An external user's sign-in through the IdP is written at most this often (every new IdP token signs in), or
a quarter of `auth.oidc.key_signin_max_age_seconds` when that is shorter."""


class KeyRing:
    """The signing keys: the newest active one signs; every unretired one verifies. A key signs for
    `rotation_seconds`, then a new one is made; old keys verify until their last token (and the upload
    grace) has passed, then they are removed. Keys made by other replicas are found by reloading."""

    def __init__(
        self,
        store: AuthStore,
        *,
        rotation_seconds: float,
        verify_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._rotation = rotation_seconds
        self._verify_seconds = verify_seconds
        self._clock = clock
        self._current: SigningKey | None = None
        self._public: dict[str, ec.EllipticCurvePublicKey] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    def _remember(self, keys: Sequence[SigningKey]) -> None:
        self._public = {k.kid: k.public_key() for k in keys}
        self._loaded_at = self._clock()

    async def signing_key(self) -> SigningKey:
        now = self._clock()
        if self._current is not None and now < self._current.active_until:
            return self._current
        async with self._lock:
            if self._current is not None and now < self._current.active_until:
                return self._current
            keys = await self._store.signing_keys()
            live = [k for k in keys if k.retire_after > now]
            for key in keys:
                if key.retire_after <= now:
                    await self._store.remove_signing_key(key.kid)
            active = [k for k in live if k.active_until > now]
            if active:
                current = max(active, key=lambda k: k.created)
            else:
                current = new_signing_key(
                    now=now, active_seconds=self._rotation, max_token_seconds=self._verify_seconds
                )
                await self._store.add_signing_key(current)
                live.append(current)
                log.info("new token signing key %s (signs until %s)", current.kid, iso_time(current.active_until))
            self._current = current
            self._remember(live)
            return current

    async def public_keys(self, kid: str | None) -> Mapping[str, ec.EllipticCurvePublicKey]:
        """The verifying keys; reloads (at most once a second) when `kid` is unknown."""
        if kid is not None and kid not in self._public and self._clock() - self._loaded_at >= _RELOAD_INTERVAL:
            async with self._lock:
                now = self._clock()
                self._remember([k for k in await self._store.signing_keys() if k.retire_after > now])
        return self._public


@dataclass(frozen=True, slots=True)
class Authenticated:
    user: User
    key: ApiKey


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    secret: str


class AuthService:
    def __init__(
        self,
        *,
        store: AuthStore,
        outbox: Outbox,
        settings: AuthSettings,
        topics: TopicSettings,
        upload_grace_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.settings = settings
        self.topics = topics
        self.upload_grace_seconds = upload_grace_seconds
        self._clock = clock
        self.generation = 0
        """Counts identity changes made through this instance (caches of subjects compare it)."""
        self.keys = KeyRing(
            store,
            rotation_seconds=settings.key_rotation_seconds,
            verify_seconds=settings.token_ttl_seconds + upload_grace_seconds,
            clock=clock,
        )

    async def setup(self) -> None:
        await self.store.setup()

    # audit

    async def record(self, entry: AuditRecord, ops: Sequence[Operation] = ()) -> None:
        """Commit `ops` (if any) together with the audit entry and its event. ConflictError when a
        conditional operation lost (then nothing is recorded)."""
        insert, event = audit_writes(entry.with_id(), self.topics)
        try:
            await self.outbox.commit([*ops, insert], [event])
        finally:
            if ops:
                self.generation += 1

    async def record_quietly(self, entry: AuditRecord) -> None:
        """Record an entry whose loss must not fail the request it describes."""
        try:
            await self.record(entry)
        except Exception as exc:
            log.warning("could not record audit entry %s %s: %s", entry.action, entry.resource, exc)

    # bootstrap

    async def bootstrap(self, data_dir: Path) -> Path | None:
        """On an empty store: create the user `admin` with an API key, written to
        <data_dir>/bootstrap-admin.key (mode 0600) unless the key comes from the settings.
        Returns the key file's path when one was written. Idempotent across replicas."""
        if await self.store.user_count() > 0:
            return None
        configured = self.settings.bootstrap_admin_key
        if configured is not None:
            parsed = apikeys.parse_key(configured.get_secret_value())
            if parsed is None:  # the settings validator makes this unreachable
                raise ValueError("auth.bootstrap_admin_key is not a hzr_<prefix>_<secret> key")
            path = None
        else:
            parsed = apikeys.generate_key()
            path = data_dir / BOOTSTRAP_KEY_FILE
            # The file first: a crash before the user is stored only means a new key next start.
            _write_secret_file(path, parsed.key + "\n")
        now = self._clock()
        user = User(BOOTSTRAP_ADMIN, admin=True, created=now)
        key = ApiKey(prefix=parsed.prefix, user=user.name, hash=apikeys.hash_key(parsed.key), name="bootstrap",
                     created=now)
        try:
            await self.record(
                AuditRecord("system", "user.create", f"user:{user.name}", Outcome.SUCCESS, "", {"bootstrap": "true"}),
                [*self.store.create_user_ops(user), self.store.create_key_op(key)],
            )
        except (ConflictError, DuplicateKeyError):
            log.info("another replica created the bootstrap admin")
            return None
        if path is not None:
            log.warning("created the first admin user 'admin'; its API key is in %s (mode 0600)", path)
        else:
            log.warning("created the first admin user 'admin' with the key from auth.bootstrap_admin_key")
        return path

    # authentication

    async def authenticate_key(
        self, secret: str, *, username: str | None, kind: KeyKind = KeyKind.API
    ) -> Authenticated:
        """The user and key behind `secret`. `username`, when given, must be the key's owner (by name
        or email) or the literal `hanzo`. Raises AuthenticationError (one message for every cause)."""
        denied = AuthenticationError("invalid credentials")
        parsed = apikeys.parse_key(secret)
        if parsed is None:
            raise AuthenticationError(denied.message, reason="not an API key")
        key = await self.store.key(parsed.prefix)
        # Hash and compare even for an unknown prefix, so timing does not tell which prefixes exist.
        stored = key.hash if key is not None else "0" * 64
        matches = apikeys.verify_key(parsed.key, stored)
        if key is None or not matches:
            raise AuthenticationError(denied.message, reason=f"unknown key {parsed.prefix}")
        now = self._clock()
        if key.kind is not kind:
            raise AuthenticationError(denied.message, reason=f"key {key.prefix} is a {key.kind.value} token")
        if not key.usable(now):
            raise AuthenticationError(denied.message, reason=f"key {key.prefix} is revoked or expired")
        if key.parent is not None:
            parent = await self.store.key(key.parent)
            if parent is None or not parent.usable(now):
                raise AuthenticationError(denied.message, reason=f"key {key.parent} is revoked or expired")
        user = await self.store.user(key.user)
        if user is None or key.created < user.created:
            raise AuthenticationError(denied.message, reason=f"key {key.prefix} belongs to a deleted user")
        if username and username != "hanzo" and username != user.name and (
            not user.email or username.lower() != user.email.lower()
        ):
            raise AuthenticationError(denied.message, reason=f"key {key.prefix} does not belong to the named user")
        if self._lapsed(user, now):
            # The caller holds the key: the cause is no secret, and says what to do.
            days = self.settings.oidc.key_signin_max_age_seconds / 86400
            raise AuthenticationError(
                f"user {user.name} has not signed in through the identity provider for {days:g} days, so its API "
                "keys are paused; sign in there again (an IdP token here, or the console's single sign-on) and "
                "they work again",
                reason=f"key {key.prefix}: its external user has not signed in for {days:g} days",
            )
        if key.last_used is None or now - key.last_used > _TOUCH_INTERVAL:
            with contextlib.suppress(Exception):
                await self.store.touch_key(key.prefix, now)
        return Authenticated(user, key)

    async def subject(self, user_name: str | None, *, key_prefix: str | None = None) -> Subject:
        """Who `user_name` is for authorization: teams, admin flag, and the limits of the key used."""
        if not user_name:
            return ANONYMOUS_SUBJECT
        user = await self.store.user(user_name)
        if user is None:
            return ANONYMOUS_SUBJECT
        namespaces: tuple[str, ...] | None = None
        role: Role | None = None
        if key_prefix:
            key = await self.store.key(key_prefix)
            if key is None or not await self._key_valid_for(key, user):
                return ANONYMOUS_SUBJECT
            namespaces, role = key.namespaces, key.role
        teams = frozenset(await self.store.teams_of(user.name))
        return Subject(user=user.name, teams=teams, admin=user.admin, key_namespaces=namespaces, key_role=role)

    async def _key_valid_for(self, key: ApiKey, user: User) -> bool:
        """`key` is live and belongs to this `user`: not to an earlier user of the same name (a key made
        while its user was being deleted survives the deletion, and must not pass to a later namesake),
        and, for a refresh token, its API key is live too."""
        now = self._clock()
        if key.user != user.name or not key.usable(now) or key.created < user.created or self._lapsed(user, now):
            return False
        if key.parent is not None:
            parent = await self.store.key(key.parent)
            return parent is not None and parent.user == user.name and parent.usable(now)
        return True

    def _lapsed(self, user: User, now: float) -> bool:
        """An external user's keys pause once it has not signed in through the IdP for
        `auth.oidc.key_signin_max_age_seconds` (whether or not an issuer is configured now: one removed or
        replaced signs no one in any more)."""
        max_age = self.settings.oidc.key_signin_max_age_seconds
        return user.external and max_age > 0 and now - user.last_sign_in() > max_age

    async def readable(self, subject: Subject, repositories: Sequence[str]) -> list[str]:
        """The repositories of `repositories` that `subject` may pull: grants and public marks are read
        once per namespace, not per repository (a catalog page)."""
        by_namespace: dict[str, tuple[list[Grant], list[str | None]]] = {}
        readable: list[str] = []
        for repository in repositories:
            namespace = namespace_of(repository)
            if namespace not in by_namespace:
                grants = await self.store.grants_for(namespace) if subject.user is not None else []
                by_namespace[namespace] = (grants, await self.store.public_marks(namespace))
            grants, marks = by_namespace[namespace]
            public = None in marks or repository in marks
            if PULL in allowed_actions(subject, repository, grants=grants, public=public):
                readable.append(repository)
        return readable

    async def allowed(self, subject: Subject, repository: str) -> frozenset[str]:
        namespace = namespace_of(repository)
        public = await self.store.is_public(repository, namespace)
        if subject.user is None:
            return allowed_actions(subject, repository, grants=(), public=public)
        grants = await self.store.grants_for(namespace)
        return allowed_actions(subject, repository, grants=grants, public=public)

    async def manages(self, subject: Subject, namespace: str) -> bool:
        if subject.user is None:
            return False
        return manages_namespace(subject, namespace, grants=await self.store.grants_for(namespace))

    # tokens

    async def issue_token(
        self, subject: Subject, requested: Sequence[ResourceScope], *, key_prefix: str | None
    ) -> tuple[IssuedToken, list[ResourceScope]]:
        held: dict[str, frozenset[str]] = {}
        for scope in requested:
            if scope.type == "repository" and scope.name not in held:
                held[scope.name] = await self.allowed(subject, scope.name)
        granted = grant_scopes(requested, lambda name: held.get(name, frozenset()))
        key = await self.keys.signing_key()
        extra = {KEY_CLAIM: key_prefix} if key_prefix else None
        token = sign_token(
            key,
            issuer=self.settings.issuer,
            audience=self.settings.service,
            subject=subject.user or "",
            access=granted,
            ttl_seconds=self.settings.token_ttl_seconds,
            now=self._clock(),
            extra=extra,
        )
        return token, granted

    async def verify_token(self, token: str, *, allow_expired: bool = False) -> VerifiedToken:
        kid = token_header(token).get("kid")
        keys = await self.keys.public_keys(kid if isinstance(kid, str) else None)
        return verify_token(
            token,
            public_keys=keys,
            issuer=self.settings.issuer,
            audience=self.settings.service,
            now=self._clock(),
            allow_expired=allow_expired,
        )

    # browser sessions and the login state of the OIDC browser flow: registry-signed, their own audiences

    def _purpose_audience(self, purpose: str) -> str:
        # Never the service itself: a session or login-state token is no registry access token, nor
        # the other way round (verify_token checks `aud`).
        return f"{self.settings.service}#{purpose}"

    async def sign_purpose_token(self, purpose: str, *, subject: str, ttl_seconds: int,
                                 claims: Mapping[str, str]) -> IssuedToken:
        """A registry-signed token for `purpose` ("session", "oidc-login") carrying `claims`."""
        key = await self.keys.signing_key()
        return sign_token(
            key,
            issuer=self.settings.issuer,
            audience=self._purpose_audience(purpose),
            subject=subject,
            access=[],
            ttl_seconds=ttl_seconds,
            now=self._clock(),
            extra=claims,
        )

    async def verify_purpose_token(self, purpose: str, token: str) -> VerifiedToken:
        """Raises TokenInvalidError (also for a token of another purpose, or a registry access token)."""
        kid = token_header(token).get("kid")
        keys = await self.keys.public_keys(kid if isinstance(kid, str) else None)
        return verify_token(token, public_keys=keys, issuer=self.settings.issuer,
                            audience=self._purpose_audience(purpose), now=self._clock())

    # external users (OIDC)

    async def sync_external_user(self, identity: IdpIdentity, *, source: str) -> User:
        """The external user of `identity`, made on its first login, with its admin flag and its IdP team
        memberships brought in line with the token's groups (teams made on first sight; memberships an
        admin made are never removed). Every change is audited through the outbox. Raises
        AuthenticationError when the name belongs to a local user or another identity."""
        name = identity.user_name
        user = await self.store.user(name)
        if user is None:
            now = self._clock()
            user = User(name, admin=identity.admin, created=now, external_issuer=identity.issuer,
                        external_subject=identity.subject, signed_in=now)
            detail = {"external_issuer": identity.issuer[:200], "admin": str(identity.admin).lower(), "via": "oidc"}
            with contextlib.suppress(ConflictError, DuplicateKeyError):  # a concurrent first login made it
                await self.record(AuditRecord(name, "user.create", f"user:{name}", Outcome.SUCCESS, source, detail),
                                  self.store.create_user_ops(user))
            user = await self.require_user(name)
        if user.external_issuer != identity.issuer or user.external_subject != identity.subject:
            owner = "a local user" if not user.external else "another identity"
            raise AuthenticationError(f"the user name {name!r} belongs to {owner}",
                                      reason=f"external login as {name} refused: the name belongs to {owner}")
        if user.admin != identity.admin:
            with contextlib.suppress(ConflictError):
                await self.record(
                    AuditRecord(name, "user.admin", f"user:{name}", Outcome.SUCCESS, source,
                                {"admin": str(identity.admin).lower(), "via": "oidc"}),
                    [self.store.set_admin_op(user, admin=identity.admin)],
                )
            user = await self.require_user(name)
        await self._sync_teams(user, identity, source=source)
        now = self._clock()
        max_age = self.settings.oidc.key_signin_max_age_seconds
        every = min(SIGN_IN_RECORD_SECONDS, max_age / 4) if max_age > 0 else SIGN_IN_RECORD_SECONDS
        if user.signed_in is None or now - user.signed_in >= every:
            try:
                await self.store.record_sign_in(user, now)
            except Exception as exc:  # the login stands; its keys may pause early if this keeps failing
                log.warning("could not record the sign-in of %s: %s", name, type(exc).__name__)
            else:
                self.generation += 1  # cached subjects of its keys may have been refused as lapsed
        return user

    async def _sync_teams(self, user: User, identity: IdpIdentity, *, source: str) -> None:
        current = await self.store.memberships_of(user.name)
        wanted = set(identity.teams)
        for team in sorted(wanted - current.keys()):
            now = self._clock()
            ops: list[Operation] = []
            if await self.store.team(team) is None:
                description = "from the identity provider's group of this name"
                ops.append(self.store.create_team_if_absent_op(Team(team, description, now)))
            ops.append(self.store.add_member_op(team, user.name, source=MembershipSource.IDP))
            await self.record(
                AuditRecord(user.name, "team.member.add", f"team:{team}", Outcome.SUCCESS, source,
                            {"user": user.name, "via": "oidc", "team_created": str(len(ops) > 1).lower()}),
                ops,
            )
        for team, made_by in sorted(current.items()):
            if team in wanted or made_by is not MembershipSource.IDP:
                continue
            with contextlib.suppress(ConflictError):  # an admin made it theirs meanwhile: it stays
                await self.record(
                    AuditRecord(user.name, "team.member.remove", f"team:{team}", Outcome.SUCCESS, source,
                                {"user": user.name, "via": "oidc"}),
                    [self.store.remove_idp_member_op(team, user.name)],
                )

    async def create_refresh_token(self, auth: Authenticated) -> str:
        """An offline token (OAuth2 refresh token) with the limits of the key it was obtained with."""
        parsed = apikeys.generate_key()
        now = self._clock()
        parent = auth.key.prefix if auth.key.kind is KeyKind.API else auth.key.parent
        record = ApiKey(
            prefix=parsed.prefix,
            user=auth.user.name,
            hash=apikeys.hash_key(parsed.key),
            name="refresh token",
            kind=KeyKind.REFRESH,
            created=now,
            expires=now + self.settings.refresh_token_ttl_seconds,
            namespaces=auth.key.namespaces,
            role=auth.key.role,
            parent=parent,
        )
        await self.store.insert_key(record)
        # Expired refresh tokens of this user go now, so logins do not pile up records.
        for stale in await self.store.keys_of(auth.user.name, kind=KeyKind.REFRESH):
            if not stale.usable(now):
                await self.store.delete_key(stale.prefix)
        return parsed.key

    # management (callers have checked that the actor may do this)

    async def create_user(self, name: str, *, email: str | None, admin: bool, actor: str, source: str) -> User:
        if not valid_user_name(name):
            raise InvalidRequestError(f"user name {name[:80]!r} is invalid: use [a-z0-9._-], at most 64 characters")
        if email is not None and not valid_email(email):
            raise InvalidRequestError("email is invalid")
        if await self.store.user(name) is not None:
            raise AlreadyExistsError(f"user {name} already exists")
        if email and await self.store.user_by_email(email) is not None:
            raise AlreadyExistsError("a user with this email already exists")
        user = User(name, email=email or None, admin=admin, created=self._clock())
        try:
            await self.record(
                AuditRecord(actor, "user.create", f"user:{name}", Outcome.SUCCESS, source,
                            {"admin": str(admin).lower()}),
                self.store.create_user_ops(user),
            )
        except ConflictError:
            raise AlreadyExistsError(f"user {name} or its email already exists") from None
        return user

    async def require_user(self, name: str) -> User:
        user = await self.store.user(name)
        if user is None:
            raise NotFoundError(f"user {name[:80]!r} does not exist")
        return user

    async def delete_user(self, name: str, *, actor: str, source: str) -> None:
        user = await self.require_user(name)
        ops = await self.store.delete_user_ops(user)
        await self.record(AuditRecord(actor, "user.delete", f"user:{name}", Outcome.SUCCESS, source), ops)

    async def create_team(self, name: str, *, description: str, actor: str, source: str) -> Team:
        if not valid_team_name(name):
            raise InvalidRequestError(f"team name {name[:80]!r} is invalid: use [a-z0-9._-], at most 64 characters")
        if await self.store.team(name) is not None:
            raise AlreadyExistsError(f"team {name} already exists")
        team = Team(name, description, self._clock())
        try:
            await self.record(
                AuditRecord(actor, "team.create", f"team:{name}", Outcome.SUCCESS, source),
                [self.store.create_team_op(team)],
            )
        except ConflictError:
            raise AlreadyExistsError(f"team {name} already exists") from None
        return team

    async def require_team(self, name: str) -> Team:
        team = await self.store.team(name)
        if team is None:
            raise NotFoundError(f"team {name[:80]!r} does not exist")
        return team

    async def delete_team(self, name: str, *, actor: str, source: str) -> None:
        await self.require_team(name)
        ops = await self.store.delete_team_ops(name)
        await self.record(AuditRecord(actor, "team.delete", f"team:{name}", Outcome.SUCCESS, source), ops)

    async def add_member(self, team: str, user: str, *, actor: str, source: str) -> None:
        await self.require_team(team)
        await self.require_user(user)
        await self.record(
            AuditRecord(actor, "team.member.add", f"team:{team}", Outcome.SUCCESS, source, {"user": user}),
            [self.store.add_member_op(team, user)],
        )

    async def remove_member(self, team: str, user: str, *, actor: str, source: str) -> None:
        await self.require_team(team)
        if not await self.store.is_member(team, user):
            raise NotFoundError(f"{user[:80]!r} is not a member of team {team}")
        await self.record(
            AuditRecord(actor, "team.member.remove", f"team:{team}", Outcome.SUCCESS, source, {"user": user}),
            [self.store.remove_member_op(team, user)],
        )

    async def create_key(
        self,
        user: str,
        *,
        name: str,
        expires_in: float | None,
        namespaces: Sequence[str] | None,
        role: Role | None,
        actor: str,
        source: str,
    ) -> CreatedKey:
        owner = await self.require_user(user)
        if expires_in is not None and expires_in <= 0:
            raise InvalidRequestError("expires_in_seconds must be positive")
        for ns in namespaces or ():
            if not valid_namespace(ns):
                raise InvalidRequestError(f"namespace {ns[:80]!r} is invalid")
        parsed = apikeys.generate_key()
        # Never before its user: a key older than its user is an orphan of a deleted namesake (see
        # _key_valid_for), and replicas' clocks may disagree by a little.
        now = max(self._clock(), owner.created)
        key = ApiKey(
            prefix=parsed.prefix,
            user=user,
            hash=apikeys.hash_key(parsed.key),
            name=name,
            created=now,
            expires=now + expires_in if expires_in is not None else None,
            namespaces=tuple(namespaces) if namespaces is not None else None,
            role=role,
        )
        detail = {"prefix": parsed.prefix, "user": user, "name": name[:100]}
        await self.record(
            AuditRecord(actor, "apikey.create", f"apikey:{parsed.prefix}", Outcome.SUCCESS, source, detail),
            [self.store.create_key_op(key)],
        )
        return CreatedKey(key, parsed.key)

    async def revoke_key(self, user: str, prefix: str, *, actor: str, source: str) -> ApiKey:
        key = await self.store.key(prefix)
        if key is None or key.user != user or key.kind is not KeyKind.API:
            raise NotFoundError(f"user {user[:80]!r} has no API key {prefix[:40]!r}")
        if key.revoked is None:
            now = self._clock()
            # A concurrent revocation (ConflictError) is the outcome the caller asked for.
            with contextlib.suppress(ConflictError):
                await self.record(
                    AuditRecord(actor, "apikey.revoke", f"apikey:{prefix}", Outcome.SUCCESS, source, {"user": user}),
                    [self.store.revoke_key_op(prefix, now=now)],
                )
        revoked = await self.store.key(prefix)
        assert revoked is not None
        return revoked

    async def put_grant(
        self,
        namespace: str,
        *,
        repository: str | None,
        subject_kind: SubjectKind,
        subject: str,
        role: Role,
        actor: str,
        source: str,
    ) -> Grant:
        if subject_kind is SubjectKind.USER:
            await self.require_user(subject)
        else:
            await self.require_team(subject)
        grant = Grant(namespace, repository, subject_kind, subject, role, self._clock(), actor)
        detail = {"subject": f"{subject_kind.value}:{subject}", "role": role.value}
        await self.record(
            AuditRecord(actor, "permission.grant", _target(namespace, repository), Outcome.SUCCESS, source, detail),
            [self.store.put_grant_op(grant)],
        )
        return grant

    async def revoke_grant(self, namespace: str, grant_id: str, *, actor: str, source: str) -> None:
        grant = await self.store.grant(grant_id)
        if grant is None or grant.namespace != namespace:
            raise NotFoundError(f"namespace {namespace} has no grant {grant_id[:200]!r}")
        detail = {"subject": f"{grant.subject_kind.value}:{grant.subject}", "role": grant.role.value}
        await self.record(
            AuditRecord(actor, "permission.revoke", _target(namespace, grant.repository), Outcome.SUCCESS, source,
                        detail),
            [self.store.delete_grant_op(grant_id)],
        )

    async def set_public(self, namespace: str, repository: str | None, *, public: bool, actor: str,
                         source: str) -> None:
        await self.record(
            AuditRecord(actor, "visibility.set", _target(namespace, repository), Outcome.SUCCESS, source,
                        {"public": str(public).lower()}),
            [self.store.set_public_op(namespace, repository, public=public)],
        )


def _target(namespace: str, repository: str | None) -> str:
    return f"repository:{repository}" if repository else f"namespace:{namespace}"


def _write_secret_file(path: Path, content: str) -> None:
    """Write `content` to `path` readable by the owner only, atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
