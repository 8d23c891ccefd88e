"""Secrets at rest (managed signing keys, upstream credentials): AES-256-GCM under a key derived from the
one master key in the settings. A sealed value is `v1.<base64url(nonce | ciphertext | tag)>`; the
`context` (e.g. the key's URI and version) is authenticated with it, so a sealed value copied to another
record does not open there."""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

_VERSION = "v1."
_NONCE = 12
MIN_MASTER_KEY = 16


class MasterKeyMissingError(Exception):
    """No master key is configured (or it is too short): nothing secret can be stored."""


class SecretUnreadableError(Exception):
    """A sealed value that does not open: another master key, another context, or damaged."""


class SecretBox:
    """Seals and opens secrets under the master key."""

    def __init__(self, master_key: str) -> None:
        if len(master_key) < MIN_MASTER_KEY:
            raise MasterKeyMissingError(f"the master key must be at least {MIN_MASTER_KEY} characters")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"hanzo-registry secrets",
                       info=b"aes-256-gcm v1").derive(master_key.encode())
        self._aead = AESGCM(derived)

    def seal(self, plaintext: bytes, *, context: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, plaintext, context.encode())
        return _VERSION + base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, sealed: str, *, context: str) -> bytes:
        if not sealed.startswith(_VERSION):
            raise SecretUnreadableError("not a sealed secret of a known version")
        body = sealed[len(_VERSION):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], context.encode())
        except (InvalidTag, ValueError):
            raise SecretUnreadableError("the secret does not open with this master key") from None


def secret_box(master_key: SecretStr | None) -> SecretBox:
    """The box of the configured master key; MasterKeyMissingError without one."""
    if master_key is None or not master_key.get_secret_value():
        raise MasterKeyMissingError("no master key is configured (signer.master_key)")
    return SecretBox(master_key.get_secret_value())
