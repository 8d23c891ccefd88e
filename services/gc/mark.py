"""What is garbage (pure): from a snapshot of manifests, tags, links and policies, the manifests and blobs
a run may delete, and in which order.

Kept, whatever their age:
- tagged manifests; untagged ones younger than the repository's `retention.untagged_after_days` (0: never
  delete untagged), and its `retention.keep_last` newest untagged ones;
- every manifest a kept index references (recursively), and every referrer of a kept manifest (recursively:
  a signature of an SBOM of a kept image is kept);
- the subject of a kept manifest: the base model of a kept adapter or quantization (models name their base as
  `subject`), the image of a tagged signature, so no kept manifest is left pointing at a deleted one;
- a referrer whose subject the repository does not hold is garbage once older than the blob grace period
  (a referrer may be pushed before its subject).
A blob (its bytes and all its links) is garbage when no kept manifest of any repository references it and
every link to it is older than the blob grace period.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Retention:
    untagged_after_days: int = 7
    keep_last: int = 0


@dataclass(frozen=True, slots=True)
class ManifestFacts:
    """One stored manifest as the collector sees it."""

    repository: str
    digest: str
    created: float
    references: tuple[str, ...] = ()
    """Blobs and child manifests (an index's), as stored."""
    subject: str | None = None
    tagged: bool = False
    generation: str | None = None
    size: int = 0


@dataclass(frozen=True, slots=True)
class LinkFacts:
    repository: str
    digest: str
    size: int
    created: float


@dataclass(frozen=True, slots=True)
class Limits:
    """The ages a run applies: `untagged_seconds` replaces the policy's days when given (a run's
    grace_seconds)."""

    now: float
    blob_grace_seconds: float
    untagged_seconds: float | None = None


@dataclass
class ManifestPlan:
    delete: list[ManifestFacts] = field(default_factory=list)
    """Garbage manifests, referrers and indexes before what they reference (a crash leaves no dangling parent)."""
    kept: set[tuple[str, str]] = field(default_factory=set)


def _untagged_expired(m: ManifestFacts, retention: Retention, limits: Limits) -> bool:
    if limits.untagged_seconds is not None:
        return limits.now - m.created >= limits.untagged_seconds
    if retention.untagged_after_days == 0:
        return False
    return limits.now - m.created >= retention.untagged_after_days * DAY


def plan_manifests(
    manifests: Iterable[ManifestFacts], retention: Mapping[str, Retention], limits: Limits,
    *, default: Retention = Retention(),
) -> ManifestPlan:
    """The manifests to delete, per the module docstring. `retention` by repository (missing: `default`)."""
    by_repo: dict[str, dict[str, ManifestFacts]] = defaultdict(dict)
    for m in manifests:
        by_repo[m.repository][m.digest] = m
    plan = ManifestPlan()
    for repo, held in by_repo.items():
        policy = retention.get(repo, default)
        referrers: dict[str, list[str]] = defaultdict(list)
        for m in held.values():
            if m.subject:
                referrers[m.subject].append(m.digest)
        roots: set[str] = set()
        untagged = sorted((m for m in held.values() if not m.tagged and m.subject is None),
                          key=lambda m: (m.created, m.digest), reverse=True)
        newest = {m.digest for m in untagged[: policy.keep_last]}
        for m in held.values():
            if m.tagged or m.digest in newest:
                roots.add(m.digest)
            elif m.subject is not None:
                # A referrer lives with its subject; an orphan one (no subject here) only for the grace period.
                if m.subject not in held and limits.now - m.created < limits.blob_grace_seconds:
                    roots.add(m.digest)
            elif not _untagged_expired(m, policy, limits):
                roots.add(m.digest)
        kept: set[str] = set()
        stack = list(roots)
        while stack:
            digest = stack.pop()
            if digest in kept:
                continue
            kept.add(digest)
            m = held[digest]
            stack += [r for r in m.references if r in held and r not in kept]
            stack += [r for r in referrers.get(digest, ()) if r not in kept]
            if m.subject and m.subject in held and m.subject not in kept:
                stack.append(m.subject)
        plan.kept |= {(repo, d) for d in kept}
        garbage = [m for d, m in held.items() if d not in kept]
        plan.delete += _parents_first(garbage, held)
    return plan


def _parents_first(garbage: list[ManifestFacts], held: Mapping[str, ManifestFacts]) -> list[ManifestFacts]:
    """Referrers before their subject, indexes before their children (a topological order; the graph of
    stored manifests is acyclic since digests are content hashes)."""
    members = {m.digest: m for m in garbage}
    parents: dict[str, int] = {d: 0 for d in members}
    for m in garbage:
        for child in _children(m, held):
            if child in members:
                parents[child] += 1
    ready = sorted(d for d, n in parents.items() if n == 0)
    out: list[ManifestFacts] = []
    while ready:
        digest = ready.pop()
        m = members[digest]
        out.append(m)
        for child in _children(m, held):
            if child in members:
                parents[child] -= 1
                if parents[child] == 0:
                    ready.append(child)
    if len(out) < len(members):  # a cycle cannot happen; never lose a candidate if it did
        out += [m for d, m in members.items() if m not in out]
    return out


def _children(m: ManifestFacts, held: Mapping[str, ManifestFacts]) -> list[str]:
    """What `m` points at among stored manifests: its child manifests and its subject."""
    out = [r for r in m.references if r in held]
    if m.subject and m.subject in held:
        out.append(m.subject)
    return out


def referenced_blobs(manifests: Iterable[ManifestFacts], deleted: set[tuple[str, str]]) -> set[str]:
    """Every digest referenced by a manifest that stays (all but `deleted`), in any repository."""
    out: set[str] = set()
    for m in manifests:
        if (m.repository, m.digest) not in deleted:
            out.update(m.references)
    return out


@dataclass
class BlobCandidate:
    digest: str
    size: int
    links: list[LinkFacts] = field(default_factory=list)


def plan_blobs(links: Iterable[LinkFacts], referenced: set[str], limits: Limits) -> list[BlobCandidate]:
    """Linked blobs that are garbage: referenced by no kept manifest, and every link older than the grace."""
    by_digest: dict[str, BlobCandidate] = {}
    young: set[str] = set()
    for link in links:
        if link.digest in referenced or link.digest in young:
            continue
        if limits.now - link.created < limits.blob_grace_seconds:
            young.add(link.digest)
            by_digest.pop(link.digest, None)
            continue
        candidate = by_digest.setdefault(link.digest, BlobCandidate(link.digest, link.size))
        candidate.links.append(link)
    return sorted(by_digest.values(), key=lambda c: c.digest)


def linked_since(read: Iterable[LinkFacts], recent: Iterable[LinkFacts]) -> bool:
    """Whether a blob's `recent` links (written since the run started, or all it has now) include one its
    candidate's snapshot did not `read` (another repository, or the same link written again): a push linked it
    after the snapshot, and it stays."""
    before = {(link.repository, link.created) for link in read}
    return any((link.repository, link.created) not in before for link in recent)


def unlinked_garbage(stored: Iterable[tuple[str, int]], linked: Container[str], seen_since: Mapping[str, float],
                     limits: Limits) -> tuple[list[tuple[str, int]], list[str]]:
    """Stored blobs no repository links: (those old enough to delete, those seen for the first time).
    Blob storage keeps no age the port exposes, so an unlinked blob's age starts when a run first sees it."""
    delete: list[tuple[str, int]] = []
    first_seen: list[str] = []
    for digest, size in stored:
        if digest in linked:
            continue
        since = seen_since.get(digest)
        if since is None:
            first_seen.append(digest)
            if limits.blob_grace_seconds <= 0:
                delete.append((digest, size))
        elif limits.now - since >= limits.blob_grace_seconds:
            delete.append((digest, size))
    return delete, first_seen


def next_expiry(manifests: Iterable[ManifestFacts], retention: Mapping[str, Retention], limits: Limits,
                *, default: Retention = Retention()) -> float | None:
    """The earliest time after `limits.now` when an untagged manifest reaches its retention age or an orphan
    referrer its grace period: when a repository kept for age alone is worth looking at again (None: never,
    unless something changes it)."""
    out: float | None = None
    for m in manifests:
        if m.tagged:
            continue
        if m.subject is not None:
            at = m.created + limits.blob_grace_seconds
        elif limits.untagged_seconds is not None:
            at = m.created + limits.untagged_seconds
        else:
            days = retention.get(m.repository, default).untagged_after_days
            if days == 0:
                continue
            at = m.created + days * DAY
        if at > limits.now and (out is None or at < out):
            out = at
    return out


def links_due(links: Iterable[LinkFacts], limits: Limits) -> float | None:
    """When every one of a blob's links is past the grace period (None: already)."""
    newest = max((link.created for link in links), default=None)
    if newest is None or limits.now - newest >= limits.blob_grace_seconds:
        return None
    return newest + limits.blob_grace_seconds
