"""In-process notices of signature results: the signer, after storing a result, tells the pull gates of the
same process (the embedded assembly) to forget their cached decision about that image at once. Other
processes see the change within `registry.pull_gate_cache_seconds`.

Notices are scoped to one DocumentStore instance (one Container): two registries built in one test process
never hear each other."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

from services.core.storage.documents import DocumentStore

log = logging.getLogger(__name__)

Listener = Callable[[str], None]


class SignatureNotices:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def changed(self, digest: str) -> None:
        """The signatures of the image `digest` changed (a result stored, a signature deleted)."""
        for listener in list(self._listeners):
            try:
                listener(digest)
            except Exception as exc:  # a listener must never fail the signer's handler
                log.warning("signature notice listener failed: %s", exc)


_BY_STORE: weakref.WeakKeyDictionary[DocumentStore, SignatureNotices] = weakref.WeakKeyDictionary()


def notices_for(docs: DocumentStore) -> SignatureNotices:
    """The notices of everything built on `docs`."""
    notices = _BY_STORE.get(docs)
    if notices is None:
        notices = _BY_STORE[docs] = SignatureNotices()
    return notices
