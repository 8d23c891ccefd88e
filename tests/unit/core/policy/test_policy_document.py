"""PolicyDocument: the schema, its bounds, strict JSON and limited YAML, and errors that name the field."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.core.policy.document import (
    MAX_DOCUMENT_BYTES,
    PolicyDocument,
    PolicyInvalidError,
    parse_data,
    parse_json,
    parse_yaml,
    to_yaml,
)

PRODUCT_EXAMPLE = b"""
scan:      {enabled: true, severity_gate: high, ignore: [CVE-2024-0000], unscanned: allow}
signing:   {verify_signature: false, keys: [], identities: [], unsigned: block}
tags:      {immutable: ["v*"], mutable: [latest]}
retention: {untagged_after_days: 7, keep_last: 0}
"""


def _pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _field_error(raw: bytes, *, yaml_body: bool = False) -> str:
    with pytest.raises(PolicyInvalidError) as info:
        (parse_yaml if yaml_body else parse_json)(raw)
    return str(info.value)


def test_the_products_example_parses_and_round_trips() -> None:
    doc = parse_yaml(PRODUCT_EXAMPLE)
    assert doc.scan.severity_gate == "high" and doc.scan.ignore == ["CVE-2024-0000"]
    assert doc.tags.immutable == ["v*"]
    assert parse_yaml(to_yaml(doc.dump()).encode()) == doc
    assert parse_json(b'{"tags": {"mutable": ["latest"]}}').dump() == {"tags": {"mutable": ["latest"]}}


def test_a_document_remembers_only_what_it_sets() -> None:
    doc = parse_json(b'{"scan": {"severity_gate": "critical"}}')
    assert doc.dump() == {"scan": {"severity_gate": "critical"}}
    assert doc.dump_all()["retention"] == {"untagged_after_days": 7, "keep_last": 0}
    assert parse_json(b"").dump() == {} and parse_yaml(b"").dump() == {}


def test_signing_keys_must_be_pem_public_keys() -> None:
    pem = _pem()
    doc = parse_data({"signing": {"verify_signature": True, "keys": [pem],
                                  "identities": [{"issuer": "https://accounts.example", "subject": "ci@example"}]}})
    assert doc.signing.keys == [pem]
    with pytest.raises(PolicyInvalidError, match=r"field 'signing.keys.0': not a PEM public key"):
        parse_data({"signing": {"keys": ["-----BEGIN PUBLIC KEY-----\nAA"]}})
    with pytest.raises(PolicyInvalidError, match=r"signing.identities.0.subject"):
        parse_data({"signing": {"identities": [{"issuer": "x"}]}})


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"scan": {"severity_gate": "severe"}}', "scan.severity_gate"),
        (b'{"scan": {"enabled": "true"}}', "scan.enabled"),  # strict: no string for a boolean
        (b'{"scan": {"enabled": 1}}', "scan.enabled"),
        (b'{"retention": {"keep_last": true}}', "retention.keep_last"),
        (b'{"retention": {"untagged_after_days": -1}}', "retention.untagged_after_days"),
        (b'{"retention": {"untagged_after_days": 1' + b"0" * 309 + b"}}", "retention.untagged_after_days"),
        (b'{"retention": {"untagged_after_days": 1e309}}', "retention.untagged_after_days"),
        (b'{"retention": {"keep_last": NaN}}', "retention.keep_last"),
        (b'{"retention": {"keep_last": 1.5}}', "retention.keep_last"),
        (b'{"scanning": {}}', "scanning"),
        (b'{"scan": {"gate": "high"}}', "scan.gate"),
        (b'{"scan": {"ignore": ["not a cve id"]}}', "scan.ignore.0"),
        (b'{"scan": {"ignore": "CVE-1"}}', "scan.ignore"),
        (b'{"tags": {"immutable": ["v(1|2)+"]}}', "tags.immutable.0"),
        (b'{"tags": {"immutable": ["' + b"x" * 129 + b'"]}}', "tags.immutable.0"),
        (b'{"tags": {"mutable": [' + b",".join([b'"a"'] * 101) + b"]}}", "tags.mutable"),
        (b'{"signing": {"identities": [{"issuer": "i", "subject": "s", "extra": 1}]}}', "signing.identities.0.extra"),
    ],
)
def test_bad_values_name_their_field(raw: bytes, field: str) -> None:
    assert f"field {field!r}" in _field_error(raw)


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b'{"scan": ' + b"[" * 5000 + b"]" * 5000 + b"}", b"{", b"\xff\xfe", b"[]", b"null", b'"x"'],
)
def test_malformed_or_deep_json_is_refused(raw: bytes) -> None:
    _field_error(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"a: &x [1]\nb: *x\n",  # aliases: a YAML bomb expands exponentially
        b"scan: " + b"[" * 1000 + b"]" * 1000,
        b"scan: {enabled: yes",  # unterminated
        b"- a\n- b\n",  # not a mapping
        b"\xff",
        b"retention: {keep_last: 1" + b"0" * 5000 + b"}",  # beyond Python's int digit limit
        b"x" * (MAX_DOCUMENT_BYTES + 1),
        b"scan: {enabled: 'true'}",
        b"scan: !!python/object:os.system {}",
    ],
)
def test_bad_yaml_is_refused(raw: bytes) -> None:
    _field_error(raw, yaml_body=True)


def test_the_defaults_keep_todays_behaviour() -> None:
    doc = PolicyDocument()
    assert not doc.scan.enabled and doc.scan.severity_gate == "none" and doc.scan.unscanned == "allow"
    assert not doc.signing.verify_signature
    assert doc.tags.immutable == [] and doc.tags.mutable == []
