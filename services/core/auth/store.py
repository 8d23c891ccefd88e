"""AuthStore: users, teams, memberships, API keys, grants, public marks, signing keys and the audit log,
over the DocumentStore port (so it runs unchanged on SQLite and MongoDB).

Collections and keys:
  auth_users         _id = user name
  auth_emails        _id = lower-cased email -> user (a unique claim; a missing email claims nothing)
  auth_teams         _id = team name
  auth_members       _id = "<team>:<user>"; `source` admin (also when absent) | idp (see MembershipSource)
  auth_keys          _id = key prefix; only the SHA-256 of the key is stored (API keys and refresh tokens)
  auth_grants        _id = Grant.id ("<kind>:<subject>@<namespace or repository>")
  auth_public        _id = "n.<namespace>" or "r.<repository>"
  auth_signing_keys  _id = kid; holds the PEM private key (see the note in the README: a KMS is future work)
  auth_audit         _id = time-ordered id (services.core.auth.audit)

Writes that must be audited are returned as operations for the caller to commit through the outbox
together with their audit entry; unaudited bookkeeping (signing keys, last use) is written directly.
No write spans documents transactionally: a user's deletion removes its dependants first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from services.core.auth.audit import AUDIT, AuditRecord
from services.core.auth.model import ApiKey, Grant, KeyKind, MembershipSource, Role, SubjectKind, Team, User
from services.core.auth.tokens import SigningKey
from services.core.events.outbox import Create, Delete, Insert, Operation, Put, Update
from services.core.storage.documents import DocumentStore, Index

USERS = "auth_users"
EMAILS = "auth_emails"
TEAMS = "auth_teams"
MEMBERS = "auth_members"
KEYS = "auth_keys"
GRANTS = "auth_grants"
PUBLIC = "auth_public"
SIGNING_KEYS = "auth_signing_keys"
COLLECTIONS = (USERS, EMAILS, TEAMS, MEMBERS, KEYS, GRANTS, PUBLIC, SIGNING_KEYS, AUDIT)


def _user(doc: Mapping[str, Any]) -> User:
    return User(
        name=doc["_id"],
        email=doc.get("email"),
        admin=bool(doc.get("admin")),
        created=doc["created"],
        external_issuer=doc.get("external_issuer"),
        external_subject=doc.get("external_subject"),
        signed_in=doc.get("signed_in"),
    )


def _key(doc: Mapping[str, Any]) -> ApiKey:
    namespaces = doc.get("namespaces")
    role = doc.get("role")
    return ApiKey(
        prefix=doc["_id"],
        user=doc["user"],
        hash=doc["hash"],
        name=doc.get("name", ""),
        kind=KeyKind(doc.get("kind", "api")),
        created=doc["created"],
        expires=doc.get("expires"),
        revoked=doc.get("revoked"),
        namespaces=tuple(namespaces) if namespaces is not None else None,
        role=Role(role) if role else None,
        last_used=doc.get("last_used"),
        parent=doc.get("parent"),
    )


def _grant(doc: Mapping[str, Any]) -> Grant:
    return Grant(
        namespace=doc["namespace"],
        repository=doc.get("repository"),
        subject_kind=SubjectKind(doc["subject_kind"]),
        subject=doc["subject"],
        role=Role(doc["role"]),
        created=doc.get("created", 0.0),
        created_by=doc.get("created_by", ""),
    )


def public_id(namespace: str, repository: str | None) -> str:
    return f"r.{repository}" if repository else f"n.{namespace}"


class AuthStore:
    def __init__(self, docs: DocumentStore) -> None:
        self.docs = docs

    async def setup(self) -> None:
        await self.docs.ensure_collection(USERS)
        await self.docs.ensure_collection(EMAILS, [Index(("user",))])
        await self.docs.ensure_collection(TEAMS)
        await self.docs.ensure_collection(MEMBERS, [Index(("team",)), Index(("user",))])
        await self.docs.ensure_collection(KEYS, [Index(("user",))])
        await self.docs.ensure_collection(GRANTS, [Index(("namespace",)), Index(("subject_kind", "subject"))])
        await self.docs.ensure_collection(PUBLIC, [Index(("namespace",))])
        await self.docs.ensure_collection(SIGNING_KEYS)
        await self.docs.ensure_collection(AUDIT, [Index(("actor",)), Index(("action",))])

    # users

    async def user_count(self) -> int:
        return await self.docs.count(USERS)

    async def user(self, name: str) -> User | None:
        doc = await self.docs.get(USERS, name)
        return None if doc is None else _user(doc)

    async def user_by_email(self, email: str) -> User | None:
        claim = await self.docs.get(EMAILS, email.lower())
        return None if claim is None else await self.user(claim["user"])

    async def users(self, *, after: str | None = None, limit: int | None = None) -> list[User]:
        return [_user(d) for d in await self.docs.find(USERS, after=after, limit=limit)]

    def create_user_ops(self, user: User) -> list[Operation]:
        ops: list[Operation] = []
        if user.email:
            ops.append(Insert(EMAILS, {"_id": user.email.lower(), "user": user.name}))
        doc: dict[str, Any] = {"_id": user.name, "email": user.email, "admin": user.admin, "created": user.created}
        if user.external_issuer is not None:
            doc |= {"external_issuer": user.external_issuer, "external_subject": user.external_subject,
                    "signed_in": user.signed_in}
        ops.append(Insert(USERS, doc))
        return ops

    def set_admin_op(self, user: User, *, admin: bool) -> Operation:
        """The admin flag of an external user, synced from its IdP groups (conditional on the user, so a
        deleted and re-created namesake is not touched)."""
        return Update(USERS, user.name, {"admin": admin}, expect={"created": user.created})

    async def record_sign_in(self, user: User, now: float) -> None:
        """An external user signed in through the IdP (conditional on the user, as `set_admin_op`)."""
        await self.docs.update(USERS, user.name, {"signed_in": now}, expect={"created": user.created})

    async def delete_user_ops(self, user: User) -> list[Operation]:
        """Keys, memberships and grants first, the user last (a crash leaves only harmless leftovers)."""
        ops: list[Operation] = [Delete(KEYS, k.prefix) for k in await self.keys_of(user.name, kind=None)]
        ops += [Delete(MEMBERS, f"{team}:{user.name}") for team in await self.teams_of(user.name)]
        ops += [Delete(GRANTS, g.id) for g in await self.grants_of_subject(SubjectKind.USER, user.name)]
        if user.email:
            ops.append(Delete(EMAILS, user.email.lower(), expect={"user": user.name}))
        ops.append(Delete(USERS, user.name))
        return ops

    # teams and memberships

    async def team(self, name: str) -> Team | None:
        doc = await self.docs.get(TEAMS, name)
        return None if doc is None else Team(doc["_id"], doc.get("description", ""), doc["created"])

    async def teams(self, *, after: str | None = None, limit: int | None = None) -> list[Team]:
        docs = await self.docs.find(TEAMS, after=after, limit=limit)
        return [Team(d["_id"], d.get("description", ""), d["created"]) for d in docs]

    def create_team_op(self, team: Team) -> Operation:
        return Insert(TEAMS, {"_id": team.name, "description": team.description, "created": team.created})

    async def delete_team_ops(self, name: str) -> list[Operation]:
        ops: list[Operation] = [Delete(MEMBERS, f"{name}:{u}") for u in await self.members(name)]
        ops += [Delete(GRANTS, g.id) for g in await self.grants_of_subject(SubjectKind.TEAM, name)]
        ops.append(Delete(TEAMS, name))
        return ops

    async def members(self, team: str) -> list[str]:
        return [d["user"] for d in await self.docs.find(MEMBERS, {"team": team}, order_by="user")]

    async def teams_of(self, user: str) -> list[str]:
        return [d["team"] for d in await self.docs.find(MEMBERS, {"user": user}, order_by="team")]

    async def memberships_of(self, user: str) -> dict[str, MembershipSource]:
        """The user's teams, each with who made the membership (old documents without one: an admin)."""
        docs = await self.docs.find(MEMBERS, {"user": user}, order_by="team")
        return {d["team"]: MembershipSource(d.get("source") or MembershipSource.ADMIN.value) for d in docs}

    def add_member_op(self, team: str, user: str, *, source: MembershipSource = MembershipSource.ADMIN) -> Operation:
        return Put(MEMBERS, {"_id": f"{team}:{user}", "team": team, "user": user, "created": time.time(),
                             "source": source.value})

    def remove_idp_member_op(self, team: str, user: str) -> Operation:
        """Remove a membership only while it is still the IdP's (an admin may have made it their own)."""
        return Delete(MEMBERS, f"{team}:{user}", expect={"source": MembershipSource.IDP.value})

    def create_team_if_absent_op(self, team: Team) -> Operation:
        return Create(TEAMS, {"_id": team.name, "description": team.description, "created": team.created})

    def remove_member_op(self, team: str, user: str) -> Operation:
        return Delete(MEMBERS, f"{team}:{user}")

    async def is_member(self, team: str, user: str) -> bool:
        return await self.docs.get(MEMBERS, f"{team}:{user}") is not None

    # keys

    async def key(self, prefix: str) -> ApiKey | None:
        doc = await self.docs.get(KEYS, prefix)
        return None if doc is None else _key(doc)

    async def keys_of(self, user: str, *, kind: KeyKind | None = KeyKind.API) -> list[ApiKey]:
        where: dict[str, Any] = {"user": user}
        if kind is not None:
            where["kind"] = kind.value
        return [_key(d) for d in await self.docs.find(KEYS, where, order_by="created")]

    def create_key_op(self, key: ApiKey) -> Operation:
        return Insert(
            KEYS,
            {
                "_id": key.prefix,
                "user": key.user,
                "hash": key.hash,
                "name": key.name,
                "kind": key.kind.value,
                "created": key.created,
                "expires": key.expires,
                "revoked": None,
                "namespaces": list(key.namespaces) if key.namespaces is not None else None,
                "role": key.role.value if key.role else None,
                "parent": key.parent,
            },
        )

    async def insert_key(self, key: ApiKey) -> None:
        op = self.create_key_op(key)
        assert isinstance(op, Insert)
        await self.docs.insert(op.collection, op.doc)

    def revoke_key_op(self, prefix: str, *, now: float) -> Operation:
        return Update(KEYS, prefix, {"revoked": now}, expect={"revoked": None})

    async def delete_key(self, prefix: str) -> None:
        await self.docs.delete(KEYS, prefix)

    async def touch_key(self, prefix: str, now: float) -> None:
        await self.docs.update(KEYS, prefix, {"last_used": now})

    # grants and public marks

    async def grants_for(self, namespace: str) -> list[Grant]:
        """Every grant on the namespace or on one of its repositories."""
        return [_grant(d) for d in await self.docs.find(GRANTS, {"namespace": namespace})]

    async def grant(self, grant_id: str) -> Grant | None:
        doc = await self.docs.get(GRANTS, grant_id)
        return None if doc is None else _grant(doc)

    async def grants_of_subject(self, kind: SubjectKind, subject: str) -> list[Grant]:
        docs = await self.docs.find(GRANTS, {"subject_kind": kind.value, "subject": subject})
        return [_grant(d) for d in docs]

    def put_grant_op(self, grant: Grant) -> Operation:
        return Put(
            GRANTS,
            {
                "_id": grant.id,
                "namespace": grant.namespace,
                "repository": grant.repository,
                "subject_kind": grant.subject_kind.value,
                "subject": grant.subject,
                "role": grant.role.value,
                "created": grant.created,
                "created_by": grant.created_by,
            },
        )

    def delete_grant_op(self, grant_id: str) -> Operation:
        return Delete(GRANTS, grant_id)

    async def is_public(self, repository: str, namespace: str) -> bool:
        if await self.docs.get(PUBLIC, public_id(namespace, None)) is not None:
            return True
        return await self.docs.get(PUBLIC, public_id(namespace, repository)) is not None

    async def public_marks(self, namespace: str) -> list[str | None]:
        """None for the whole namespace, else the public repositories of it."""
        return [d.get("repository") for d in await self.docs.find(PUBLIC, {"namespace": namespace})]

    def set_public_op(self, namespace: str, repository: str | None, *, public: bool) -> Operation:
        key = public_id(namespace, repository)
        if public:
            return Put(PUBLIC, {"_id": key, "namespace": namespace, "repository": repository, "created": time.time()})
        return Delete(PUBLIC, key)

    # signing keys

    async def signing_keys(self) -> list[SigningKey]:
        docs = await self.docs.find(SIGNING_KEYS, order_by="created")
        return [
            SigningKey(
                kid=d["_id"],
                private_pem=d["private_pem"],
                created=d["created"],
                active_until=d["active_until"],
                retire_after=d["retire_after"],
            )
            for d in docs
        ]

    async def add_signing_key(self, key: SigningKey) -> None:
        await self.docs.put(
            SIGNING_KEYS,
            {
                "_id": key.kid,
                "private_pem": key.private_pem,
                "created": key.created,
                "active_until": key.active_until,
                "retire_after": key.retire_after,
            },
        )

    async def remove_signing_key(self, kid: str) -> None:
        await self.docs.delete(SIGNING_KEYS, kid)

    # audit

    async def audit(
        self, *, after: str | None = None, limit: int = 100, where: Mapping[str, str] | None = None
    ) -> list[AuditRecord]:
        docs = await self.docs.find(AUDIT, dict(where or {}), after=after, limit=limit)
        return [AuditRecord.from_doc(d) for d in docs]

    async def drop_all(self, names: Sequence[str] = COLLECTIONS) -> None:
        for name in names:
            await self.docs.drop_collection(name)
