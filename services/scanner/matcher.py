"""OSV matching: an in-memory index of the records by (ecosystem, package name), and the findings of an
inventory (ossf/osv-schema's evaluation: explicit `versions`, then each range's events in version order,
`introduced`/`fixed`/`last_affected`/`limit`; GIT ranges are ignored). Distro records (Debian, Ubuntu,
Alpine, RPM distros) name the source package, so distro packages match by source name and version.
Findings that are aliases of each other (CVE, GHSA, DSA ...) for the same package are one finding."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.scanner import versions as vs
from services.scanner.inventory.scan import Inventory, OsInfo, Package
from services.scanner.severity import ORDER, assess

_MAX_MEMO = 500_000


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    aliases: tuple[str, ...]
    package: str
    version: str
    ecosystem: str
    purl: str
    fixed_version: str | None
    severity: str
    cvss_score: float | None
    layer: str
    title: str = ""
    kind: str = "package"
    """`package` (OSV match) or `model` (dangerous model file)."""

    def to_doc(self) -> dict[str, Any]:
        # by hand, not dataclasses.asdict (a deep copy): re-matching writes thousands of these a second
        return {"id": self.id, "aliases": list(self.aliases), "package": self.package, "version": self.version,
                "ecosystem": self.ecosystem, "purl": self.purl, "fixed_version": self.fixed_version,
                "severity": self.severity, "cvss_score": self.cvss_score, "layer": self.layer, "title": self.title,
                "kind": self.kind}

    @staticmethod
    def from_doc(d: dict[str, Any]) -> Finding:
        return Finding(**{**d, "aliases": tuple(d.get("aliases") or ())})


@dataclass(frozen=True, slots=True)
class _Range:
    scheme: str
    events: tuple[tuple[str, Any, str], ...]
    """(kind, key, spelling) sorted by version; kind in introduced, fixed, last_affected."""
    limits: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _Entry:
    record_id: str
    aliases: tuple[str, ...]
    title: str
    severity: str
    score: float | None
    versions: tuple[str, ...]
    ranges: tuple[_Range, ...]
    scheme: str


def _compile_range(r: dict[str, Any], eco_scheme: str) -> _Range | None:
    kind = r.get("type")
    if kind == "GIT":
        return None
    scheme = "semver" if kind == "SEMVER" and eco_scheme not in ("go",) else eco_scheme
    events: list[tuple[str, Any, str]] = []
    limits: list[Any] = []
    for ev in r.get("events") or []:
        if not isinstance(ev, dict) or len(ev) != 1:
            continue
        (name, value), = ev.items()
        if not isinstance(value, str):
            continue
        if name == "limit":
            if value != "*":
                k = vs.key(scheme, value)
                if k is None:
                    return None
                limits.append(k)
            continue
        if name not in ("introduced", "fixed", "last_affected"):
            continue
        if name == "introduced" and value == "0":
            events.append((name, None, value))
            continue
        k = vs.key(scheme, value)
        if k is None:
            return None  # a range we cannot order is not evaluated (explicit versions still count)
        events.append((name, k, value))
    if not events:
        return None
    zero = [e for e in events if e[1] is None]
    rest = sorted((e for e in events if e[1] is not None), key=lambda e: e[1])
    return _Range(scheme, tuple(zero + rest), tuple(limits))


def _in_range(r: _Range, v: Any) -> tuple[bool, str | None]:
    """(affected, first fixed version above v) for one range."""
    if r.limits and not any(v < lim for lim in r.limits):
        return False, None
    affected = False
    fixed: str | None = None
    for kind, k, spelling in r.events:
        if kind == "introduced":
            if k is None or v >= k:
                affected = True
        elif kind == "fixed":
            if v >= k:
                affected = False
            elif fixed is None and affected:
                fixed = spelling
        elif kind == "last_affected" and v > k:
            affected = False
    return affected, fixed if affected else None


class VulnIndex:
    """Records compiled for matching, by (ecosystem, normalised package name)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], list[_Entry]] = {}
        self._hits: dict[tuple[str, str, str], tuple[tuple[_Entry, str | None], ...]] = {}
        """(ecosystem, name, version) -> the entries it is affected by: images share most of their packages,
        so re-matching thousands of inventories compares each distinct version once (cleared by `add`)."""
        self.records = 0
        self.generation = 0
        self.updated_at: float | None = None

    def add(self, record: dict[str, Any]) -> None:
        if record.get("withdrawn"):
            return
        self._hits.clear()
        self.records += 1
        rid = str(record["id"])
        # `upstream` (OSV 1.6: Debian's DEBIAN-CVE-*, Ubuntu's records name their CVE there, not in aliases)
        # counts as an alias: a policy's scan.ignore of the CVE, and merging with a DSA for it, must work
        named = [*(record.get("aliases") or []), *(record.get("upstream") or [])]
        aliases = tuple(sorted({str(a) for a in named if isinstance(a, str)} - {rid}))
        title = str(record.get("summary") or record.get("details") or "")[:300].split("\n")[0]
        for a in record.get("affected") or []:
            pkg = a.get("package") or {}
            eco, name = str(pkg.get("ecosystem", "")), str(pkg.get("name", ""))
            scheme = vs.scheme_of(eco)
            severity, score = assess(record, a)
            ranges = tuple(r for r in (_compile_range(x, scheme) for x in a.get("ranges") or [] if isinstance(x, dict))
                           if r is not None)
            # Interned: the advisories of one package list the same versions again and again.
            versions = tuple(sys.intern(v) for v in a.get("versions") or [] if isinstance(v, str))
            entry = _Entry(rid, aliases, title, severity, score, versions, ranges, scheme)
            self._by_key.setdefault((eco, vs.normalise_name(eco, name)), []).append(entry)

    @staticmethod
    def build(records: Iterable[dict[str, Any]]) -> VulnIndex:
        index = VulnIndex()
        for r in records:
            index.add(r)
        return index

    def match(self, inventory: Inventory) -> list[Finding]:
        findings: list[Finding] = []
        for pkg in inventory.packages:
            findings += self.match_package(pkg, inventory.os)
        return findings

    def match_package(self, pkg: Package, os: OsInfo | None) -> list[Finding]:
        query = package_query(pkg, os)
        if query is None:
            return []
        eco, name, version = query
        hits = self._hits.get(query)
        if hits is None:
            hits = self._affecting(eco, name, version)
            if len(self._hits) >= _MAX_MEMO:
                self._hits.clear()
            self._hits[query] = hits
        if not hits:
            return []
        out = [Finding(e.record_id, e.aliases, pkg.name, pkg.version, eco, pkg.purl, fixed, e.severity, e.score,
                       pkg.layer, e.title) for e, fixed in hits]
        return merge_aliases(out)

    def _affecting(self, eco: str, name: str, version: str) -> tuple[tuple[_Entry, str | None], ...]:
        entries = self._by_key.get((eco, vs.normalise_name(eco, name)))
        if not entries:
            return ()
        out: list[tuple[_Entry, str | None]] = []
        keys: dict[str, Any] = {}
        for e in entries:
            hit, fixed = False, None
            if any(vs.same(e.scheme, version, x) for x in e.versions):
                hit = True
            for r in e.ranges:
                if r.scheme not in keys:
                    keys[r.scheme] = vs.key(r.scheme, version)
                rk = keys[r.scheme]
                if rk is None:
                    continue
                try:
                    inside, fx = _in_range(r, rk)
                except TypeError:
                    continue
                if inside:
                    hit = True
                    fixed = fixed or fx
            if hit:
                out.append((e, fixed))
        return tuple(out)


def package_query(pkg: Package, os: OsInfo | None) -> tuple[str, str, str] | None:
    """(OSV ecosystem, name, version) a package is looked up by; None when no ecosystem applies."""
    if pkg.type in ("deb", "apk", "rpm"):
        if os is None or not os.ecosystem:
            return None
        if pkg.type == "apk":
            return os.ecosystem, pkg.source_name or pkg.name, pkg.version
        return os.ecosystem, pkg.source_name or pkg.name, pkg.source_version or pkg.version
    if pkg.type == "pypi":
        return "PyPI", pkg.name, pkg.version
    if pkg.type == "npm":
        return "npm", pkg.name, pkg.version
    if pkg.type == "golang":
        return "Go", pkg.name, pkg.version
    if pkg.type == "maven":
        return "Maven", pkg.name, pkg.version
    return None


def merge_aliases(findings: list[Finding]) -> list[Finding]:
    """One finding per group of records that alias each other (for one package): the worst severity wins,
    every id is kept in `aliases`, the id shown is a CVE when the group has one... else the smallest."""
    if len(findings) < 2:
        return findings
    groups: list[tuple[set[str], list[Finding]]] = []
    for f in findings:
        ids = {f.id, *f.aliases}
        hits = [g for g in groups if g[0] & ids]
        merged: tuple[set[str], list[Finding]] = (ids, [f])
        for g in hits:
            merged[0].update(g[0])
            merged[1].extend(g[1])
            groups.remove(g)
        groups.append(merged)
    out: list[Finding] = []
    for ids, members in groups:
        if len(members) == 1:
            out.append(members[0])
            continue
        worst = max(members, key=lambda f: (ORDER.index(f.severity), f.cvss_score or 0.0))
        record_ids = sorted({m.id for m in members})
        main = next((i for i in record_ids if i.startswith("CVE-")), record_ids[0])
        fixed = next((m.fixed_version for m in members if m.fixed_version), None)
        out.append(Finding(main, tuple(sorted(ids - {main})), worst.package, worst.version, worst.ecosystem,
                           worst.purl, fixed, worst.severity, worst.cvss_score, worst.layer,
                           next((m.title for m in members if m.title), "")))
    return out
