"""Which content events make GC candidates, and when a kept repository or blob is worth looking at again."""

from __future__ import annotations

from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.gc.candidates import BLOB, REPOSITORY, Candidate, candidates_of
from services.gc.mark import DAY, Limits, LinkFacts, ManifestFacts, Retention, links_due, next_expiry

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def test_tag_moves_and_deletes_make_repository_candidates_pushes_and_gc_do_not() -> None:
    moved = pb.Envelope(tag_updated=pb.TagUpdated(repository="ns/app", tag="v1", digest=D2, previous_digest=D1))
    new = pb.Envelope(tag_updated=pb.TagUpdated(repository="ns/app", tag="v1", digest=D2))
    same = pb.Envelope(tag_updated=pb.TagUpdated(repository="ns/app", tag="v1", digest=D2, previous_digest=D2))
    untagged = pb.Envelope(tag_deleted=pb.TagDeleted(repository="ns/app", tag="v1", digest=D1))
    deleted = pb.Envelope(manifest_deleted=pb.ManifestDeleted(repository="ns/lib", digest=D1))
    unlinked = pb.Envelope(blob_deleted=pb.BlobDeleted(repository="ns/lib", digest=D1))
    pushed = pb.Envelope(manifest_pushed=pb.ManifestPushed(repository="ns/app", digest=D1))
    by_gc = pb.Envelope(manifest_deleted=pb.ManifestDeleted(repository="ns/lib", digest=D1, actor="gc"))
    gc_blob = pb.Envelope(blob_deleted=pb.BlobDeleted(repository="ns/lib", digest=D1, actor="gc"))
    gc_untag = pb.Envelope(tag_deleted=pb.TagDeleted(repository="ns/app", tag="v1", digest=D1, actor="gc"))
    assert candidates_of(moved) == [Candidate(REPOSITORY, "ns/app")]
    assert candidates_of(untagged) == [Candidate(REPOSITORY, "ns/app")]
    assert candidates_of(deleted) == [Candidate(REPOSITORY, "ns/lib")]
    assert candidates_of(unlinked) == [Candidate(BLOB, D1)]
    for quiet in (new, same, pushed, by_gc, gc_blob, gc_untag, pb.Envelope()):
        assert candidates_of(quiet) == []
    assert Candidate(REPOSITORY, "ns/app").key == "r:ns/app" and Candidate(BLOB, D1).key == f"b:{D1}"


NOW = 100 * DAY
LIMITS = Limits(now=NOW, blob_grace_seconds=3600)


def test_next_expiry_is_the_first_untagged_age_or_orphan_grace_to_come() -> None:
    ms = [
        ManifestFacts("ns/app", "a", NOW - DAY),
        ManifestFacts("ns/app", "b", NOW - 3 * DAY),
        ManifestFacts("ns/app", "t", NOW - 9 * DAY, tagged=True),
        ManifestFacts("ns/app", "old", NOW - 30 * DAY),
    ]  # expired already: the run deletes it, no wait
    assert next_expiry(ms, {}, LIMITS) == NOW - 3 * DAY + 7 * DAY
    assert next_expiry(ms, {"ns/app": Retention(untagged_after_days=0)}, LIMITS) is None
    referrer = ManifestFacts("ns/app", "sig", NOW - 60, subject="gone")
    assert next_expiry([referrer], {}, LIMITS) == NOW - 60 + 3600
    grace = Limits(now=NOW, blob_grace_seconds=0, untagged_seconds=10)
    assert next_expiry([ManifestFacts("ns/app", "a", NOW - 5)], {}, grace) == NOW + 5


def test_links_due_when_the_newest_link_is_past_the_grace() -> None:
    assert links_due([LinkFacts("a", D1, 1, NOW - 7200)], LIMITS) is None
    assert links_due([LinkFacts("a", D1, 1, NOW - 7200), LinkFacts("b", D1, 1, NOW - 60)], LIMITS) == NOW - 60 + 3600
    assert links_due([], LIMITS) is None
