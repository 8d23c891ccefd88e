"""Fuzzing kept as regression tests (issue 19): the OCI parsers on hostile input raise only their typed
errors. Manifest/index documents with deep nesting, huge integers and descriptor fields of every JSON type;
digests, references and Content-Range headers of arbitrary text."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.errors import (
    DigestInvalidError,
    ManifestInvalidError,
    ManifestTooLargeError,
    NameInvalidError,
    RangeInvalidError,
    TagInvalidError,
)
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.oci.manifest import parse_manifest
from services.core.oci.names import RepositoryName, parse_reference
from services.core.oci.ranges import parse_content_range, parse_range_header

_huge = st.integers(min_value=-(1 << 200), max_value=1 << 200)
_leaf = st.none() | st.booleans() | _huge | st.floats(allow_nan=False) | st.text(max_size=12)
_json = st.recursive(_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=25)
_digest_text = st.one_of(
    st.just("sha256:" + "a" * 64), st.just("sha512:" + "b" * 128), st.text(max_size=80),
    st.builds(lambda a, h: f"{a}:{h}", st.sampled_from(["sha256", "sha512", "SHA256", "sha256+b64u", ""]),
              st.text(alphabet="0123456789abcdefABCDEF=-_", max_size=130)),
)
_descriptor = st.fixed_dictionaries(
    {"mediaType": st.sampled_from([mt.OCI_MANIFEST, mt.OCI_LAYER_TAR_GZIP, mt.OCI_CONFIG]) | _json,
     "digest": _digest_text | _json, "size": _huge | _json},
    optional={"annotations": _json | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
              "platform": _json | st.fixed_dictionaries({"architecture": _json, "os": _json}),
              "artifactType": _json, "urls": _json, "data": _json},
)


@settings(max_examples=300)
@given(st.fixed_dictionaries(
    {"schemaVersion": st.just(2) | _huge | _json,
     "mediaType": st.sampled_from([mt.OCI_MANIFEST, mt.OCI_INDEX]) | _json},
    optional={"config": _descriptor | _json, "layers": st.lists(_descriptor | _json, max_size=3) | _json,
              "manifests": st.lists(_descriptor | _json, max_size=3) | _json, "subject": _descriptor | _json,
              "annotations": _json, "artifactType": _json},
), st.sampled_from([None, mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST, "application/json"]))
def test_manifests_and_indexes_of_any_shape_raise_only_manifest_errors(doc: dict[str, Any], ctype: str | None) -> None:
    with contextlib.suppress(ManifestInvalidError, ManifestTooLargeError):
        parse_manifest(json.dumps(doc).encode(), ctype, max_bytes=1 << 20)


@given(st.integers(min_value=1, max_value=3000), st.sampled_from([mt.OCI_INDEX, mt.OCI_MANIFEST, None]))
def test_deeply_nested_bodies_raise_only_manifest_errors(depth: int, ctype: str | None) -> None:
    for body in (b'{"manifests":[' * depth + b"{}" + b"]}" * depth, b"[" * depth + b"]" * depth,
                 b'{"manifests":' * depth + b"{}" + b"}" * depth):
        with contextlib.suppress(ManifestInvalidError, ManifestTooLargeError):
            parse_manifest(body, ctype, max_bytes=1 << 20)


@given(st.binary(max_size=300), st.sampled_from([None, mt.OCI_INDEX, mt.OCI_MANIFEST]))
def test_json_ish_bytes_raise_only_manifest_errors(tail: bytes, ctype: str | None) -> None:
    for body in (b'{"schemaVersion":2,' + tail, b'{"schemaVersion":' + tail + b"}", tail.replace(b"\x00", b"{")):
        with contextlib.suppress(ManifestInvalidError, ManifestTooLargeError):
            parse_manifest(body, ctype, max_bytes=1 << 20)


@given(_digest_text)
def test_digests_parse_or_raise_digest_invalid(text: str) -> None:
    try:
        digest = Digest.parse(text)
    except DigestInvalidError:
        return
    assert Digest.parse(str(digest)) == digest


@given(st.text(max_size=300) | _digest_text)
def test_references_parse_or_raise_their_typed_errors(text: str) -> None:
    with contextlib.suppress(DigestInvalidError, TagInvalidError):
        parse_reference(text)


@given(st.text(max_size=300) | st.text(alphabet="abc/._-:", max_size=300))
def test_repository_names_parse_or_raise_name_invalid(text: str) -> None:
    with contextlib.suppress(NameInvalidError):
        RepositoryName.parse(text)


_range_text = st.text(max_size=60) | st.builds(
    lambda p, a, b: f"{p}{a}-{b}", st.sampled_from(["", "bytes ", "bytes=", " "]),
    st.integers(min_value=-5, max_value=1 << 70).map(str) | st.text(alphabet="0123456789 +-", max_size=25),
    st.integers(min_value=-5, max_value=1 << 70).map(str) | st.text(alphabet="0123456789 +-*/", max_size=25),
)


@given(_range_text)
def test_content_ranges_parse_or_raise_range_invalid(text: str) -> None:
    try:
        start, end = parse_content_range(text)
    except RangeInvalidError:
        return
    assert 0 <= start <= end


@given(st.integers(min_value=0, max_value=1 << 64), _range_text | _range_text.map(lambda t: "bytes=" + t))
def test_range_headers_parse_or_raise_range_invalid(size: int, text: str) -> None:
    try:
        parsed = parse_range_header(text, size)
    except RangeInvalidError:
        return
    assert parsed is None or 0 <= parsed.start <= parsed.end_inclusive < size
