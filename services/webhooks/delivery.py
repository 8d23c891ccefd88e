"""Sending queued deliveries: an HTTP POST of the JSON body with `X-Hanzo-Event`, `X-Hanzo-Delivery` and
`X-Hanzo-Signature-256: sha256=<hex HMAC-SHA256 of the body with the webhook's secret>`.

A 2xx answer delivers it. Anything else (another status, a timeout, a refused connection, a URL the SSRF
guard refuses at this moment) is retried with doubling backoff from `webhooks.backoff_initial_seconds` up
to `webhooks.backoff_max_seconds`, for `webhooks.retry_for_seconds` (24 h) after it was queued; then it is
`failed`. Every URL goes through services/core/ssrf.py at each attempt (redirects included, connections
pinned to checked addresses): namespace webhooks are untrusted, registry-wide ones trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from services.core.settings import WebhookSettings
from services.core.ssrf import Trust, UrlPolicy, guarded_connector, guarded_request
from services.core.webhooks.model import Webhook
from services.core.webhooks.store import FAILED, PENDING, SUCCEEDED, Delivery, DeliveryStore, WebhookStore
from services.webhooks.metrics import WebhookMetrics

log = logging.getLogger(__name__)

USER_AGENT = "hanzo-registry-webhooks/1"
CLEANUP_EVERY = 3600.0


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def url_policy(hook: Webhook, settings: WebhookSettings) -> UrlPolicy:
    if hook.registry_wide:
        return UrlPolicy(Trust.TRUSTED)
    return UrlPolicy(Trust.UNTRUSTED, allow_private=settings.allow_private_targets)


def next_attempt(settings: WebhookSettings, *, attempts: int, created: float, now: float) -> float | None:
    """When to try again after `attempts` failures, or None when the retry window is over."""
    delay: float = min(settings.backoff_initial_seconds * 2 ** max(0, attempts - 1), settings.backoff_max_seconds)
    if now + delay > created + settings.retry_for_seconds:
        return None
    return float(now + delay)


class Sender:
    def __init__(self, *, hooks: WebhookStore, deliveries: DeliveryStore, settings: WebhookSettings,
                 metrics: WebhookMetrics, clock: Callable[[], float] = time.time) -> None:
        self.hooks = hooks
        self.deliveries = deliveries
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        self._wake = asyncio.Event()
        self._sessions: dict[UrlPolicy, aiohttp.ClientSession] = {}
        self._next_cleanup = 0.0

    def wake(self) -> None:
        self._wake.set()

    def _session(self, policy: UrlPolicy) -> aiohttp.ClientSession:
        session = self._sessions.get(policy)
        if session is None or session.closed:
            session = aiohttp.ClientSession(connector=guarded_connector(policy), headers={"User-Agent": USER_AGENT})
            self._sessions[policy] = session
        return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.send_due()
                    await self._cleanup()
                except Exception as exc:  # a backend outage: the next round tries again
                    log.warning("webhook deliveries: %s: %s", type(exc).__name__, str(exc)[:300])
                self._wake.clear()
                waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.poll_interval_seconds):
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
        finally:
            await self.close()

    async def send_due(self) -> int:
        """Send every delivery due now (claimed first, so replicas share the queue); returns how many."""
        sent = 0
        limit = asyncio.Semaphore(self.settings.concurrency)
        while True:
            due = await self.deliveries.due(limit=max(50, self.settings.concurrency * 4))
            claimed = [d for d in due if await self.deliveries.claim(d, lease_seconds=self._lease())]
            if not claimed:
                return sent

            async def one(d: Delivery) -> None:
                async with limit:
                    await self.send(d)

            await asyncio.gather(*(one(d) for d in claimed))
            sent += len(claimed)

    def _lease(self) -> float:
        return self.settings.timeout_seconds * 2 + 30.0

    async def send(self, d: Delivery) -> None:
        doc = await self.hooks.get_doc(d.webhook)
        started = time.monotonic()
        if doc is None:
            await self.deliveries.finish(d, status=FAILED, next_at=self._clock(), response_code=None,
                                         error="the webhook was deleted", duration=0.0)
            self.metrics.deliveries.labels(event=d.event, outcome="failed").inc()
            return
        from services.core.webhooks.model import from_doc

        hook = from_doc(doc)
        code: int | None = None
        error = ""
        try:
            secret = self.hooks.secret_of(doc)
            payload = d.body.encode()
            headers = {"Content-Type": "application/json", "X-Hanzo-Event": d.event, "X-Hanzo-Delivery": d.id,
                       "X-Hanzo-Signature-256": signature(secret, payload)}
            policy = url_policy(hook, self.settings)
            response = await guarded_request(
                self._session(policy), "POST", hook.url, policy=policy, data=payload, headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds))
            try:
                code = response.status
                if not 200 <= code < 300:
                    text = await _snippet(response)
                    error = f"answered {code}" + (f": {text}" if text else "")
            finally:
                response.release()
        except TimeoutError:
            error = f"no answer within {self.settings.timeout_seconds:g} s"
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
        duration = time.monotonic() - started
        self.metrics.duration.observe(duration)
        now = self._clock()
        if not error:
            await self.deliveries.finish(d, status=SUCCEEDED, next_at=now, response_code=code, error="",
                                         duration=duration)
            self.metrics.deliveries.labels(event=d.event, outcome="succeeded").inc()
            return
        again = next_attempt(self.settings, attempts=d.attempts + 1, created=d.created, now=now)
        outcome = "retry" if again is not None else "failed"
        self.metrics.deliveries.labels(event=d.event, outcome=outcome).inc()
        log.info("webhook %s delivery %s (%s) %s: %s", hook.id, d.id, d.event,
                 "will be retried" if again is not None else "gave up", error)
        await self.deliveries.finish(d, status=PENDING if again is not None else FAILED,
                                     next_at=again if again is not None else now, response_code=code, error=error,
                                     duration=duration)

    async def _cleanup(self) -> None:
        now = self._clock()
        if now < self._next_cleanup:
            return
        self._next_cleanup = now + CLEANUP_EVERY
        await self.deliveries.forget_finished(older_than=now - self.settings.retention_days * 86400)


async def _snippet(response: Any) -> str:
    with contextlib.suppress(Exception):
        raw = await response.content.read(300)
        return str(raw.decode("utf-8", "replace")).strip()
    return ""
