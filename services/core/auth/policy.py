"""Grant evaluation: which actions a subject holds on a repository. Pure; deny by default."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from services.core.auth.model import ROLE_ACTIONS, Grant, Role, Subject, SubjectKind, namespace_of
from services.core.auth.scopes import (
    CATALOG,
    PULL,
    REGISTRY,
    REPOSITORY,
    REPOSITORY_ACTIONS,
    WILDCARD,
    ResourceScope,
    expand,
    ordered,
)


def holds(subject: Subject, grant: Grant) -> bool:
    if subject.user is None:
        return False
    if grant.subject_kind is SubjectKind.USER:
        return grant.subject == subject.user
    return grant.subject in subject.teams


def allowed_actions(subject: Subject, repository: str, *, grants: Iterable[Grant], public: bool) -> frozenset[str]:
    """Actions `subject` may perform on `repository`: everything for registry admins, the union of the
    roles of every grant it holds on the repository or its namespace, and pull on public repositories;
    then narrowed to the namespaces and role of the API key used. Nothing else."""
    held: set[str] = set()
    if subject.admin and subject.user is not None:
        held.update(REPOSITORY_ACTIONS)
    else:
        for grant in grants:
            if grant.applies_to(repository) and holds(subject, grant):
                held |= ROLE_ACTIONS[grant.role]
    if subject.key_namespaces is not None and namespace_of(repository) not in subject.key_namespaces:
        held.clear()
    if subject.key_role is not None:
        held &= ROLE_ACTIONS[subject.key_role]
    if public:
        held.add(PULL)
    return frozenset(held)


def manages_namespace(subject: Subject, namespace: str, *, grants: Iterable[Grant]) -> bool:
    """Registry admins, and holders of the admin role on the whole namespace, manage its permissions."""
    if subject.user is None:
        return False
    if subject.key_namespaces is not None and namespace not in subject.key_namespaces:
        return False
    if subject.key_role is not None and subject.key_role is not Role.ADMIN:
        return False
    if subject.admin:
        return True
    return any(
        g.repository is None and g.namespace == namespace and g.role is Role.ADMIN and holds(subject, g)
        for g in grants
    )


def grant_scopes(
    requested: Sequence[ResourceScope],
    held_on: Callable[[str], frozenset[str]],
) -> list[ResourceScope]:
    """The `access` of a token: for each requested resource, the requested actions the caller holds
    (`held_on(repository)`); `*` asks for every action. Resources granted nothing are left out, and
    unknown resource types are never granted. The catalog is open to every caller (it is filtered)."""
    granted: list[ResourceScope] = []
    for scope in requested:
        if scope.type == REPOSITORY:
            wanted = expand(scope.actions, REPOSITORY_ACTIONS)
            actions = wanted & held_on(scope.name)
            if actions:
                granted.append(ResourceScope(REPOSITORY, scope.name, ordered(actions)))
        elif scope.type == REGISTRY and scope.name == CATALOG and WILDCARD in scope.actions:
            granted.append(ResourceScope(REGISTRY, CATALOG, (WILDCARD,)))
    return granted
