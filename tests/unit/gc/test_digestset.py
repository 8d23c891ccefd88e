"""The compact digest set: exact membership for sha256 digests and any other text, in any order of adding."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from services.gc import digestset
from services.gc.digestset import DigestSet, DigestSetBuilder


def _sha(n: int) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


digests = st.one_of(
    st.integers(0, 300).map(_sha),
    st.text(max_size=20),
    st.integers(0, 50).map(lambda n: "sha512:" + hashlib.sha512(str(n).encode()).hexdigest()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(digests, max_size=200), st.lists(digests, max_size=50), st.integers(1, 40))
def test_membership_is_exact_whatever_the_chunking(added: list[str], probes: list[str], chunk: int) -> None:
    old = digestset._CHUNK
    digestset._CHUNK = chunk
    try:
        builder = DigestSetBuilder()
        builder.update(added)
        built = builder.build()
    finally:
        digestset._CHUNK = old
    assert len(built) == len({digestset.key_of(d) for d in added})
    for d in [*added, *probes]:
        assert (d in built) == (d in set(added))
    assert list(built) == sorted(built)


def test_thirty_two_bytes_a_digest() -> None:
    builder = DigestSetBuilder()
    builder.update(_sha(n) for n in range(10_000))
    built = builder.build()
    assert built.nbytes == 32 * 10_000 and _sha(9_999) in built and _sha(10_000) not in built
    assert "sha256:" + "z" * 64 not in DigestSet() and 5 not in built


def test_a_digest_text_never_collides_with_the_digest_of_that_text() -> None:
    # A blob whose bytes are "9" has digest _sha(9); the text "9" must not be keyed like it (a false
    # membership would only keep garbage, but the set promises exactness).
    builder = DigestSetBuilder()
    builder.update([_sha(9)])
    built = builder.build()
    assert "9" not in built and _sha(9) in built
