"""PolicyStore: policy documents per namespace and per repository, over the DocumentStore port.

Collection `policies`, `_id` = `ns:<namespace>` or `repo:<repository>`; each holds the document as
written (only the fields it sets, see document.py), who wrote it and when. Writes are returned as outbox
operations, committed with their audit entry and PolicyChanged event by PolicyService.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.core.events.outbox import Delete, Operation, Put
from services.core.policy.document import PolicyDocument, parse_stored
from services.core.storage.documents import DocumentStore, Index

POLICIES = "policies"


@dataclass(frozen=True, slots=True)
class PolicyTarget:
    """What a policy belongs to: a namespace (repository None) or one repository of it."""

    namespace: str
    repository: str | None = None

    @property
    def key(self) -> str:
        return f"repo:{self.repository}" if self.repository else f"ns:{self.namespace}"

    @property
    def resource(self) -> str:
        """The audit log's name of the target."""
        return f"repository:{self.repository}" if self.repository else f"namespace:{self.namespace}"


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    target: PolicyTarget
    document: PolicyDocument
    updated: float
    updated_by: str


class PolicyStore:
    def __init__(self, docs: DocumentStore) -> None:
        self.docs = docs

    async def setup(self) -> None:
        await self.docs.ensure_collection(POLICIES, [Index(("namespace",))])

    async def get(self, target: PolicyTarget) -> StoredPolicy | None:
        doc = await self.docs.get(POLICIES, target.key)
        if doc is None:
            return None
        return StoredPolicy(target, parse_stored(doc.get("document") or {}), doc.get("updated", 0.0),
                            doc.get("updated_by", ""))

    def put_op(self, target: PolicyTarget, document: PolicyDocument, *, actor: str,
               now: float | None = None) -> Operation:
        return Put(
            POLICIES,
            {
                "_id": target.key,
                "namespace": target.namespace,
                "repository": target.repository,
                "document": document.dump(),
                "updated": time.time() if now is None else now,
                "updated_by": actor,
            },
        )

    def delete_op(self, target: PolicyTarget) -> Operation:
        return Delete(POLICIES, target.key)

    async def drop_all(self) -> None:
        """For tests on shared servers."""
        await self.docs.drop_collection(POLICIES)
