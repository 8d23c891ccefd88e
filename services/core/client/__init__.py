"""One async OCI distribution client (aiohttp) for every service: token auth, resolve, verified streamed
pulls with Range resume, monolithic/chunked pushes with mount, referrers with the tag-schema fallback."""

from services.core.client.auth import Credentials, TokenCache
from services.core.client.blobs import UploadMethod
from services.core.client.errors import (
    OciAuthenticationError,
    OciClientError,
    OciConnectionError,
    OciDeniedError,
    OciDigestMismatchError,
    OciManifestTooLargeError,
    OciNotFoundError,
    OciProtocolError,
    OciResponseError,
    OciTooManyRequestsError,
    OciUnauthorizedError,
)
from services.core.client.oci import MANIFEST_ACCEPT, FetchedManifest, OciClient, referrers_tag
from services.core.client.reference import ImageReference, RemoteRepository
from services.core.client.transport import ClientOptions, RegistryOptions

__all__ = [
    "MANIFEST_ACCEPT",
    "ClientOptions",
    "Credentials",
    "FetchedManifest",
    "ImageReference",
    "OciAuthenticationError",
    "OciClient",
    "OciClientError",
    "OciConnectionError",
    "OciDeniedError",
    "OciDigestMismatchError",
    "OciManifestTooLargeError",
    "OciNotFoundError",
    "OciProtocolError",
    "OciResponseError",
    "OciTooManyRequestsError",
    "OciUnauthorizedError",
    "RegistryOptions",
    "RemoteRepository",
    "TokenCache",
    "UploadMethod",
    "referrers_tag",
]
