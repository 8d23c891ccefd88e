"""Repository names, tags and references."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.errors import DigestInvalidError, NameInvalidError, TagInvalidError
from services.core.oci.digest import Digest
from services.core.oci.names import (
    MAX_NAME_LENGTH,
    RepositoryName,
    Tag,
    is_valid_tag,
    parse_reference,
)

_alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_separator = st.sampled_from([".", "_", "__", "-", "--", "---"])
_component = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    _alnum,
    st.lists(st.tuples(_separator, _alnum), max_size=4),
)
valid_names = (
    st.lists(_component, min_size=1, max_size=6).map("/".join).filter(lambda n: len(n) <= MAX_NAME_LENGTH)
)


@given(valid_names)
def test_names_generated_from_the_grammar_always_parse(name: str) -> None:
    parsed = RepositoryName(name)
    assert str(parsed) == name
    assert parsed.namespace == name.split("/")[0]
    assert "/".join(parsed.components) == name


@given(st.text(), st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), st.text())
def test_names_with_uppercase_never_parse(prefix: str, upper: str, suffix: str) -> None:
    with pytest.raises(NameInvalidError) as exc:
        RepositoryName(prefix + upper + suffix)
    assert exc.value.code == "NAME_INVALID"


@given(valid_names, st.sampled_from("ABCXYZ"))
def test_uppercase_message_says_lowercase(name: str, upper: str) -> None:
    with pytest.raises(NameInvalidError, match="lowercase"):
        RepositoryName(name + upper)


@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_raises_name_invalid(text: str) -> None:
    try:
        RepositoryName(text)
    except NameInvalidError as e:
        assert e.code == "NAME_INVALID"
        assert e.message


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "must not be empty"),
        ("a" * 256, "256 characters; at most 255"),
        ("Library/ubuntu", "uppercase"),
        ("library//ubuntu", "empty path component"),
        ("/library", "empty path component"),
        ("library/", "empty path component"),
        ("a..b", "invalid separator"),
        ("a._b", "invalid separator"),
        ("a___b", "invalid separator"),
        (".abc", "must start and end"),
        ("abc-", "must start and end"),
        ("a b", "invalid characters ' '"),
        ("café", "invalid characters 'é'"),
        ("a:b", "invalid characters ':'"),
    ],
)
def test_invalid_names_explain_what_is_wrong(name: str, fragment: str) -> None:
    with pytest.raises(NameInvalidError) as exc:
        RepositoryName(name)
    assert fragment in exc.value.message
    assert exc.value.code == "NAME_INVALID"
    assert exc.value.status == 400


def test_long_names_are_truncated_in_messages() -> None:
    with pytest.raises(NameInvalidError) as exc:
        RepositoryName("A" * 200)
    assert "..." in exc.value.message
    assert len(exc.value.message) < 300


def test_name_of_wrong_type_is_rejected() -> None:
    with pytest.raises(NameInvalidError, match="must be a string"):
        RepositoryName(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["a", "library/ubuntu", "a.b_c__d-e---f/g0", "x" * 255, "my-org/ml/models/bert.v2"]
)
def test_valid_names(name: str) -> None:
    assert RepositoryName.parse(name).value == name


def test_name_value_semantics() -> None:
    assert RepositoryName("a/b") == RepositoryName("a/b")
    assert hash(RepositoryName("a/b")) == hash(RepositoryName("a/b"))
    assert RepositoryName("a") < RepositoryName("b")
    assert RepositoryName("team/app").namespace == "team"
    assert RepositoryName("app").namespace == "app"


valid_tags = st.from_regex(r"\A[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")


@given(valid_tags)
def test_tags_from_the_grammar_parse(text: str) -> None:
    assert Tag(text).value == text
    assert str(Tag.parse(text)) == text
    assert is_valid_tag(text)
    assert parse_reference(text) == Tag(text)


@given(st.text(max_size=200))
def test_tag_validity_agrees_with_construction(text: str) -> None:
    if is_valid_tag(text):
        assert Tag(text).value == text
    else:
        with pytest.raises(TagInvalidError) as exc:
            Tag(text)
        assert exc.value.code == "TAG_INVALID"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "must not be empty"),
        ("a" * 129, "129 characters; at most 128"),
        (".hidden", "must not start with '.' or '-'"),
        ("-x", "must not start with '.' or '-'"),
        ("v1+build", "invalid characters '+'"),
        ("a/b", "invalid characters '/'"),
        ("tag é", "invalid characters ' é'"),
    ],
)
def test_invalid_tags_explain_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(TagInvalidError) as exc:
        Tag(text)
    assert fragment in exc.value.message
    assert exc.value.code == "TAG_INVALID"


def test_tag_of_wrong_type_is_rejected() -> None:
    with pytest.raises(TagInvalidError, match="must be a string"):
        Tag(None)  # type: ignore[arg-type]


def test_max_length_tag_is_valid() -> None:
    assert is_valid_tag("a" * 128)
    assert not is_valid_tag("a" * 129)


@given(st.binary())
def test_digest_references_round_trip(data: bytes) -> None:
    digest = Digest.of(data)
    assert parse_reference(str(digest)) == digest
    assert Digest.parse(str(digest)) == digest


def test_reference_with_colon_is_a_digest() -> None:
    with pytest.raises(DigestInvalidError) as exc:
        parse_reference("sha256:totallywrong")
    assert exc.value.code == "DIGEST_INVALID"


def test_reference_without_colon_is_a_tag() -> None:
    with pytest.raises(TagInvalidError):
        parse_reference(".INVALID_MANIFEST_NAME")


def test_a_digest_with_a_trailing_newline_is_invalid() -> None:
    digest = str(Digest.of(b"x"))
    for text in (digest + "\n", digest.replace("sha256:", "sha256\n:"), "\n" + digest):
        with pytest.raises(DigestInvalidError):
            Digest.parse(text)
