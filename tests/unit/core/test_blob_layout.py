"""The blob key layout, part sizing and the in-process digester cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.oci.digest import Digest, Digester
from services.core.storage.layout import (
    MIB,
    S3_MAX_PART,
    S3_MAX_PARTS,
    S3_MIN_PART,
    DigesterCache,
    blob_digest,
    blob_key,
    data_key,
    is_upload_id,
    new_upload_id,
    part_size_for_number,
    pending_key,
    state_key,
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


def test_session_keys_stay_under_the_session() -> None:
    upload = new_upload_id()
    for key in (state_key(upload), data_key(upload), pending_key(upload, "abc123")):
        assert key.startswith(f"uploads/{upload}/") and upload_id_of(key) == upload


def _capacity(parts: int, minimum: int) -> int:
    return sum(part_size_for_number(n, minimum=minimum) for n in range(1, parts + 1))


@pytest.mark.parametrize("minimum", [S3_MIN_PART, 16 * MIB, 64 * MIB])
def test_part_size_grows_with_the_part_number(minimum: int) -> None:
    sizes = [part_size_for_number(n, minimum=minimum) for n in range(1, S3_MAX_PARTS + 1)]
    assert sizes[0] == sizes[39] == minimum and sizes[40] == minimum + MIB
    assert sizes == sorted(sizes) and all(s % MIB == 0 and S3_MIN_PART <= s <= S3_MAX_PART for s in sizes)


@pytest.mark.parametrize("minimum", [S3_MIN_PART, 16 * MIB])
def test_a_terabyte_fits_with_part_numbers_to_spare(minimum: int) -> None:
    # 1,000 of the 10,000 part numbers are left for ones wasted by failed or concurrent appends.
    assert _capacity(9_000, minimum) >= TB
    # Memory stays modest even then: the largest part of a 1 TiB blob is a few hundred MiB.
    assert part_size_for_number(9_000, minimum=minimum) <= 256 * MIB
    # And ordinary blobs keep the minimum: the first 40 parts (200 MiB at 5 MiB) do not grow.
    assert _capacity(40, minimum) == 40 * minimum


def test_part_size_is_capped() -> None:
    assert part_size_for_number(S3_MAX_PARTS, minimum=S3_MAX_PART - MIB) == S3_MAX_PART


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


def test_an_upload_id_with_a_trailing_newline_is_invalid() -> None:
    from services.core.storage.layout import is_upload_id, new_upload_id

    upload_id = new_upload_id()
    assert is_upload_id(upload_id)
    assert not is_upload_id(upload_id + "\n")


def test_new_blob_directories_are_synced_into_their_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.core.storage import fs

    synced: list[Path] = []
    real = fs._fsync_dir

    def spy(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(fs, "_fsync_dir", spy)
    fs._durable_mkdir(tmp_path / "blobs" / "sha256" / "ab")
    assert synced == [tmp_path, tmp_path / "blobs", tmp_path / "blobs" / "sha256"]
    synced.clear()
    fs._durable_mkdir(tmp_path / "blobs" / "sha256" / "ab")
    assert synced == [], "an existing directory needs nothing"
