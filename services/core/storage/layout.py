"""The key layout of blob storage, and the upload bookkeeping both BlobStore adapters share.

Every key below is relative to the adapter's root (a directory for `FilesystemBlobStore`,
`settings.prefix` inside the bucket for `S3BlobStore`)::

    blobs/<alg>/<hex[:2]>/<hex>      a committed blob, named by its digest; immutable and only
                                     ever visible complete (published by link/rename or by an
                                     atomic S3 PUT / copy / completed multipart upload)
    uploads/<id>/                    one upload session; any replica can continue it
        data                         fs: the bytes received so far, appended in place
                                     s3: the key of the session's S3 multipart upload; an object
                                     only between completing that upload and copying it to blobs/
        lock                         fs: flock(2) target; one writer (append/commit) at a time
        state                        s3: the session record (JSON): the multipart UploadId, the
                                     recorded parts (number, size, ETag), the pending object and
                                     the next free part number; replaced only by conditional PUTs
                                     (If-Match its ETag), so of two concurrent writers one wins
        pending/<token>              s3: the tail after the last part (< S3_MIN_PART bytes),
                                     written once under a fresh name and named by `state`
        direct                       s3: a put of a blob whose digest was known up front, in
                                     progress: names the blob key its multipart upload streams to
                                     and that upload's id, so a dead writer's upload gets aborted

The two-hex fan-out keeps directory listings short on file systems; S3 ignores it happily.
Upload ids come from `new_upload_id` and are checked by `is_upload_id` before they touch a path,
so a client-supplied id can never escape `uploads/`.
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from typing import Final

from services.core.errors import DigestInvalidError
from services.core.oci.digest import SUPPORTED_ALGORITHMS, Digest, Digester

MIB: Final = 1024 * 1024
READ_CHUNK: Final = MIB
"""Largest chunk a blob read yields (the port promises <= 1 MiB)."""
S3_MIN_PART: Final = 5 * MIB
"""S3's smallest multipart part, except the last one."""
S3_MAX_PARTS: Final = 10_000
S3_MAX_PART: Final = 5 * 1024 * MIB
"""S3's largest multipart part."""
PART_GROWTH_EVERY = 40
"""Part numbers per 1 MiB of part-size growth (see `part_size_for_number`)."""

BLOBS: Final = "blobs"
UPLOADS: Final = "uploads"
UPLOAD_DATA: Final = "data"
UPLOAD_LOCK: Final = "lock"
UPLOAD_STATE: Final = "state"
UPLOAD_DIRECT: Final = "direct"
PENDING: Final = "pending"

_UPLOAD_ID: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
_OFFSET_WIDTH: Final = 20


def blob_key(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def blob_digest(key: str) -> Digest | None:
    """The digest a `blob_key` names, or None for anything else found under `blobs/`."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != BLOBS or parts[1] not in SUPPORTED_ALGORITHMS:
        return None
    _, algorithm, fan, encoded = parts
    if fan != encoded[:2]:
        return None
    try:
        return Digest.parse(f"{algorithm}:{encoded}")
    except DigestInvalidError:
        return None


def new_upload_id() -> str:
    return secrets.token_urlsafe(24)


def is_upload_id(upload_id: str) -> bool:
    return bool(_UPLOAD_ID.fullmatch(upload_id))


def upload_prefix(upload_id: str) -> str:
    return f"{UPLOADS}/{upload_id}/"


def upload_id_of(key: str) -> str | None:
    """The session a key under `uploads/` belongs to."""
    parts = key.split("/", 2)
    if len(parts) < 2 or parts[0] != UPLOADS or not is_upload_id(parts[1]):
        return None
    return parts[1]


def state_key(upload_id: str) -> str:
    return f"{upload_prefix(upload_id)}{UPLOAD_STATE}"


def data_key(upload_id: str) -> str:
    return f"{upload_prefix(upload_id)}{UPLOAD_DATA}"


def direct_key(upload_id: str) -> str:
    return f"{upload_prefix(upload_id)}{UPLOAD_DIRECT}"


def pending_key(upload_id: str, token: str) -> str:
    return f"{upload_prefix(upload_id)}{PENDING}/{token}"


def part_size_for_number(number: int, *, minimum: int) -> int:
    """Size of multipart part `number` (1-based): `minimum`, plus 1 MiB every PART_GROWTH_EVERY parts.

    A blob's size is unknown while it streams, so the part size grows with the part number
    instead: the first 40 parts are `minimum`, the next 40 one MiB more, and so on (capped at
    S3_MAX_PART). Small blobs keep small parts (memory is (in flight + 1) parts), while 9,000
    parts of at least 5 MiB hold over 1 TiB (the 9,000th is ~229 MiB), leaving 1,000 part
    numbers for the ones wasted by failed or concurrent appends.
    """
    return min(S3_MAX_PART, minimum + MIB * ((number - 1) // PART_GROWTH_EVERY))


class DigesterCache:
    """In-process hash state of upload sessions, keyed by (id, size) so a stale entry is never used.

    A miss (another replica appended, or this process restarted) means the adapter rehashes the
    stored bytes once; a hit is the common case and avoids re-reading. `take` removes the entry,
    so two concurrent appends in one process never update the same hash object. Bounded (LRU)
    because abandoned sessions never come back for their entry.
    """

    def __init__(self, *, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, Digester] = OrderedDict()

    def take(self, upload_id: str, *, size: int, algorithm: str = "sha256") -> Digester | None:
        digester = self._entries.pop(upload_id, None)
        if digester is None or digester.size != size or digester.algorithm != algorithm:
            return None
        return digester

    def put(self, upload_id: str, digester: Digester) -> None:
        self._entries[upload_id] = digester
        self._entries.move_to_end(upload_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def discard(self, upload_id: str) -> None:
        self._entries.pop(upload_id, None)
