"""Field-by-field merging of policy documents: registry default <- namespace <- repository (pure)."""

from __future__ import annotations

from typing import Any

from services.core.policy.document import PolicyDocument


def merge(base: PolicyDocument, *overrides: PolicyDocument | None) -> PolicyDocument:
    """The effective policy: `base` with each override applied in turn, field by field.

    A field an override *sets* (present in the document as written) wins over the levels before it; a
    field it leaves out is inherited. Lists are values like any other: a set list replaces the inherited
    one wholesale, it is never concatenated (a repository that sets `scan.ignore: []` ignores nothing,
    whatever its namespace ignores). Sections merge field by field, so `{scan: {severity_gate: high}}`
    keeps the inherited `scan.enabled`. `None` stands for a level without a document. Every field of the
    result counts as set (`dump()` shows the whole effective policy).
    """
    data: dict[str, Any] = base.dump_all()
    for override in overrides:
        if override is None:
            continue
        for section, fields in override.dump().items():
            data[section] = {**data.get(section, {}), **fields}
    return PolicyDocument.model_validate(data)


def effective(
    default: PolicyDocument, *, namespace: PolicyDocument | None, repository: PolicyDocument | None
) -> PolicyDocument:
    """The policy that applies to a repository: the registry default (every field, set or not), then its
    namespace's document, then its own."""
    return merge(default, namespace, repository)
