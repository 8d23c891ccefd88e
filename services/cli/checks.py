"""`hanzo-registry scan` and `verify`: an image's vulnerability report (the scanner's, through the management
API; a rescan on request) and its signatures as the signer verified them (through the signer API), with the
text each command prints."""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any, Final

from services.core.client import ImageReference, OciClient
from services.core.client.auth import repository_scope

POLL_SECONDS: Final = 1.0
UNFINISHED: Final = frozenset({"pending", "scanning"})
SEVERITIES: Final = ("critical", "high", "medium", "low", "unknown")


class NotVerifiedError(Exception):
    """No signature of the image verified (with the key asked for)."""


def _item(ref: ImageReference, what: str) -> str:
    reference = urllib.parse.quote(str(ref.reference), safe=":")
    return f"/v1/registry/{ref.repository.name}/{reference}/{what}"


async def _json(client: OciClient, ref: ImageReference, method: str, path: str, *, ok: tuple[int, ...] = (200,),
                push: bool = False) -> Any:
    repo = ref.repository
    actions = ("pull", "push") if push else ("pull",)
    async with client.transport.expect(repo.registry, method, path, ok=ok,
                                       scopes=(repository_scope(str(repo.name), *actions),),
                                       headers={"Accept": "application/json"}) as resp:
        return await resp.json(content_type=None)


async def scan(client: OciClient, ref: ImageReference, *, rescan: bool, wait: float) -> dict[str, Any]:
    """The report of `ref` (after queueing a rescan when asked), polled while pending or scanning, up to `wait`
    seconds; an unfinished report is returned as it is (its status says so)."""
    queued = None
    if rescan:
        queued = await _json(client, ref, "POST", _item(ref, "scan"), ok=(202,), push=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        report: dict[str, Any] = await _json(client, ref, "GET", _item(ref, "vulnerabilities"))
        if report.get("status") not in UNFINISHED or loop.time() >= deadline:
            if queued is not None:
                report["rescan"] = queued
            return report
        await asyncio.sleep(POLL_SECONDS)


def scan_text(report: dict[str, Any]) -> str:
    summary = report.get("summary") or {}
    lines = [
        f"{report.get('repository')}@{report.get('digest')}: {report.get('status')}"
        + (f" ({report['error']})" if report.get("error") else ""),
        "findings: " + ", ".join(f"{summary.get(s, 0)} {s}" for s in SEVERITIES),
    ]
    shown = [f for f in report.get("vulnerabilities") or [] if not f.get("ignored")]
    order = {s: i for i, s in enumerate(SEVERITIES)}
    for f in sorted(shown, key=lambda f: (order.get(f.get("severity", "unknown"), 9), f.get("id", ""))):
        fixed = f" (fixed in {f['fixed_version']})" if f.get("fixed_version") else ""
        lines.append(f"  {f.get('severity', 'unknown'):<8} {f.get('id')}  {f.get('package')} {f.get('version')}{fixed}")
    return "\n".join(lines)


async def _key_ids(client: OciClient, ref: ImageReference, key: str) -> set[str]:
    """The key ids `key` stands for: every version of a managed key (hanzo-kms://projects/NS/keys/NAME), or
    `key` itself (a key id: sha256 of the public key)."""
    prefix = "hanzo-kms://projects/"
    if "://" not in key:
        return {key.removeprefix("sha256:")}
    namespace, sep, name = key.removeprefix(prefix).partition("/keys/")
    if not key.startswith(prefix) or not sep or not namespace or not name or "/" in name:
        raise ValueError(f"{key!r} is not hanzo-kms://projects/<namespace>/keys/<name>")
    path = f"/v1/registry/namespaces/{urllib.parse.quote(namespace)}/keys/{urllib.parse.quote(name)}"
    found = await _json(client, ref, "GET", path)
    return {str(v.get("key_id", "")).removeprefix("sha256:") for v in found.get("versions") or []}


async def verify(client: OciClient, ref: ImageReference, *, key: str | None, wait: float = 30.0) -> dict[str, Any]:
    """The image's signatures as the signer concluded; `verified` is whether one verified (by `key` when given).
    Signatures the signer has not checked yet are waited for, up to `wait` seconds."""
    wanted = await _key_ids(client, ref, key) if key else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        answer: dict[str, Any] = await _json(client, ref, "GET", _item(ref, "signatures"))
        entries = answer.get("signatures") or []
        good = [e for e in entries if e.get("verified")
                and (wanted is None or str(e.get("key_id") or "").removeprefix("sha256:") in wanted)]
        pending = [e for e in entries if e.get("state") == "pending"]
        if good or not pending or loop.time() >= deadline:
            return {"reference": str(ref), "digest": answer.get("digest"), "verified": bool(good), "key": key,
                    "verified_by": [e.get("key_id") or e.get("identity") for e in good], "signatures": entries}
        await asyncio.sleep(POLL_SECONDS)


def verify_text(result: dict[str, Any]) -> str:
    lines = [f"{result['reference']} ({result.get('digest')}): "
             + ("verified" if result["verified"] else "NOT verified")]
    for e in result.get("signatures") or []:
        who = e.get("key_id") or e.get("identity") or "-"
        lines.append(f"  {e.get('state'):<8} {e.get('format'):<13} {who}  {e.get('reason', '')}")
    return "\n".join(lines)
