"""OSV records from an upload: one JSON record, a JSON array of records, or an OSV export zip (`all.zip`,
one `<id>.json` per record). Every size is bounded; a record is checked for the fields matching needs."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

MAX_RECORD_BYTES = 4 * 1024 * 1024
MAX_RECORDS = 2_000_000
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class OsvInvalidError(ValueError):
    """An upload or record that cannot be imported; the message names the record or entry."""


def _check(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise OsvInvalidError(f"{where}: an OSV record is a JSON object")
    rid = record.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise OsvInvalidError(f"{where}: `id` is missing or not an OSV id")
    modified = record.get("modified")
    if not isinstance(modified, str) or not modified:
        raise OsvInvalidError(f"{where} ({rid}): `modified` is required")
    affected = record.get("affected", [])
    if not isinstance(affected, list):
        raise OsvInvalidError(f"{where} ({rid}): `affected` is a list")
    for a in affected:
        pkg = a.get("package") if isinstance(a, dict) else None
        if not isinstance(pkg, dict) or not isinstance(pkg.get("name"), str) \
                or not isinstance(pkg.get("ecosystem"), str):
            raise OsvInvalidError(f"{where} ({rid}): each `affected` entry needs package.ecosystem and package.name")
    return record


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise OsvInvalidError(f"{where}: not JSON ({str(exc)[:100]})") from None


def records(body: bytes, *, zip_body: bool | None = None) -> Iterator[dict[str, Any]]:
    """The records of an upload (zip detected from its bytes unless told). OsvInvalidError on the first bad one."""
    if zip_body is None:
        zip_body = body[:4] == b"PK\x03\x04"
    if zip_body:
        yield from _zip_records(body)
        return
    doc = _json(body, "body")
    items = doc if isinstance(doc, list) else [doc]
    if len(items) > MAX_RECORDS:
        raise OsvInvalidError(f"more than {MAX_RECORDS} records")
    for i, item in enumerate(items):
        yield _check(item, f"record {i}")


def _zip_records(body: bytes) -> Iterator[dict[str, Any]]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise OsvInvalidError(f"not a zip archive ({exc})") from None
    with zf:
        infos = [i for i in zf.infolist() if i.filename.endswith(".json") and not i.is_dir()]
        if len(infos) > MAX_RECORDS:
            raise OsvInvalidError(f"more than {MAX_RECORDS} records")
        for info in infos:
            where = f"entry {info.filename[:200]!r}"
            if info.file_size > MAX_RECORD_BYTES:
                raise OsvInvalidError(f"{where}: larger than {MAX_RECORD_BYTES} bytes")
            with zf.open(info) as f:
                data = f.read(MAX_RECORD_BYTES + 1)
            if len(data) > MAX_RECORD_BYTES:
                raise OsvInvalidError(f"{where}: larger than {MAX_RECORD_BYTES} bytes")
            yield _check(_json(data, where), where)


def ecosystems(record: dict[str, Any]) -> list[str]:
    """The ecosystems a record affects ("Debian:12", "PyPI"), sorted, without duplicates."""
    return sorted({a["package"]["ecosystem"] for a in record.get("affected", [])})
