"""Grant evaluation: roles, namespaces and repositories, teams, public, API key limits, deny by default."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.core.auth.model import ROLE_ACTIONS, Grant, Role, Subject, SubjectKind
from services.core.auth.policy import allowed_actions, grant_scopes, manages_namespace
from services.core.auth.scopes import ResourceScope

ALICE = Subject(user="alice", teams=frozenset({"ml-engineers"}))


def g(namespace: str, role: Role, *, team: str | None = None, user: str | None = None,
      repository: str | None = None) -> Grant:
    kind, subject = (SubjectKind.TEAM, team) if team else (SubjectKind.USER, user or "")
    return Grant(namespace, repository, kind, subject, role)


def test_deny_by_default() -> None:
    assert allowed_actions(ALICE, "ml/llama", grants=[], public=False) == frozenset()


def test_roles() -> None:
    assert allowed_actions(ALICE, "ml/llama", grants=[g("ml", Role.READER, user="alice")], public=False) == {"pull"}
    assert allowed_actions(ALICE, "ml/llama", grants=[g("ml", Role.WRITER, team="ml-engineers")],
                           public=False) == {"pull", "push"}
    assert allowed_actions(ALICE, "ml/llama", grants=[g("ml", Role.ADMIN, user="alice")],
                           public=False) == {"pull", "push", "delete"}


def test_grants_apply_to_their_namespace_or_repository_only() -> None:
    grants = [g("ml", Role.WRITER, user="alice"), g("web", Role.READER, user="alice", repository="web/site")]
    assert allowed_actions(ALICE, "other/llama", grants=grants, public=False) == frozenset()
    assert allowed_actions(ALICE, "mlx/llama", grants=grants, public=False) == frozenset()
    assert allowed_actions(ALICE, "web/site", grants=grants, public=False) == {"pull"}
    assert allowed_actions(ALICE, "web/other", grants=grants, public=False) == frozenset()


def test_grants_of_others_do_not_count() -> None:
    grants = [g("ml", Role.ADMIN, user="bob"), g("ml", Role.ADMIN, team="ops")]
    assert allowed_actions(ALICE, "ml/llama", grants=grants, public=False) == frozenset()


def test_public_means_anonymous_pull_only() -> None:
    anonymous = Subject(user=None)
    assert allowed_actions(anonymous, "ml/llama", grants=[g("ml", Role.ADMIN, user="")], public=True) == {"pull"}
    assert allowed_actions(anonymous, "ml/llama", grants=[], public=False) == frozenset()


def test_admin_and_key_limits() -> None:
    admin = Subject(user="root", admin=True)
    assert allowed_actions(admin, "x/y", grants=[], public=False) == {"pull", "push", "delete"}
    limited = Subject(user="root", admin=True, key_namespaces=("ml",), key_role=Role.READER)
    assert allowed_actions(limited, "ml/y", grants=[], public=False) == {"pull"}
    assert allowed_actions(limited, "x/y", grants=[], public=False) == frozenset()
    assert allowed_actions(limited, "x/y", grants=[], public=True) == {"pull"}


def test_namespace_management() -> None:
    assert manages_namespace(Subject(user="root", admin=True), "ml", grants=[])
    assert manages_namespace(ALICE, "ml", grants=[g("ml", Role.ADMIN, team="ml-engineers")])
    assert not manages_namespace(ALICE, "ml", grants=[g("ml", Role.ADMIN, repository="ml/a", user="alice")])
    assert not manages_namespace(ALICE, "ml", grants=[g("ml", Role.WRITER, user="alice")])
    reader_key = Subject(user="root", admin=True, key_role=Role.READER)
    assert not manages_namespace(reader_key, "ml", grants=[])


def test_token_grant_is_the_intersection() -> None:
    held = {"ml/a": frozenset({"pull"}), "ml/b": frozenset({"pull", "push", "delete"})}
    requested = [
        ResourceScope("repository", "ml/a", ("pull", "push")),
        ResourceScope("repository", "ml/b", ("*",)),
        ResourceScope("repository", "ml/c", ("pull",)),
        ResourceScope("registry", "catalog", ("*",)),
        ResourceScope("plugin", "x", ("pull",)),
    ]
    granted = grant_scopes(requested, lambda name: held.get(name, frozenset()))
    assert granted == [
        ResourceScope("repository", "ml/a", ("pull",)),
        ResourceScope("repository", "ml/b", ("pull", "push", "delete")),
        ResourceScope("registry", "catalog", ("*",)),
    ]


_roles = st.sampled_from(list(Role))
_grants = st.lists(
    st.builds(
        lambda ns, role, who, repo: g(ns, role, user=who, repository=f"{ns}/{repo}" if repo else None),
        st.sampled_from(["ml", "web"]), _roles, st.sampled_from(["alice", "bob"]),
        st.one_of(st.none(), st.sampled_from(["a", "b"])),
    ),
    max_size=6,
)


@given(_grants, st.sampled_from(["ml/a", "ml/b", "web/a", "x/a"]), st.booleans(),
       st.one_of(st.none(), _roles))
def test_never_more_than_held_roles(grants: list[Grant], repository: str, public: bool, key_role: Role | None) -> None:
    subject = Subject(user="alice", key_role=key_role)
    allowed = allowed_actions(subject, repository, grants=grants, public=public)
    union: set[str] = {"pull"} if public else set()
    for grant in grants:
        if grant.subject == "alice" and grant.applies_to(repository):
            union |= ROLE_ACTIONS[grant.role]
    assert allowed <= union
    if key_role is not None:
        assert allowed <= ROLE_ACTIONS[key_role] | ({"pull"} if public else set())
