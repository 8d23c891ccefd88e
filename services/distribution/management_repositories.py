"""Deleting a repository over the management API: DELETE /v1/registry/repositories/{repository}.

Namespace admins delete a repository with everything in it (services/core/content/repositories.py):
manifests and tags through the outbox with their events, blob links, open uploads, then the record, so it
leaves `_catalog`. A repository with immutable tags needs the force that moving them needs (a registry
admin and `X-Hanzo-Force: true`). The deletion is audited (`repository.delete`, forced or not); GC
reclaims the bytes.
"""

from __future__ import annotations

from pydantic import Field

from services.core.auth.audit import AuditRecord, Outcome
from services.core.content.repositories import delete_repository
from services.core.errors import DeniedError
from services.core.oci.names import RepositoryName
from services.distribution.keys import GATES, REGISTRY
from services.distribution.management_api import Call, Requirement, Route
from services.distribution.management_models import Response


class RepositoryDeleted(Response):
    repository: str = Field(description="The deleted repository")
    manifests: int = Field(description="Manifests deleted")
    tags: int = Field(description="Tags deleted")
    blobs: int = Field(description="Blob links removed (GC reclaims the bytes no repository links)")
    uploads: int = Field(description="Open upload sessions discarded")
    forced: bool = Field(description="Whether immutable tags were deleted by force")


async def delete_repository_route(call: Call) -> RepositoryDeleted:
    assert call.repository is not None
    force = call.request.headers.get("X-Hanzo-Force", "").lower() == "true"
    if force and not call.who.admin:
        raise DeniedError(f"only registry admins may force the deletion of {call.repository}")
    deleted = await delete_repository(call.request.app[REGISTRY], RepositoryName(call.repository),
                                      actor=call.who.name, force=force)
    call.request.app[GATES].invalidate(namespace=RepositoryName(call.repository).namespace)
    detail = {"manifests": str(deleted.manifests), "tags": str(deleted.tags), "blobs": str(deleted.blobs)}
    if force:
        detail["forced"] = "true"
    await call.access.service.record(
        AuditRecord(call.who.name, "repository.delete", f"repository:{call.repository}", Outcome.SUCCESS,
                    call.who.source, detail)
    )
    return RepositoryDeleted(repository=deleted.repository, manifests=deleted.manifests, tags=deleted.tags,
                             blobs=deleted.blobs, uploads=deleted.uploads, forced=force)


def repository_routes() -> list[Route]:
    """After the policy routes: `/repositories/{repository}/policy` is matched first."""
    return [
        Route("DELETE", "/repositories/{repository:.+}", delete_repository_route, Requirement.NAMESPACE_ADMIN,
              "Delete a repository: every manifest and tag (with their events), its blob links and uploads; "
              "immutable tags need X-Hanzo-Force: true from a registry admin",
              response=RepositoryDeleted, errors=(404, 409)),
    ]
