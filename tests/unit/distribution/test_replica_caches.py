"""Other replicas' events drop what they make stale in this replica's caches: a created or deleted tag its
repository's tag names (a moved tag keeps them), a scan report its digest's pull-gate decisions."""

from __future__ import annotations

from typing import Any

from services.core.content import events
from services.core.events.envelope import encode
from services.core.oci.digest import Digest
from services.distribution.replica_caches import ReplicaCacheInvalidation

D1 = Digest.parse("sha256:" + "1" * 64)
D2 = Digest.parse("sha256:" + "2" * 64)


class _Gates:
    def __init__(self) -> None:
        self.dropped: list[dict[str, Any]] = []

    def invalidate(self, **kwargs: Any) -> None:
        self.dropped.append(kwargs)


class _Meta:
    def __init__(self) -> None:
        self.changed: list[str] = []

    def tag_set_changed(self, repository: str) -> None:
        self.changed.append(repository)


def _follower() -> tuple[ReplicaCacheInvalidation, _Gates, _Meta]:
    gates, meta = _Gates(), _Meta()
    return ReplicaCacheInvalidation(None, [], gates, meta), gates, meta  # type: ignore[arg-type]


def test_created_and_deleted_tags_drop_their_repositorys_names_and_moves_keep_them() -> None:
    follower, gates, meta = _follower()
    created = events.tag_updated("team/app", "v1", D1, None, actor="a", forced=False)
    moved = events.tag_updated("team/app", "latest", D2, D1, actor="a", forced=False)
    deleted = events.tag_deleted("team/other", "v1", D1, actor="a")
    for built in (created, moved, deleted):
        follower.apply(encode(built.envelope))
    assert meta.changed == ["team/app", "team/other"]
    assert gates.dropped == []


def test_undecodable_events_are_ignored() -> None:
    follower, gates, meta = _follower()
    follower.apply(b"\x00not an envelope")
    assert meta.changed == [] and gates.dropped == []
