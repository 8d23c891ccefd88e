"""Print the configuration reference (every setting, its env var, its default) as a Markdown table.

`python scripts/config_reference.py --check README.md` fails when the README's table is stale.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from readme_section import run  # a sibling: these scripts run as files

from services.core.settings import Settings


def _models(annotation: Any) -> list[type[BaseModel]]:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _models(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [m for a in get_args(annotation) for m in _models(a)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return ""
        return f"`{value!r}`" if not isinstance(value, list) or len(repr(value)) < 60 else "(see settings.py)"
    value = field.default
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if hasattr(value, "get_secret_value"):
        return "`(secret)`" if value.get_secret_value() else "empty"
    return f"`{value}`"


def rows(model: type[BaseModel], prefix: str = "", note: str = "") -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _models(field.annotation)
        if nested:
            kinds = [get_args(sub.model_fields["kind"].annotation)[0] for sub in nested if "kind" in sub.model_fields]
            if len(nested) > 1:
                env = "HANZO_REGISTRY_" + f"{path}.kind".upper().replace(".", "__")
                choices = " or ".join(f"`{k}`" for k in kinds)
                out.append(f"| `{path}.kind` | `{env}` | `{kinds[0]}` | backend: {choices} |")
            for sub, kind in zip(nested, kinds or [None] * len(nested), strict=False):
                sub_note = f"with `{path}.kind: {kind}`" if len(nested) > 1 else ""
                out.extend(r for r in rows(sub, f"{path}.", sub_note) if not r.startswith(f"| `{path}.kind`"))
            continue
        env = "HANZO_REGISTRY_" + path.upper().replace(".", "__")
        desc = (field.description or "").replace("|", "\\|")
        if note:
            desc = f"{desc} ({note})" if desc else note
        out.append(f"| `{path}` | `{env}` | {_default(field)} | {desc} |")
    return list(dict.fromkeys(out))


def table() -> str:
    header = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    return "\n".join([*header, *rows(Settings)])


def main(argv: list[str]) -> int:
    return run(argv, section="config-reference", script="scripts/config_reference.py", table=table)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
