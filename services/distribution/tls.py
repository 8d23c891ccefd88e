"""HTTPS on the API address: the server's SSLContext from `server.tls`, and certificate rotation without a restart.

The certificate chain and key are re-read on SIGHUP and when either file's modification time changes (polled
every `server.tls.reload_interval_seconds`). A new pair is first loaded into a scratch context: a half-written
or mismatched pair (cert replaced, key not yet) is refused and the live context keeps serving the old one,
until the next poll finds a pair that loads. `load_cert_chain` on the live context changes what new handshakes
present; connections already open (a pull in flight) keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from services.core.settings import TlsSettings
from services.core.telemetry import iso_time

log = logging.getLogger(__name__)

ENV = {
    "cert_file": "HANZO_REGISTRY_SERVER__TLS__CERT_FILE",
    "key_file": "HANZO_REGISTRY_SERVER__TLS__KEY_FILE",
    "client_ca_file": "HANZO_REGISTRY_SERVER__TLS__CLIENT_CA_FILE",
}


class TlsConfigError(Exception):
    """A TLS file that cannot serve; the message names the setting and what to do."""


def _setting(name: str) -> str:
    return f"server.tls.{name} ({ENV[name]})"


def _read(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(f"{_setting(name)}: {path} does not exist; give the path of a PEM file") from None
    except IsADirectoryError:
        raise TlsConfigError(f"{_setting(name)}: {path} is a directory; give the path of a PEM file") from None
    except PermissionError:
        raise TlsConfigError(f"{_setting(name)}: cannot read {path}: let the registry's user read it") from None
    except OSError as exc:
        raise TlsConfigError(f"{_setting(name)}: cannot read {path}: {exc.strerror or exc}") from None


def _leaf(cert_pem: bytes, path: Path) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsConfigError(
            f"{_setting('cert_file')}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
            "give the certificate chain, leaf first"
        ) from None
    return certs[0]


def _load_pair(context: ssl.SSLContext, tls: TlsSettings) -> None:
    assert tls.cert_file is not None and tls.key_file is not None
    password = tls.key_password.get_secret_value() if tls.key_password is not None else None
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=password)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc) or reason == "KEY_VALUES_MISMATCH":
            hint = "the key does not belong to the certificate: give the key the certificate was issued for"
        elif tls.key_password is None and ("PEM" in str(exc) or "BAD_DECRYPT" in str(exc)):
            hint = "give an unencrypted PEM key, or its password in server.tls.key_password"
        else:
            hint = "give a PEM key (-----BEGIN ... PRIVATE KEY-----) that matches the certificate"
        raise TlsConfigError(f"{_setting('key_file')}: {tls.key_file}: {reason}: {hint}") from None


def _scratch_check(tls: TlsSettings) -> x509.Certificate:
    """Load everything into a throw-away context: the leaf certificate, or TlsConfigError."""
    assert tls.cert_file is not None and tls.key_file is not None
    leaf = _leaf(_read(tls.cert_file, "cert_file"), tls.cert_file)
    _read(tls.key_file, "key_file")
    _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)
    if tls.client_ca_file is not None:
        _client_cas(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)
    return leaf


def _client_cas(context: ssl.SSLContext, tls: TlsSettings) -> None:
    assert tls.client_ca_file is not None
    data = _read(tls.client_ca_file, "client_ca_file")
    try:
        context.load_verify_locations(cadata=data.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise TlsConfigError(
            f"{_setting('client_ca_file')}: {tls.client_ca_file} holds no PEM CA certificate: {exc}; "
            "give the CA bundle that signs the clients' certificates"
        ) from None


def _describe(leaf: x509.Certificate) -> str:
    subject = leaf.subject.rfc4514_string() or "(no subject)"
    return f"{subject}, valid until {iso_time(leaf.not_valid_after_utc.timestamp())}"


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The SSLContext of the API listener (TLS 1.2+; client certificates required when client_ca_file is set).
    Raises TlsConfigError, naming the setting, for any file that cannot serve."""
    leaf = _scratch_check(tls)
    if leaf.not_valid_after_utc < datetime.now(UTC):
        log.warning("the TLS certificate in %s has expired (%s)", tls.cert_file, _describe(leaf))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(context, tls)
    if tls.client_ca_file is not None:
        _client_cas(context, tls)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _mtimes(tls: TlsSettings) -> tuple[float, ...]:
    stamps = []
    for path in (tls.cert_file, tls.key_file, tls.client_ca_file):
        try:
            stamps.append(path.stat().st_mtime_ns if path is not None else 0)
        except OSError:
            stamps.append(-1)
    return tuple(stamps)


class CertificateReloader:
    """Keeps `context` serving what the files hold now: reload on SIGHUP and on a changed modification time."""

    def __init__(self, tls: TlsSettings, context: ssl.SSLContext) -> None:
        self.tls = tls
        self.context = context
        self._loaded = _mtimes(tls)
        self._hup = asyncio.Event()

    def reload(self) -> bool:
        """Load the files into the live context if they form a good pair; True when it did."""
        self._loaded = _mtimes(self.tls)
        try:
            leaf = _scratch_check(self.tls)
        except TlsConfigError as exc:
            log.error("TLS files not reloaded, still serving the previous certificate: %s", exc)
            return False
        _load_pair(self.context, self.tls)
        if self.tls.client_ca_file is not None:
            _client_cas(self.context, self.tls)
        log.info("TLS certificate reloaded from %s: %s", self.tls.cert_file, _describe(leaf))
        return True

    def changed(self) -> bool:
        return _mtimes(self.tls) != self._loaded

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        remove: Callable[[], object] = lambda: None  # noqa: E731
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self._hup.set)
            remove = lambda: loop.remove_signal_handler(signal.SIGHUP)  # noqa: E731
        try:
            while not stop.is_set():
                waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._hup.wait())}
                _, pending = await asyncio.wait(
                    waiters, timeout=self.tls.reload_interval_seconds, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in pending:
                    waiter.cancel()
                if stop.is_set():
                    break
                if self._hup.is_set():
                    self._hup.clear()
                    log.info("SIGHUP: re-reading the TLS files")
                    self.reload()
                elif self.changed():
                    # Give a writer that replaces both files a moment to finish the second one.
                    await asyncio.sleep(min(0.5, self.tls.reload_interval_seconds))
                    self.reload()
        finally:
            remove()
