"""AuthService over a real (SQLite) DocumentStore: bootstrap, keys, refresh tokens, rotation, audit."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from services.core.auth import apikeys
from services.core.auth.errors import AlreadyExistsError, AuthenticationError
from services.core.auth.model import KeyKind, Role, SubjectKind
from services.core.auth.service import AuthService
from services.core.auth.store import AuthStore
from services.core.events.envelope import decode
from services.core.events.outbox import OUTBOX, Outbox
from services.core.settings import AuthSettings, SettingsError, TopicSettings, load_settings
from services.core.storage.sqlite import SqliteDocumentStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def docs(tmp_path: Path) -> AsyncIterator[SqliteDocumentStore]:
    store = SqliteDocumentStore(tmp_path / "meta.db")
    yield store
    await store.close()


async def make(docs: SqliteDocumentStore, clock: Clock | None = None, **settings: object) -> AuthService:
    outbox = Outbox(docs)
    await outbox.setup()
    service = AuthService(store=AuthStore(docs), outbox=outbox, settings=AuthSettings(**settings),
                          topics=TopicSettings(), upload_grace_seconds=3600, clock=clock or Clock())
    await service.setup()
    return service


async def test_bootstrap_writes_a_private_key_file_once(docs: SqliteDocumentStore, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    service = await make(docs)
    path = await service.bootstrap(tmp_path)
    assert path == tmp_path / "bootstrap-admin.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert str(path) in caplog.text and key not in caplog.text
    auth = await service.authenticate_key(key, username="admin")
    assert auth.user.admin
    assert await service.bootstrap(tmp_path) is None  # not an empty store any more
    assert path.read_text().strip() == key


async def test_bootstrap_takes_the_configured_key(docs: SqliteDocumentStore, tmp_path: Path) -> None:
    key = apikeys.generate_key().key
    service = await make(docs, bootstrap_admin_key=SecretStr(key))
    assert await service.bootstrap(tmp_path) is None
    assert not (tmp_path / "bootstrap-admin.key").exists()
    assert (await service.authenticate_key(key, username="hanzo")).user.name == "admin"


def test_settings_default_to_token_and_check_the_bootstrap_key() -> None:
    assert AuthSettings().mode == "token"
    with pytest.raises(SettingsError, match="bootstrap_admin_key"):
        load_settings(auth={"bootstrap_admin_key": "short"})


async def test_usernames_expiry_revocation(docs: SqliteDocumentStore) -> None:
    clock = Clock()
    service = await make(docs, clock)
    await service.create_user("bob", email="Bob@Example.com", admin=False, actor="t", source="")
    with pytest.raises(AlreadyExistsError):
        await service.create_user("bob", email=None, admin=False, actor="t", source="")
    with pytest.raises(AlreadyExistsError):
        await service.create_user("rob", email="bob@example.com", admin=False, actor="t", source="")
    created = await service.create_key("bob", name="ci", expires_in=60, namespaces=["ml"], role=Role.READER,
                                       actor="t", source="")
    for username in ("bob", "bob@example.com", "hanzo", None):
        assert (await service.authenticate_key(created.secret, username=username)).user.name == "bob"
    for bad_user in ("alice", "admin"):
        with pytest.raises(AuthenticationError):
            await service.authenticate_key(created.secret, username=bad_user)
    with pytest.raises(AuthenticationError):
        await service.authenticate_key(created.secret[:-2] + "00", username=None)
    subject = await service.subject("bob", key_prefix=created.key.prefix)
    assert subject.key_namespaces == ("ml",) and subject.key_role is Role.READER
    clock.now += 61
    with pytest.raises(AuthenticationError):
        await service.authenticate_key(created.secret, username=None)
    other = await service.create_key("bob", name="", expires_in=None, namespaces=None, role=None, actor="t", source="")
    await service.revoke_key("bob", other.key.prefix, actor="t", source="")
    with pytest.raises(AuthenticationError):
        await service.authenticate_key(other.secret, username=None)


async def test_refresh_tokens_die_with_their_key(docs: SqliteDocumentStore) -> None:
    service = await make(docs)
    await service.create_user("bob", email=None, admin=False, actor="t", source="")
    created = await service.create_key("bob", name="", expires_in=None, namespaces=None, role=None, actor="t",
                                       source="")
    auth = await service.authenticate_key(created.secret, username="bob")
    refresh = await service.create_refresh_token(auth)
    with pytest.raises(AuthenticationError):  # a refresh token is not an API key
        await service.authenticate_key(refresh, username=None)
    assert (await service.authenticate_key(refresh, username=None, kind=KeyKind.REFRESH)).user.name == "bob"
    with pytest.raises(AuthenticationError):  # and an API key is not a refresh token
        await service.authenticate_key(created.secret, username=None, kind=KeyKind.REFRESH)
    await service.revoke_key("bob", created.key.prefix, actor="t", source="")
    with pytest.raises(AuthenticationError):
        await service.authenticate_key(refresh, username=None, kind=KeyKind.REFRESH)


async def test_signing_keys_rotate_and_old_ones_verify_until_retired(docs: SqliteDocumentStore) -> None:
    clock = Clock()
    service = await make(docs, clock, key_rotation_seconds=600, token_ttl_seconds=300)
    subject = await service.subject(None)
    first, _ = await service.issue_token(subject, [], key_prefix=None)
    clock.now += 601
    second, _ = await service.issue_token(subject, [], key_prefix=None)
    kid: Callable[[Any], str] = lambda t: __import__("jwt").get_unverified_header(t.token)["kid"]  # noqa: E731
    assert kid(first) != kid(second)
    assert (await service.verify_token(first.token, allow_expired=True)).expired
    assert not (await service.verify_token(second.token)).expired
    # A second replica (its own key ring over the same store) verifies tokens of the first.
    replica = await make(docs, clock, key_rotation_seconds=600, token_ttl_seconds=300)
    assert (await replica.verify_token(second.token)).subject == ""
    clock.now += 600 + 300 + 3600 + 60  # past the first key's retirement
    await service.issue_token(subject, [], key_prefix=None)
    assert kid(first) not in {k.kid for k in await service.store.signing_keys()}


async def test_changes_and_audit_entries_go_through_the_outbox(docs: SqliteDocumentStore) -> None:
    service = await make(docs)
    await service.create_user("bob", email=None, admin=False, actor="admin", source="10.1.2.3")
    await service.create_team("ml-engineers", description="", actor="admin", source="10.1.2.3")
    await service.add_member("ml-engineers", "bob", actor="admin", source="10.1.2.3")
    grant = await service.put_grant("ml", repository=None, subject_kind=SubjectKind.TEAM, subject="ml-engineers",
                                    role=Role.WRITER, actor="admin", source="10.1.2.3")
    subject = await service.subject("bob")
    assert await service.allowed(subject, "ml/llama") == {"pull", "push"}
    await service.revoke_grant("ml", grant.id, actor="admin", source="10.1.2.3")
    assert await service.allowed(subject, "ml/llama") == frozenset()
    entries = await service.store.audit()
    assert [e.action for e in entries] == ["user.create", "team.create", "team.member.add", "permission.grant",
                                           "permission.revoke"]
    assert all(e.source == "10.1.2.3" and e.actor == "admin" for e in entries)
    intents = await docs.find(OUTBOX, order_by="seq")
    events = [decode(e["value"]) for i in intents for e in i["events"]]
    assert [e.audit_entry.action for e in events] == [e.action for e in entries]
    assert events[3].audit_entry.detail["role"] == "writer"


async def test_expired_refresh_tokens_are_pruned(docs: SqliteDocumentStore) -> None:
    clock = Clock()
    service = await make(docs, clock, refresh_token_ttl_seconds=300)
    await service.create_user("bob", email=None, admin=False, actor="t", source="")
    created = await service.create_key("bob", name="", expires_in=None, namespaces=None, role=None, actor="t",
                                       source="")
    auth = await service.authenticate_key(created.secret, username="bob")
    await service.create_refresh_token(auth)
    clock.now += 301
    await service.create_refresh_token(auth)
    assert len(await service.store.keys_of("bob", kind=KeyKind.REFRESH)) == 1


async def test_key_verification_uses_constant_time_comparison(docs: SqliteDocumentStore,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    service = await make(docs)
    await service.create_user("bob", email=None, admin=False, actor="t", source="")
    created = await service.create_key("bob", name="", expires_in=None, namespaces=None, role=None, actor="t",
                                       source="")
    calls: list[bytes] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(a) or real(a, b))  # type: ignore[func-returns-value]
    await service.authenticate_key(created.secret, username=None)
    with pytest.raises(AuthenticationError):  # an unknown prefix is compared too (no timing oracle)
        await service.authenticate_key(apikeys.generate_key().key, username=None)
    assert len(calls) == 2
