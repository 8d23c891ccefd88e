"""Helpers of the identity-and-access tests (no tests here): credentials, tokens, a management client,
and OpenAPI validation of every management response the tests see."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from aiohttp import web
from aiohttp.test_utils import TestClient
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from services.core.auth.apikeys import generate_key
from services.distribution.management import openapi_document
from tests.integration.conftest import Assembly


def admin_key(a: Assembly) -> str:
    key = a.c.settings.auth.bootstrap_admin_key
    assert key is not None
    return key.get_secret_value()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# OpenAPI validation of every management response the tests see

_DOC = openapi_document()
_REGISTRY: Registry[Any] = Registry().with_resource("urn:hzr", DRAFT202012.create_resource(_DOC))


def _template_regex(template: str) -> re.Pattern[str]:
    """{repository} and {grant} may hold slashes (they are routed as {name:.+}); other parameters may not."""
    out = ""
    for part in re.split(r"(\{[^}]+\})", template):
        if part.startswith("{"):
            out += ".+" if part in ("{repository}", "{grant}") else "[^/]+"
        else:
            out += re.escape(part)
    return re.compile(out)


def _operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The documented operation for a concrete path (template match, fixed segments first)."""
    concrete = path.split("?")[0].rstrip("/")
    candidates = []
    for template, item in _DOC["paths"].items():
        if method.lower() in item and _template_regex(template).fullmatch(concrete):
            candidates.append(template)
    assert candidates, f"{method} {path} is not documented"
    # The first in the document's order, which is the route table's: aiohttp matches routes in the order
    # they were added (/users/{user} before /{namespace}/permissions, .../policy before the bare name).
    template = candidates[0]
    return template, _DOC["paths"][template][method.lower()]


def check_documented(method: str, path: str, status: int, body: Any) -> None:
    """Assert the response status is documented for the operation and the body matches its schema."""
    template, op = _operation(method, path)
    responses = op["responses"]
    assert str(status) in responses, f"{method} {template} answered undocumented status {status}: {body}"
    content = responses[str(status)].get("content", {}).get("application/json")
    if content is None or "schema" not in content:
        return
    schema = {"$ref": "urn:hzr" + content["schema"]["$ref"]}
    validator = jsonschema.Draft202012Validator(schema, registry=_REGISTRY,
                                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(body), key=lambda e: e.path)
    assert not errors, f"{method} {template} {status}: {errors[0].message} in {json.dumps(body)[:500]}"


@dataclass
class Api:
    """Calls the management API as one caller and checks every answer against the OpenAPI document."""

    client: TestClient[web.Request, web.Application]
    headers: dict[str, str]
    seen: list[tuple[str, str, int]] = field(default_factory=list)

    async def call(self, method: str, path: str, *, json_body: Any = None, expect: int | None = None,
                   raw: bytes | None = None) -> Any:
        kwargs: dict[str, Any] = {"headers": self.headers}
        if json_body is not None:
            kwargs["json"] = json_body
        if raw is not None:
            kwargs["data"] = raw
        resp = await self.client.request(method, path, **kwargs)
        text = await resp.text()
        body = json.loads(text) if text and resp.content_type == "application/json" else None
        assert resp.status < 500, f"{method} {path}: {resp.status} {text[:300]}"
        if path.startswith("/v1/registry/") and not path.startswith("/v1/registry/openapi.json"):
            check_documented(method, path, resp.status, body)
        self.seen.append((method, path, resp.status))
        if expect is not None:
            assert resp.status == expect, f"{method} {path}: {resp.status} {text[:300]}"
        return body


async def new_user(api: Api, name: str, **extra: Any) -> str:
    """Create a user with one API key; returns the key."""
    await api.call("POST", "/v1/registry/users", json_body={"name": name, **extra}, expect=201)
    created = await api.call("POST", f"/v1/registry/users/{name}/keys", json_body={"name": "test"}, expect=201)
    return str(created["key"])


async def grant(api: Api, namespace: str, role: str, *, user: str | None = None, team: str | None = None,
                repository: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"role": role, **({"user": user} if user else {}), **({"team": team} if team else {})}
    if repository:
        body["repository"] = repository
    result: dict[str, Any] = await api.call("POST", f"/v1/registry/{namespace}/permissions", json_body=body,
                                            expect=201)
    return result


async def token_for(client: TestClient[web.Request, web.Application], key: str, *scopes: str,
                    user: str = "hanzo") -> str:
    resp = await client.get("/token", params=[("service", "hanzo-registry"), *(("scope", s) for s in scopes)],
                            headers=basic(user, key))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["token"])


def new_key() -> str:
    return generate_key().key
