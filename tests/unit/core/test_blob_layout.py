"""The blob key layout, part sizing and the in-process digester cache."""

from __future__ import annotations

import pytest

from services.core.oci.digest import Digest, Digester
from services.core.storage.layout import (
    MIB,
    PART_BUDGET,
    S3_MAX_PARTS,
    DigesterCache,
    blob_digest,
    blob_key,
    is_upload_id,
    new_upload_id,
    part_size_for,
    segment_key,
    segment_offset,
    upload_id_of,
)

TB = 1024**4


def test_blob_key_round_trip() -> None:
    digest = Digest.of(b"hello")
    key = blob_key(digest)
    assert key == f"blobs/sha256/{digest.hex[:2]}/{digest.hex}"
    assert blob_digest(key) == digest


@pytest.mark.parametrize(
    "key",
    ["blobs/sha256/zz/abc", "blobs/md5/aa/aa", "uploads/x/data", "blobs/sha256/00/" + "1" * 64, "blobs"],
)
def test_blob_digest_rejects_foreign_keys(key: str) -> None:
    assert blob_digest(key) is None


def test_upload_ids_are_url_safe_and_checked() -> None:
    upload = new_upload_id()
    assert is_upload_id(upload) and upload != new_upload_id()
    for bad in ("../../etc", "a/b" * 10, "", "short", "x" * 200):
        assert not is_upload_id(bad)
    assert upload_id_of(f"uploads/{upload}/seg/{0:020d}") == upload
    assert upload_id_of("blobs/sha256/aa/aa") is None


def test_segment_keys_sort_by_offset() -> None:
    upload = new_upload_id()
    offsets = [0, 7, 5 * MIB, 10**12, 3]
    keys = sorted(segment_key(upload, o) for o in offsets)
    assert [segment_offset(k) for k in keys] == sorted(offsets)
    assert segment_offset(f"uploads/{upload}/started") is None


@pytest.mark.parametrize("size", [0, 1, 16 * MIB, 100 * 1024**3, TB, 5 * TB])
def test_part_size_keeps_parts_within_budget(size: int) -> None:
    part = part_size_for(size, minimum=16 * MIB)
    assert part >= 16 * MIB and part % MIB == 0
    assert -(-size // part) <= PART_BUDGET < S3_MAX_PARTS


def test_part_size_grows_for_a_terabyte() -> None:
    assert part_size_for(TB, minimum=16 * MIB) == 117 * MIB
    assert part_size_for(TB // 2, minimum=5 * MIB) == 59 * MIB
    assert part_size_for(10 * MIB, minimum=5 * MIB) == 5 * MIB


def test_digester_cache_matches_size_and_algorithm() -> None:
    cache = DigesterCache(capacity=2)
    digester = Digester()
    digester.update(b"abc")
    cache.put("u1", digester)
    assert cache.take("u1", size=4) is None  # stale entries are dropped, never used
    cache.put("u1", digester)
    assert cache.take("u1", size=3, algorithm="sha512") is None
    cache.put("u1", digester)
    assert cache.take("u1", size=3) is digester
    assert cache.take("u1", size=3) is None  # take removes: no two writers share a hash object


def test_digester_cache_is_bounded() -> None:
    cache = DigesterCache(capacity=2)
    for name in ("a", "b", "c"):
        cache.put(name, Digester())
    assert cache.take("a", size=0) is None
    assert cache.take("b", size=0) is not None and cache.take("c", size=0) is not None
