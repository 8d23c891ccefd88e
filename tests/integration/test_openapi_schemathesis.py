"""Schemathesis drives the management API from its own OpenAPI document against a real registry
process: no request may produce a 5xx, and every response must match the document."""

from __future__ import annotations

import json
import re
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.registry_process import RegistryProcess, registry_process

ADMIN_KEY = f"hzr_{secrets.token_hex(6)}_{secrets.token_hex(32)}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    env = {"HANZO_REGISTRY_AUTH__MODE": "token", "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": ADMIN_KEY}
    with registry_process("embedded", Path(tmp_path_factory.mktemp("schemathesis")), env=env) as reg:
        yield reg


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_management_api_matches_its_document(registry: RegistryProcess, mode: GenerationMode) -> None:
    """Valid requests (positive) and requests that break the document (negative: wrong types, values out of
    bounds, unknown fields) both get documented answers, never a 5xx."""
    # Driven from a plain test: schemathesis' pytest plugin does not run under pytest 9 yet.
    api = schemathesis.openapi.from_url(f"http://{registry.addr}/v1/registry/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 10, "the document lists the management API"
    calls = 0

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def exercise(case: schemathesis.Case[Any]) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(
                base_url=f"http://{registry.addr}",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            )

        exercise()
    assert calls >= len(operations)


def _bodies() -> list[tuple[str, bytes]]:
    deep = b"[" * 60_000 + b"]" * 60_000
    return [
        ("a huge integer", b'{"expires_in_seconds": 1' + b"0" * 309 + b', "retention": {"keep_last": 1' + b"0" * 309
         + b"}}"),
        ("a huge float", b'{"expires_in_seconds": 1e309, "public": 1e309}'),
        ("NaN", b'{"expires_in_seconds": NaN, "public": NaN}'),
        ("more digits than Python reads", b'{"limit": 1' + b"0" * 5000 + b"}"),
        ("a deeply nested array", deep),
        ("a deeply nested field", b'{"name": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"),
        ("a deeply nested object", b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
    ]


def test_huge_numbers_and_deep_nesting_are_refused(registry: RegistryProcess) -> None:
    """Every operation with a JSON body answers 400 (never 5xx) to huge numbers and deeply nested JSON."""
    doc = json.loads(urllib.request.urlopen(f"http://{registry.addr}/v1/registry/openapi.json").read())
    tried = 0
    for template, item in doc["paths"].items():
        for method, op in item.items():
            if "application/json" not in op.get("requestBody", {}).get("content", {}):
                continue
            path = re.sub(r"\{[^}]+\}", lambda m: "ml/app" if m.group(0) == "{repository}" else "ml", template)
            for what, body in _bodies():
                request = urllib.request.Request(
                    f"http://{registry.addr}{path}", data=body, method=method.upper(),
                    headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
                try:
                    status = urllib.request.urlopen(request).status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                assert status == 400, f"{method.upper()} {template} with {what}: {status}"
                tried += 1
    assert tried >= 7 * 8


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "/v1/registry/teams", {"name": "nul", "description": "a\u0000b"}, "description"),
    ("PUT", "/v1/registry/namespaces/ml/policy", {"signing": {"identities": [
        {"issuer": "https://issuer.example", "subject": "dev\u0000@example.com"}]}}, "signing.identities.0.subject"),
])
def test_a_nul_character_in_text_is_a_400_naming_the_field(registry: RegistryProcess, method: str, path: str,
                                                          body: dict[str, Any], field: str) -> None:
    """U+0000 in a text field was a 500: every metadata store refuses it in the top-level fields it compares
    (docvalues.check_text). Found by the schemathesis run above."""
    request = urllib.request.Request(
        f"http://{registry.addr}{path}", data=json.dumps(body).encode(), method=method,
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 400
    error = json.loads(refused.value.read())["errors"][0]
    assert error["code"] == "INVALID_REQUEST" and "U+0000" in error["message"] and field in error["message"], error
