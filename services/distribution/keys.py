"""Typed aiohttp application keys of the distribution service."""

from __future__ import annotations

from aiohttp import web

from services.core.content.registry import Registry
from services.core.outages import OutageTracker
from services.core.policy.gates import PullGates
from services.core.settings import Settings
from services.core.telemetry import Metrics
from services.distribution.access import AccessControl
from services.distribution.cache.service import PullThroughCache

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)
ACCESS = web.AppKey("access", AccessControl)
METRICS = web.AppKey("metrics", Metrics)
GATES = web.AppKey("pull_gates", PullGates)
OUTAGES = web.AppKey("outages", OutageTracker)
PULLTHROUGH = web.AppKey("pullthrough", PullThroughCache)

AUDIT_DETAIL = web.RequestKey("audit_detail", dict)
"""What a handler adds to the audit entry of its request (e.g. a forced change and what it replaced)."""
