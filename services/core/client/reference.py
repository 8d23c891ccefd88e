"""Remote repositories and image references (`registry/name:tag@digest`), with Docker's defaults for
Docker Hub, built on the name, tag and digest value types of `services.core.oci`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from services.core.errors import NameInvalidError
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag

DOCKER_HUB: Final = "docker.io"
DOCKER_HUB_API: Final = "registry-1.docker.io"
"""The host that serves Docker Hub's /v2 API."""


def _is_registry(component: str) -> bool:
    """Docker's rule: the first component names a registry if it has a '.' or ':' or is `localhost`."""
    return "." in component or ":" in component or component == "localhost"


@dataclass(frozen=True, slots=True, order=True)
class RemoteRepository:
    """A repository on a registry: `registry` is `host[:port]` as written in image references."""

    registry: str
    name: RepositoryName

    def __post_init__(self) -> None:
        if not self.registry or "/" in self.registry or any(c.isspace() for c in self.registry):
            raise NameInvalidError(f"invalid registry {self.registry[:100]!r}: expected host[:port]")
        if isinstance(self.name, str):  # be lenient with callers passing a plain name
            object.__setattr__(self, "name", RepositoryName(self.name))

    @classmethod
    def parse(cls, text: str) -> RemoteRepository:
        """`host[:port]/name`; a name without a registry component is on Docker Hub (`library/` added to
        single-component names there)."""
        first, sep, rest = text.partition("/")
        if sep and _is_registry(first):
            registry, name = first, rest
        else:
            registry, name = DOCKER_HUB, text
        if registry == DOCKER_HUB and "/" not in name:
            name = f"library/{name}"
        return cls(registry, RepositoryName(name))

    def __str__(self) -> str:
        return f"{self.registry}/{self.name}"


@dataclass(frozen=True, slots=True)
class ImageReference:
    """`registry/name[:tag][@digest]`; the digest wins over the tag when both are given."""

    repository: RemoteRepository
    tag: Tag | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse an image reference, Docker style (`alpine` is `docker.io/library/alpine:latest`).

        Raises NameInvalidError, TagInvalidError or DigestInvalidError with the offending part.
        """
        rest, sep, digest_text = text.partition("@")
        digest = Digest.parse(digest_text) if sep else None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        tag: Tag | None = None
        if colon > slash:  # a ':' after the last '/' starts the tag (not a port)
            rest, tag = rest[:colon], Tag(rest[colon + 1 :])
        if tag is None and digest is None:
            tag = Tag("latest")
        return cls(RemoteRepository.parse(rest), tag, digest)

    @property
    def reference(self) -> Tag | Digest:
        """What to put after `/manifests/`: the digest if there is one, else the tag."""
        if self.digest is not None:
            return self.digest
        assert self.tag is not None
        return self.tag

    def __str__(self) -> str:
        text = str(self.repository)
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def api_host(registry: str) -> str:
    """The host to send /v2 requests to (Docker Hub's API lives on another host than its name)."""
    return DOCKER_HUB_API if registry in (DOCKER_HUB, "index.docker.io") else registry
