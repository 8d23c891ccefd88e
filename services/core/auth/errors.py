"""Typed errors of identity and access; they render as the registry's JSON error document."""

from __future__ import annotations

from services.core.errors import RegistryError, UnauthorizedError


class AuthenticationError(UnauthorizedError):
    """Credentials were presented and are wrong, expired or revoked. The message is safe to show;
    `reason` (for the audit trail) may say more, never the secret."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class InvalidRequestError(RegistryError):
    code, status = "INVALID_REQUEST", 400


class UnsupportedGrantError(RegistryError):
    code, status = "UNSUPPORTED", 400


class NotFoundError(RegistryError):
    code, status = "NOT_FOUND", 404


class AlreadyExistsError(RegistryError):
    code, status = "ALREADY_EXISTS", 409
