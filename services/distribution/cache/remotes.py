"""The pull-through cache's upstreams: from the settings (`proxy.remotes`) until a list is PUT through the
management API, which then replaces them (stored in `proxy_remotes`, passwords sealed with the master key).
And the mapping from a cached repository (`cache/<remote>/<path>`, or `cache/<path>` for the default remote)
to its upstream repository."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from services.core.client import Credentials, RegistryOptions, RemoteRepository
from services.core.client.reference import DOCKER_HUB, DOCKER_HUB_API
from services.core.errors import NameUnknownError
from services.core.oci.names import RepositoryName
from services.core.secrets import MasterKeyMissingError, SecretBox, SecretUnreadableError
from services.core.settings import ProxyRemote, ProxySettings
from services.core.storage.documents import DocumentStore

log = logging.getLogger(__name__)

REMOTES: Final = "proxy_remotes"
"""One document (`_id` "remotes"): the list PUT through the management API."""
_DOC_ID: Final = "remotes"
DOCKER_HUB_HOSTS: Final = frozenset({DOCKER_HUB, DOCKER_HUB_API, "index.docker.io"})


@dataclass(frozen=True, slots=True)
class Remote:
    """One upstream registry, ready to use (its password opened)."""

    name: str
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ttl: float = 7 * 24 * 3600.0
    insecure: bool = False
    ca_file: str | None = None

    @property
    def host(self) -> str:
        """`host[:port]` as the OCI client names registries."""
        return urlsplit(self.url).netloc.lower()

    @property
    def is_docker_hub(self) -> bool:
        return urlsplit(self.url).hostname in DOCKER_HUB_HOSTS

    def options(self) -> RegistryOptions:
        credentials = Credentials(self.username, self.password or "") if self.username else None
        return RegistryOptions(credentials=credentials, plain_http=urlsplit(self.url).scheme == "http",
                               insecure=self.insecure, ca_file=self.ca_file)

    @property
    def fingerprint(self) -> tuple[object, ...]:
        """What a client for this remote is built from (a changed remote gets a new client)."""
        return (self.name, self.url, self.username, self.password, self.insecure, self.ca_file)


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a cached repository's content comes from."""

    remote: Remote
    repository: RemoteRepository


@dataclass(frozen=True, slots=True)
class Remotes:
    """The configured upstreams by name, the default one's name and where the list came from."""

    by_name: Mapping[str, Remote]
    default: str
    source: str  # "settings" | "api"
    updated: float | None = None
    updated_by: str | None = None

    def upstream_of(self, namespace: str, repository: str) -> Upstream:
        """The upstream of `<namespace>/<path>`: `<remote>/<rest>` when the first component names a remote,
        else the default remote with all of `<path>` (a one-component path gets Docker Hub's `library/`).
        NameUnknownError when there is no such remote."""
        path = repository[len(namespace) + 1 :] if repository.startswith(namespace + "/") else ""
        first, _, rest = path.partition("/")
        if first in self.by_name and rest:
            remote, name = self.by_name[first], rest
        else:
            found = self.by_name.get(self.default)
            if found is None or not path:
                raise NameUnknownError(
                    f"repository {repository} names no remote of the pull-through cache "
                    f"({', '.join(sorted(self.by_name)) or 'none configured'})"
                )
            remote, name = found, path
            if "/" not in name:
                name = f"library/{name}"
        if remote.is_docker_hub and "/" not in name:
            name = f"library/{name}"
        return Upstream(remote, RemoteRepository(remote.host, RepositoryName(name)))

    def for_mirror(self, ns: str) -> Remote | None:
        """The remote a containerd mirror request's `?ns=<registry host>` names."""
        ns = ns.lower()
        for remote in self.by_name.values():
            if remote.host == ns or (ns in DOCKER_HUB_HOSTS and remote.is_docker_hub):
                return remote
        return None


def from_settings(remote: ProxyRemote) -> Remote:
    return Remote(
        name=remote.name, url=remote.url, username=remote.username,
        password=remote.password.get_secret_value() if remote.password else None, ttl=remote.ttl,
        insecure=remote.insecure, ca_file=remote.ca_file,
    )


def _context(name: str) -> str:
    return f"proxy-remote:{name}"


class RemoteConfig:
    """The upstreams in force, re-read from metadata every `refresh_seconds` (other replicas' PUTs show up
    within that time; this replica's at once)."""

    def __init__(self, docs: DocumentStore, settings: ProxySettings, *, box: Callable[[], SecretBox],
                 refresh_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.docs = docs
        self.settings = settings
        self._box = box
        self._refresh = refresh_seconds
        self._clock = clock
        self._cached: tuple[float, Remotes] | None = None

    async def setup(self) -> None:
        await self.docs.ensure_collection(REMOTES)

    async def current(self) -> Remotes:
        now = self._clock()
        if self._cached is not None and now - self._cached[0] < self._refresh:
            return self._cached[1]
        doc = await self.docs.get(REMOTES, _DOC_ID)
        remotes = self._from_doc(doc) if doc is not None else Remotes(
            {r.name: from_settings(r) for r in self.settings.remotes}, self.settings.default_remote, "settings")
        self._cached = (now, remotes)
        return remotes

    def _from_doc(self, doc: Mapping[str, Any]) -> Remotes:
        out: dict[str, Remote] = {}
        for entry in doc.get("remotes") or ():
            password = None
            sealed = entry.get("password_sealed")
            if sealed:
                try:
                    password = self._box().open(sealed, context=_context(entry["name"])).decode()
                except (SecretUnreadableError, MasterKeyMissingError) as exc:  # a bad row must not stop pulls
                    log.warning("pull-through remote %s: its password does not open (%s); pulling anonymously",
                                entry["name"], type(exc).__name__)
            out[entry["name"]] = Remote(
                name=entry["name"], url=entry["url"], username=entry.get("username"), password=password,
                ttl=float(entry.get("ttl", 7 * 24 * 3600.0)), insecure=bool(entry.get("insecure")),
                ca_file=entry.get("ca_file"),
            )
        return Remotes(out, self.settings.default_remote, "api", updated=doc.get("updated"),
                       updated_by=doc.get("updated_by"))

    async def sealed_passwords(self) -> dict[str, tuple[str | None, str]]:
        """(username, sealed password) of each stored remote that has one: a PUT that leaves a remote's
        password out keeps it, as long as the user name stays."""
        doc = await self.docs.get(REMOTES, _DOC_ID)
        return {e["name"]: (e.get("username"), e["password_sealed"])
                for e in (doc or {}).get("remotes") or () if e.get("password_sealed")}

    async def replace(self, remotes: Sequence[ProxyRemote], *, keep: Mapping[str, str], actor: str,
                      now: float) -> Remotes:
        """Store `remotes` as the list in force. Passwords are sealed (MasterKeyMissingError without a master
        key); `keep` holds sealed passwords carried over from the stored list, by remote name."""
        entries: list[dict[str, Any]] = []
        for r in remotes:
            entry: dict[str, Any] = {"name": r.name, "url": r.url, "username": r.username, "ttl": r.ttl,
                                     "insecure": r.insecure, "ca_file": r.ca_file}
            if r.password is not None:
                entry["password_sealed"] = self._box().seal(r.password.get_secret_value().encode(),
                                                            context=_context(r.name))
            elif r.name in keep:
                entry["password_sealed"] = keep[r.name]
            entries.append(entry)
        await self.docs.put(REMOTES, {"_id": _DOC_ID, "remotes": entries, "updated": now, "updated_by": actor})
        self._cached = None
        return await self.current()
