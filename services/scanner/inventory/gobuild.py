"""Go module build info of a binary, found while its bytes stream past (never reading it whole).

A Go >= 1.18 binary holds a 16-byte aligned `\\xff Go buildinf:` header (ELF `.go.buildinfo`) followed,
when flags & 2, by two uvarint-prefixed strings: the Go version and the module info (golang/go
src/debug/buildinfo/buildinfo.go). Older binaries (pointer form) are not read.
"""

from __future__ import annotations

from services.scanner.inventory.parsers import Found

MAGIC = b"\xff Go buildinf:"
ELF_MAGIC = b"\x7fELF"
_WANT_AFTER = 256 * 1024


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated uvarint")


def parse_buildinfo(blob: bytes) -> tuple[str, str] | None:
    """(go version, modinfo) from bytes starting at the magic; None for the pointer form or garbage."""
    if len(blob) < 32 or not blob.startswith(MAGIC):
        return None
    flags = blob[15]
    if not flags & 2:
        return None
    try:
        n, pos = _uvarint(blob, 32)
        version = blob[pos:pos + n].decode("utf-8", "replace")
        pos += n
        n, pos = _uvarint(blob, pos)
        if pos + n > len(blob):
            return None
        mod = blob[pos:pos + n].decode("utf-8", "replace")
    except ValueError:
        return None
    if len(mod) >= 33 and mod[-17] == "\n":
        mod = mod[16:-16]
    return version, mod


def _normalise_go(version: str) -> str:
    """`go1.22.3 X:boringcrypto` -> `go1.22.3` (syft's spelling; the matcher strips the `go`)."""
    return version.split(" ")[0] if version.startswith("go") else ""


def modules(version: str, modinfo: str) -> list[Found]:
    """The main module (unless `(devel)`), its dependencies (replacements applied), and the stdlib."""
    out: list[Found] = []
    last: Found | None = None
    for line in modinfo.splitlines():
        parts = line.split("\t")
        if parts[0] in ("mod", "dep") and len(parts) >= 3:
            last = Found("golang", parts[1], parts[2])
            if parts[0] == "mod" and parts[2] in ("(devel)", ""):
                last = None
                continue
            out.append(last)
        elif parts[0] == "=>" and len(parts) >= 3 and last is not None and out and out[-1] is last:
            out[-1] = Found("golang", parts[1], parts[2])
            last = out[-1]
    go = _normalise_go(version)
    if go:
        out.append(Found("golang", "stdlib", go))
    return out


class BuildInfoScanner:
    """Fed a file's chunks in order; `result()` is its modules once the header was seen (or None)."""

    def __init__(self) -> None:
        self._tail = b""
        self._found: bytearray | None = None
        self._offset = 0
        self.is_elf: bool | None = None

    @property
    def done(self) -> bool:
        return self.is_elf is False or (self._found is not None and len(self._found) >= _WANT_AFTER)

    def feed(self, chunk: bytes) -> None:
        if self.is_elf is None:
            head = self._tail + chunk
            if len(head) < 4:
                self._tail = head
                return
            self.is_elf = head.startswith(ELF_MAGIC)
            self._tail = b""
            if not self.is_elf:
                return
            chunk = head
        if self.done:
            return
        if self._found is not None:
            self._found += chunk[: _WANT_AFTER - len(self._found)]
            return
        data = self._tail + chunk
        base = self._offset - len(self._tail)
        start = 0
        while True:
            i = data.find(MAGIC, start)
            if i < 0:
                break
            if (base + i) % 16 == 0:
                self._found = bytearray(data[i:i + _WANT_AFTER])
                return
            start = i + 1
        self._offset += len(chunk)
        self._tail = data[-(len(MAGIC) - 1):] if len(data) >= len(MAGIC) else data

    def result(self) -> list[Found] | None:
        if self._found is None:
            return None
        parsed = parse_buildinfo(bytes(self._found))
        if parsed is None:
            return None
        return modules(*parsed)
