"""Schemathesis drives the management API from its own OpenAPI document against a real registry
process: no request may produce a 5xx, and every response must match the document."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
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


def test_management_api_matches_its_document(registry: RegistryProcess) -> None:
    # Driven from a plain test: schemathesis' pytest plugin does not run under pytest 9 yet.
    api = schemathesis.openapi.from_url(f"http://{registry.addr}/v1/registry/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10, "the document lists the management API"
    calls = 0

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def exercise(case: schemathesis.Case) -> None:
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
