"""Fuzzing kept as regression tests (issue 19): token and scope parsing on hostile input raise only their
typed errors (TokenInvalidError, ScopeInvalidError), including validly signed tokens whose claims have any
JSON shape."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.auth.scopes import ScopeInvalidError, access_from_claim, parse_resource_scope, parse_scopes
from services.core.auth.tokens import TokenInvalidError, key_id, new_signing_key, token_header, verify_token

NOW = time.time()
KEY = new_signing_key(now=NOW, active_seconds=3600, max_token_seconds=300)
KID = key_id(KEY.public_key())
PEM = KEY.private_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
_leaf = st.none() | st.booleans() | st.integers(min_value=-(1 << 80), max_value=1 << 80) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
_json = st.recursive(_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=20)


def verify(token: str) -> object:
    return verify_token(token, public_keys={KID: KEY.public_key()}, issuer="iss", audience="aud", now=NOW)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@given(st.text(max_size=200) | st.lists(st.text(alphabet="ABCxyz019-_=.", max_size=60), max_size=4).map(".".join))
def test_arbitrary_text_is_token_invalid(text: str) -> None:
    with contextlib.suppress(TokenInvalidError):
        token_header(text)
    with contextlib.suppress(TokenInvalidError):
        verify(text)


@given(st.dictionaries(st.text(max_size=5), _json, max_size=4), st.binary(max_size=60), st.binary(max_size=40))
def test_forged_headers_and_bodies_are_token_invalid(header: dict[str, Any], body: bytes, signature: bytes) -> None:
    for head in ({**header, "alg": "ES256", "kid": KID}, header):
        token = ".".join([b64(json.dumps(head).encode()), b64(body), b64(signature)])
        with contextlib.suppress(TokenInvalidError):
            verify(token)


@settings(max_examples=200)
@given(st.fixed_dictionaries(
    {"iss": st.just("iss") | _json, "aud": st.just("aud") | st.just(["aud"]) | _json,
     "sub": st.text(max_size=8) | _json, "jti": _json,
     "exp": st.just(NOW + 60) | _json, "nbf": st.just(NOW - 60) | _json, "iat": st.just(NOW - 60) | _json},
    optional={"access": _json | st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["repository", "registry"]) | _json, "name": st.text(max_size=8) | _json,
         "actions": st.lists(st.sampled_from(["pull", "push", "*", "delete"]) | _json, max_size=3) | _json}),
        max_size=3)},
))
def test_signed_tokens_with_any_claims_verify_or_are_token_invalid(claims: dict[str, Any]) -> None:
    token = jwt.PyJWS().encode(json.dumps(claims).encode(), PEM, algorithm="ES256", headers={"kid": KID})
    with contextlib.suppress(TokenInvalidError):
        verify(token)


@given(st.text(max_size=120) | st.builds(lambda *p: ":".join(p), st.text(max_size=15), st.text(max_size=30),
                                         st.text(alphabet="pushl,*de ", max_size=20)))
def test_scopes_parse_or_raise_scope_invalid(text: str) -> None:
    with contextlib.suppress(ScopeInvalidError):
        parse_resource_scope(text)
    with contextlib.suppress(ScopeInvalidError):
        parse_scopes([text, text])


@given(_json)
def test_access_claims_of_any_shape_parse_or_raise_scope_invalid(claim: Any) -> None:
    with contextlib.suppress(ScopeInvalidError):
        access_from_claim(claim)
