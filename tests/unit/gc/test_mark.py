"""What is garbage: untagged manifests by age and keep_last, kept indexes' children, referrers, blobs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.gc.mark import (
    DAY,
    Limits,
    LinkFacts,
    ManifestFacts,
    Retention,
    linked_since,
    plan_blobs,
    plan_manifests,
    referenced_blobs,
    unlinked_garbage,
)

NOW = 100 * DAY
OLD = NOW - 30 * DAY
NEW = NOW - 60.0
LIMITS = Limits(now=NOW, blob_grace_seconds=3600)


def m(digest: str, *, created: float = OLD, refs: tuple[str, ...] = (), subject: str | None = None,
      tagged: bool = False, repo: str = "ns/app") -> ManifestFacts:
    return ManifestFacts(repo, digest, created, refs, subject, tagged)


def deleted(manifests: list[ManifestFacts], **retention: int) -> list[str]:
    plan = plan_manifests(manifests, {"ns/app": Retention(**retention)} if retention else {}, LIMITS)
    return [x.digest for x in plan.delete]


def test_old_untagged_manifest_is_garbage_young_or_tagged_is_not() -> None:
    assert deleted([m("old"), m("young", created=NEW), m("tagged", tagged=True)]) == ["old"]


def test_untagged_after_days_zero_keeps_untagged_forever() -> None:
    assert deleted([m("old")], untagged_after_days=0) == []


def test_untagged_after_days_from_the_policy() -> None:
    assert deleted([m("a", created=NOW - 2 * DAY)], untagged_after_days=3) == []
    assert deleted([m("a", created=NOW - 4 * DAY)], untagged_after_days=3) == ["a"]


def test_keep_last_keeps_the_newest_untagged() -> None:
    ms = [m("a", created=OLD), m("b", created=OLD + 1), m("c", created=OLD + 2)]
    assert sorted(deleted(ms, keep_last=2)) == ["a"]


def test_children_of_a_kept_index_are_kept_of_a_garbage_index_are_not() -> None:
    kept = [m("index", tagged=True, refs=("child1", "child2")), m("child1", refs=("layer",)), m("child2")]
    assert deleted(kept) == []
    garbage = [m("index", refs=("child1",)), m("child1", refs=("layer",))]
    assert deleted(garbage) == ["index", "child1"]  # the index first: no crash leaves it dangling


def test_nested_index_children_are_kept() -> None:
    ms = [m("top", tagged=True, refs=("mid",)), m("mid", refs=("leaf",)), m("leaf")]
    assert deleted(ms) == []


def test_referrers_of_a_kept_image_are_kept_even_untagged_and_old() -> None:
    ms = [m("image", tagged=True), m("sig", subject="image"), m("sig-of-sig", subject="sig")]
    assert deleted(ms) == []


def test_referrers_of_garbage_go_with_it_first() -> None:
    ms = [m("image"), m("sbom", subject="image"), m("sig", subject="sbom")]
    assert deleted(ms) == ["sig", "sbom", "image"]


def test_the_base_model_of_a_kept_adapter_or_quantization_is_kept() -> None:
    """Models name their base as `subject`: a kept (tagged) adapter keeps its untagged, old base, and the base
    keeps its other referrers (a quantization of it, its signature)."""
    ms = [m("base", refs=("weights",)), m("adapter", subject="base", tagged=True), m("q4", subject="base"),
          m("sig", subject="base"), m("other-old")]
    assert deleted(ms) == ["other-old"]
    assert deleted([m("base"), m("adapter", subject="base")]) == ["adapter", "base"]  # neither kept


def test_orphan_referrer_waits_for_the_grace_period() -> None:
    assert deleted([m("sig", subject="missing", created=NEW)]) == []
    assert deleted([m("sig", subject="missing", created=OLD)]) == ["sig"]


def test_a_run_grace_replaces_the_untagged_age() -> None:
    plan = plan_manifests([m("young", created=NEW)], {}, Limits(now=NOW, blob_grace_seconds=0, untagged_seconds=0))
    assert [x.digest for x in plan.delete] == ["young"]


def test_repositories_are_separate() -> None:
    ms = [m("x", tagged=True, repo="a/one"), m("x", repo="a/two")]
    plan = plan_manifests(ms, {}, LIMITS)
    assert [(x.repository, x.digest) for x in plan.delete] == [("a/two", "x")]


def test_blob_referenced_by_a_kept_manifest_anywhere_is_kept() -> None:
    ms = [m("img", tagged=True, refs=("b1",), repo="a/one")]
    links = [LinkFacts("a/one", "b1", 10, OLD), LinkFacts("a/two", "b1", 10, OLD), LinkFacts("a/two", "b2", 5, OLD)]
    candidates = plan_blobs(links, referenced_blobs(ms, set()), LIMITS)
    assert [(c.digest, [x.repository for x in c.links]) for c in candidates] == [("b2", ["a/two"])]


def test_blob_of_a_deleted_manifest_is_garbage() -> None:
    ms = [m("img", refs=("b1",))]
    plan = plan_manifests(ms, {}, LIMITS)
    gone = {(x.repository, x.digest) for x in plan.delete}
    assert [c.digest for c in plan_blobs([LinkFacts("ns/app", "b1", 1, OLD)], referenced_blobs(ms, gone),
                                         LIMITS)] == ["b1"]


def test_a_young_link_anywhere_keeps_the_blob() -> None:
    links = [LinkFacts("a/one", "b", 1, OLD), LinkFacts("a/two", "b", 1, NEW), LinkFacts("a/three", "b", 1, OLD)]
    assert plan_blobs(links, set(), LIMITS) == []


def test_a_link_the_snapshot_did_not_read_keeps_the_blob_a_link_gone_since_does_not() -> None:
    read = [LinkFacts("a/one", "b", 1, OLD), LinkFacts("a/two", "b", 1, OLD + 1)]
    assert not linked_since(read, read)
    assert not linked_since(read, read[:1])  # deleted meanwhile (a repository delete): still garbage
    assert not linked_since(read, [])
    assert linked_since(read, [*read, LinkFacts("a/three", "b", 1, OLD)])  # mounted into another repository
    assert linked_since(read, [read[0], LinkFacts("a/two", "b", 1, NEW)])  # pushed again


def test_unlinked_bytes_age_from_first_sight() -> None:
    delete, first = unlinked_garbage([("a", 1), ("b", 2), ("c", 3)], {"c"}, {"b": NOW - 7200}, LIMITS)
    assert delete == [("b", 2)] and first == ["a"]
    delete, first = unlinked_garbage([("a", 1)], set(), {}, Limits(now=NOW, blob_grace_seconds=0))
    assert delete == [("a", 1)] and first == ["a"]


_digests = st.sampled_from([f"d{i}" for i in range(12)])


@st.composite
def _graphs(draw: st.DrawFn) -> list[ManifestFacts]:
    names = draw(st.lists(_digests, unique=True, min_size=1, max_size=12))
    out = []
    for i, name in enumerate(names):
        earlier = names[:i]  # references point to earlier manifests only: content addressing makes it a DAG
        refs = tuple(draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True))) if earlier else ()
        subject = draw(st.sampled_from([None, *earlier])) if earlier else None
        out.append(m(name, refs=refs, subject=subject, tagged=draw(st.booleans()),
                     created=draw(st.sampled_from([OLD, NEW]))))
    return out


@settings(max_examples=300, deadline=None)
@given(_graphs(), st.integers(min_value=0, max_value=3))
def test_nothing_kept_ever_references_something_deleted(ms: list[ManifestFacts], keep_last: int) -> None:
    plan = plan_manifests(ms, {"ns/app": Retention(keep_last=keep_last)}, LIMITS)
    gone = {x.digest for x in plan.delete}
    for x in ms:
        if x.digest in gone:
            assert not x.tagged
            continue
        assert not gone & set(x.references), "a kept index lost a child"
        assert x.subject not in gone, "a kept referrer (an adapter) lost its subject (its base model)"
    # Every referrer of a kept manifest is kept.
    for x in ms:
        if x.subject and x.subject not in gone and any(y.digest == x.subject for y in ms):
            assert x.digest not in gone
    # Parents come before children in the deletion order.
    order = [x.digest for x in plan.delete]
    for x in plan.delete:
        for child in (*x.references, *([x.subject] if x.subject else [])):
            if child in order:
                assert order.index(x.digest) < order.index(child)
