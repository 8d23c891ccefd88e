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


class _Outbox:
    def __init__(self, own: set[str]) -> None:
        self.own = own

    def committed_here(self, event_id: str) -> bool:
        return event_id in self.own


def _follower(own: set[str] | None = None) -> tuple[ReplicaCacheInvalidation, _Gates, _Meta]:
    gates, meta = _Gates(), _Meta()
    follower = ReplicaCacheInvalidation(None, [], gates, meta, _Outbox(own or set()))  # type: ignore[arg-type]
    return follower, gates, meta


def test_created_and_deleted_tags_drop_their_repositorys_names_and_moves_keep_them() -> None:
    follower, gates, meta = _follower()
    created = events.tag_updated("team/app", "v1", D1, None, actor="a", forced=False)
    moved = events.tag_updated("team/app", "latest", D2, D1, actor="a", forced=False)
    deleted = events.tag_deleted("team/other", "v1", D1, actor="a")
    for built in (created, moved, deleted):
        follower.apply(encode(built.envelope))
    assert meta.changed == ["team/app", "team/other"]
    assert gates.dropped == []


def test_this_replicas_own_tag_events_are_skipped_its_commits_dropped_the_names_already() -> None:
    mine = events.tag_updated("team/app", "v1", D1, None, actor="a", forced=False)
    theirs = events.tag_deleted("team/app", "v0", D1, actor="a")
    follower, _, meta = _follower({mine.envelope.id})
    for built in (mine, theirs):
        follower.apply(encode(built.envelope))
    assert meta.changed == ["team/app"]


def test_undecodable_events_are_ignored() -> None:
    follower, gates, meta = _follower()
    follower.apply(b"\x00not an envelope")
    assert meta.changed == [] and gates.dropped == []
