"""PolicyDocument: the `.hanzo/registry.yaml` schema (scan, signing, tags, retention), one pydantic model.

A document is stored per namespace and per repository and merged field by field (see merge.py). Which
fields a document *sets* matters: a field left out inherits from the level above, so a document remembers
its explicitly set fields (pydantic's `model_fields_set`, kept by `dump()` and `parse_*()`); the defaults
written here are the registry's built-in ones, the base under `policy.default` in the settings.

Every string, list and integer is bounded, unknown keys are refused, and YAML is read without aliases and
with a nesting limit (a namespace admin writes these; they must not be able to stall the registry).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import yaml
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

MAX_DOCUMENT_BYTES = 64 * 1024
MAX_DEPTH = 16
MAX_LIST = 100
MAX_PEM_BYTES = 16 * 1024
MAX_DAYS = 36500

Severity = Literal["none", "low", "medium", "high", "critical"]
SEVERITY_ORDER: tuple[str, ...] = ("none", "low", "medium", "high", "critical")
"""Gate levels, weakest first: a gate blocks a finding at or above its level; `none` blocks nothing."""

VulnerabilityId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
TagPattern = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_.*?\[\]!-]{1,128}$"),
]
"""A glob (fnmatch, case-sensitive) over tag names, e.g. `v*`, `release-?.*`, `latest`. Globs, not regular
expressions: a namespace admin's pattern is matched on every push, and a glob cannot backtrack
catastrophically."""


def _pem_public_key(value: str) -> str:
    try:
        load_pem_public_key(value.encode())
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    return value


PemPublicKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PEM_BYTES),
                         AfterValidator(_pem_public_key)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScanPolicy(_Part):
    enabled: bool = Field(False, description="Scan pushed manifests")
    severity_gate: Severity = Field(
        "none", description="Refuse pulls of manifests with an unignored finding at or above this severity"
    )
    ignore: list[VulnerabilityId] = Field(
        default_factory=list, max_length=1000, description="Vulnerability ids never counted (CVE-..., GHSA-...)"
    )
    unscanned: Literal["allow", "block"] = Field("allow", description="Pulls of a manifest before its first report")


class SigningIdentity(_Part):
    issuer: str = Field(min_length=1, max_length=1024, description="OIDC issuer of the signing certificate")
    subject: str = Field(min_length=1, max_length=1024, description="Subject (e-mail, URI) of the certificate")


class SigningPolicy(_Part):
    verify_signature: bool = Field(False, description="Require a verified signature to pull")
    keys: list[PemPublicKey] = Field(default_factory=list, max_length=MAX_LIST, description="Trusted PEM public keys")
    identities: list[SigningIdentity] = Field(
        default_factory=list, max_length=MAX_LIST, description="Trusted keyless identities"
    )
    unsigned: Literal["allow", "block"] = Field(
        "block", description="Pulls of an unsigned manifest when verify_signature is on"
    )


class TagPolicy(_Part):
    immutable: list[TagPattern] = Field(
        default_factory=list, max_length=MAX_LIST, description="Tag globs that may not move once set"
    )
    mutable: list[TagPattern] = Field(
        default_factory=list, max_length=MAX_LIST,
        description="Tag globs that may always move (wins over `immutable` and registry.tag_rules)",
    )


class RetentionPolicy(_Part):
    untagged_after_days: int = Field(
        7, ge=0, le=MAX_DAYS, description="GC deletes untagged manifests older than this (0: never)"
    )
    keep_last: int = Field(0, ge=0, le=100000, description="Untagged manifests GC always keeps, newest first")


class PolicyDocument(_Part):
    """A policy document. Fields left out inherit (see the module docstring and merge.py)."""

    scan: ScanPolicy = Field(default_factory=ScanPolicy)
    signing: SigningPolicy = Field(default_factory=SigningPolicy)
    tags: TagPolicy = Field(default_factory=TagPolicy)
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)

    def dump(self) -> dict[str, Any]:
        """The fields this document sets, as JSON-able data (what is stored, and what GET answers)."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude_unset=True)
        return data

    def dump_all(self) -> dict[str, Any]:
        """Every field, set or defaulted (an effective policy)."""
        data: dict[str, Any] = self.model_dump(mode="json")
        return data


class PolicyInvalidError(ValueError):
    """A document that cannot be stored; `problems` are (field, message) pairs, the field dotted."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"field {f!r}: {m}" if f else m for f, m in problems))


def problems_of(error: ValidationError) -> list[tuple[str, str]]:
    """(dotted field, message) of each error; the input value is never repeated (it may be anything)."""
    out: list[tuple[str, str]] = []
    for e in error.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "json_invalid":
            field, message = "", f"the body is not valid JSON ({message.removeprefix('Invalid JSON: ')})"
        out.append((field[:200], message[:300]))
    return out


def parse_json(raw: bytes) -> PolicyDocument:
    """A document from JSON (strict types). PolicyInvalidError names the bad fields."""
    _check_size(raw)
    try:
        return PolicyDocument.model_validate_json(raw or b"{}", strict=True)
    except ValidationError as exc:
        raise PolicyInvalidError(problems_of(exc)) from None


def parse_yaml(raw: bytes) -> PolicyDocument:
    """A document from YAML: safe types only, no aliases, nesting at most MAX_DEPTH (strict types)."""
    return parse_data(load_yaml(raw))


def parse_data(data: Any) -> PolicyDocument:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyInvalidError([("", "a policy document is a mapping")])
    try:
        return PolicyDocument.model_validate(data, strict=True)
    except ValidationError as exc:
        raise PolicyInvalidError(problems_of(exc)) from None


def parse_stored(data: dict[str, Any]) -> PolicyDocument:
    """A stored document (written by this code; still validated, so a bad row cannot pass)."""
    return PolicyDocument.model_validate(data)


def _check_size(raw: bytes) -> None:
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise PolicyInvalidError([("", f"a policy document is limited to {MAX_DOCUMENT_BYTES} bytes")])


def load_yaml(raw: bytes) -> Any:
    """yaml.safe_load with limits: size, nesting depth, no aliases (an alias bomb expands exponentially
    when validated). PolicyInvalidError for anything else than one plain YAML document."""
    _check_size(raw)
    try:
        text = raw.decode("utf-8")
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise PolicyInvalidError([("", "YAML anchors and aliases are not accepted")])
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise PolicyInvalidError([("", f"the document is nested deeper than {MAX_DEPTH} levels")])
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        return yaml.safe_load(text)
    except PolicyInvalidError:
        raise
    except (UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PolicyInvalidError([("", f"the body is not valid YAML ({first[:200]})")]) from None


def to_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2)

