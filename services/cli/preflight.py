"""Start-up checks of `serve`, the single services and `check-config`: each problem is one line that names the
setting and the fix, found before anything is written (no data directory, no admin key for a server that
cannot start)."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from services.core.runtime import bind_http
from services.core.settings import (
    FilesystemBlobSettings,
    KafkaEventSettings,
    LocalEventSettings,
    MongoMetadataSettings,
    S3BlobSettings,
    Settings,
    SqliteMetadataSettings,
)


class StartupError(Exception):
    """Why a service cannot start, in one line: the setting, the problem, the fix."""


def _env(setting: str) -> str:
    return "HANZO_REGISTRY_" + setting.upper().replace(".", "__")


def _named(setting: str) -> str:
    return f"{setting} ({_env(setting)})"


# --- files


def _check_writable_dir(path: Path, setting: str) -> None:
    """`path` is (or can be created as) a directory this user may write; nothing is created."""
    target = path.absolute()
    fix = "choose a directory the registry's user may write, or fix its permissions"
    if target.exists():
        if not target.is_dir():
            raise StartupError(f"{_named(setting)}: {target} is not a directory: {fix}")
        if not os.access(target, os.W_OK | os.X_OK):
            raise StartupError(f"{_named(setting)}: {target} is not writable by uid {os.getuid()}: {fix}")
        return
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise StartupError(f"{_named(setting)}: cannot create {target}: {parent} is a file: {fix}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StartupError(f"{_named(setting)}: cannot create {target}: {parent} is not writable: {fix}")


def check_files(settings: Settings, services: Sequence[str]) -> None:
    """The data directory (and every local store's path) can be written; the TLS files serve."""
    _check_writable_dir(settings.data_dir, "data_dir")
    blobs, meta, events = settings.storage.blobs, settings.metadata, settings.events
    if isinstance(blobs, FilesystemBlobSettings) and blobs.root is not None:
        _check_writable_dir(blobs.root, "storage.blobs.root")
    if isinstance(meta, SqliteMetadataSettings) and meta.path is not None:
        _check_writable_dir(meta.path.parent, "metadata.path")
    if isinstance(events, LocalEventSettings) and events.path is not None:
        _check_writable_dir(events.path.parent, "events.path")
    if "distribution" in services and settings.server.tls.enabled:
        from services.distribution.tls import TlsConfigError, server_context

        try:
            server_context(settings.server.tls)
        except TlsConfigError as exc:
            raise StartupError(str(exc)) from None


# --- the listening socket


def http_addr_setting(settings: Settings, services: Sequence[str]) -> tuple[str, str]:
    """(address, setting) of the HTTP listener: the API's, or the ops endpoints' of a headless service."""
    if "distribution" in services:
        return settings.addr, "addr"
    return settings.server.ops_addr, "server.ops_addr"


def bind(settings: Settings, services: Sequence[str]) -> list[socket.socket]:
    """The bound, listening HTTP sockets; StartupError when the address (or a fixed gRPC port) cannot be had."""
    sockets = _bind(*http_addr_setting(settings, services))
    if settings.server.grpc_addr.rpartition(":")[2] != "0" and services != ["distribution"]:
        try:
            for sock in _bind(settings.server.grpc_addr, "server.grpc_addr"):
                sock.close()  # gRPC binds it itself, a moment later
        except StartupError:
            for sock in sockets:
                sock.close()
            raise
    return sockets


def _bind(addr: str, setting: str) -> list[socket.socket]:
    name = _named(setting)
    try:
        return bind_http(addr)
    except socket.gaierror as exc:
        raise StartupError(f"{name}: cannot resolve the host of {addr} ({exc.strerror}): use an IP address") from None
    except OSError as exc:
        port = addr.rpartition(":")[2]
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"{name}: port {port} is in use by another process: stop it or set another port, e.g. "
                f"{_env(setting)}=127.0.0.1:{int(port) + 1}"
            ) from None
        if exc.errno == errno.EACCES:
            raise StartupError(f"{name}: port {port} needs privileges this user lacks: use a port >= 1024") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(
                f"{name}: {addr} is not an address of this machine: use 127.0.0.1 (local) or 0.0.0.0 (every "
                "interface)"
            ) from None
        raise StartupError(f"{name}: cannot listen on {addr}: {exc.strerror or exc}") from None


# --- backends


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or "]" in port:
        return text.strip().strip("[]"), default_port
    return host.strip("[]"), int(port)


def backend_endpoints(settings: Settings) -> list[tuple[str, list[tuple[str, int]]]]:
    """(setting, [(host, port)]) of every remote backend; a backend is up when one of its hosts answers."""
    found: list[tuple[str, list[tuple[str, int]]]] = []
    blobs, meta, events = settings.storage.blobs, settings.metadata, settings.events
    if isinstance(blobs, S3BlobSettings):
        found.append(("storage.blobs.endpoint", [_host_port(blobs.endpoint, 443 if blobs.secure else 80)]))
    if isinstance(meta, MongoMetadataSettings):
        uri = meta.uri.get_secret_value()
        if uri.startswith("mongodb://"):  # mongodb+srv:// names a DNS record, not hosts
            hosts = urlsplit(uri).netloc.rpartition("@")[2]
            found.append(("metadata.uri", [_host_port(h, 27017) for h in hosts.split(",") if h]))
    if isinstance(events, KafkaEventSettings):
        servers = [_host_port(s, 9092) for s in events.bootstrap_servers.split(",") if s.strip()]
        found.append(("events.bootstrap_servers", servers))
    return found


def _reachable(hosts: Sequence[tuple[str, int]], timeout: float) -> str | None:
    """None when one of `hosts` accepts a TCP connection, else the last error."""
    error = "no host"
    for host, port in hosts:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return None
        except OSError as exc:
            error = f"{host}:{port}: {exc.strerror or exc}"
    return error


def wait_for_backends(
    settings: Settings, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Retry each remote backend for up to `server.backend_wait_seconds`; StartupError for the first that
    never answers."""
    deadline = clock() + settings.server.backend_wait_seconds
    for setting, hosts in backend_endpoints(settings):
        delay = 0.25
        while (error := _reachable(hosts, timeout=2.0)) is not None:
            if clock() + delay > deadline:
                waited = settings.server.backend_wait_seconds
                raise StartupError(
                    f"{_named(setting)}: cannot reach {error} (tried for {waited:g}s): start it, or fix the setting"
                )
            sleep(delay)
            delay = min(delay * 2, 2.0)
