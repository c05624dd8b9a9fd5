"""The app's typed keys, in one place: what create_app puts in the application and the
handlers, the middleware and the CLI take from it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from bundler.connections import ConnectionStats
from bundler.service.core import BundleService
from bundler.settings import Settings
from bundler.status import StatusBoard


class InFlight:
    """Requests being handled now; the shutdown waits for them, up to its timeout."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()


SETTINGS = web.AppKey("settings", Settings)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
SERVICE = web.AppKey("service", BundleService)
REGISTRY = web.AppKey("registry", CollectorRegistry)
CONNECTIONS = web.AppKey("connections", ConnectionStats)
CLIENT = web.RequestKey("client", str)  # who asked (bundler.clients), on limited paths
STATUS = web.AppKey("status", StatusBoard)
# Observes a page's bundle answer time (the histogram and the status board).
ANSWERED: web.AppKey[Callable[[float], None]] = web.AppKey("answered")
