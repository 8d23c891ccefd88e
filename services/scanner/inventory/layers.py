"""Layer bytes -> tar entries: compression detected from the bytes (gzip, zstd, plain), every read bounded.

Nothing here holds a layer in memory: the compressed bytes are pulled chunk by chunk from a file-like
source, decompressed as a stream and walked by `tarfile` in stream mode (`r|`).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

import zstandard

from services.scanner.inventory.limits import HostileLayerError, Limits

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                 tarfile.SOLARIS_XHDTYPE)


class _Counting(io.RawIOBase):
    """Counts the compressed bytes read from the source (for the bomb ratio)."""

    def __init__(self, source: IO[bytes], head: bytes) -> None:
        self._source = source
        self._head = head
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
        else:
            data = self._source.read(len(b))
            n = len(data)
            b[:n] = data
        self.count += n
        return n


class _Bounded(io.RawIOBase):
    """Decompressed bytes, refused past the layer limit or the bomb ratio."""

    def __init__(self, inner: IO[bytes], compressed: _Counting | None, limits: Limits) -> None:
        self._inner = inner
        self._compressed = compressed
        self._limits = limits
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self._inner.read(len(b))
        except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
            raise HostileLayerError(f"the layer does not decompress: {type(exc).__name__}: {str(exc)[:200]}") from None
        n = len(data)
        b[:n] = data
        self.count += n
        limits = self._limits
        if self.count > limits.max_layer_bytes:
            raise HostileLayerError(f"the layer decompresses to more than {limits.max_layer_bytes} bytes")
        if (self._compressed is not None and self.count > limits.ratio_allowance
                and self.count > limits.max_ratio * max(self._compressed.count, 1)):
            raise HostileLayerError(
                f"decompression bomb: {self._compressed.count} compressed bytes expand beyond {self.count} "
                f"(more than {limits.max_ratio}x)")
        return n


def compression_of(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def decompressed(source: IO[bytes], limits: Limits) -> tuple[str, IO[bytes]]:
    """(compression, the decompressed stream) of a layer whose first bytes decide the format."""
    head = source.read(4)
    counting = _Counting(source, head)
    kind = compression_of(head)
    inner: IO[bytes]
    if kind == "gzip":
        inner = gzip.GzipFile(fileobj=io.BufferedReader(counting, 1 << 16), mode="rb")  # type: ignore[assignment]
    elif kind == "zstd":
        dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_zstd_window)
        inner = dctx.stream_reader(io.BufferedReader(counting, 1 << 16), read_across_frames=True)
    else:
        inner = io.BufferedReader(counting, 1 << 16)
    bounded = _Bounded(inner, counting if kind != "none" else None, limits)
    return kind, io.BufferedReader(bounded, 1 << 16)


def _safe_tarinfo(limits: Limits) -> type[tarfile.TarInfo]:
    class SafeTarInfo(tarfile.TarInfo):
        """tarfile reads long-name and pax header entries whole: refuse big ones before that happens."""

        def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
            if self.type in _HEADER_TYPES and self.size > limits.max_header_bytes:
                raise HostileLayerError(f"a tar header entry of {self.size} bytes (limit {limits.max_header_bytes})")
            return super()._proc_member(tf)  # type: ignore[misc,no-any-return]

    return SafeTarInfo


def tar_entries(stream: IO[bytes], limits: Limits) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The entries of a tar stream in order; HostileLayerError for anything tarfile cannot read."""
    try:
        tf = tarfile.open(fileobj=stream, mode="r|", tarinfo=_safe_tarinfo(limits))  # noqa: SIM115
    except tarfile.TarError as exc:
        if isinstance(exc.__context__, HostileLayerError):
            raise exc.__context__ from None
        if "empty file" in str(exc):
            return  # an empty layer (zero bytes) holds no files
        raise HostileLayerError(f"the layer is not a tar archive: {str(exc)[:200]}") from None
    with tf:
        while True:
            try:
                member = tf.next()
            except HostileLayerError:
                raise
            except (tarfile.TarError, UnicodeError, ValueError, EOFError) as exc:
                if isinstance(exc.__context__, HostileLayerError):
                    raise exc.__context__ from None
                raise HostileLayerError(f"the tar stream is corrupt: {str(exc)[:200]}") from None
            if member is None:
                return
            yield tf, member
