"""The default version made servable: what a pod's readiness waits for.

A pod is ready once every bundle request can be answered, which is once the default
version's fallback is loaded (bundler.service.core: ``ready``). At start it is loaded
from the data dir or the shipped static fallback, or the version is pulled and its
fallback built, in the background. A failure (the source down, nothing in the version
building) is logged and retried with backoff for as long as it takes, while /readyz
answers 503: the pod never serves a version it cannot answer for, and never gives up.
"""

from __future__ import annotations

import asyncio
import logging

from bundler.errors import BundlerError, one_line
from bundler.fallback.store import FallbackStore

logger = logging.getLogger(__name__)

RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0


async def prepare_default(fallbacks: FallbackStore, version: str) -> None:
    """Until ``version``'s fallback is loaded: tried, logged, retried with backoff."""
    delay_s = RETRY_MIN_S
    while True:
        try:
            if await fallbacks.get(version, retry=True) is not None:
                break
            failure = fallbacks.failure(version)
            problem = failure.message if failure else "its fallback could not be built"
        except BundlerError as exc:
            problem = exc.message
        logger.error(
            "default version not servable yet; not ready",
            extra={"version": version, "error": one_line(problem), "retry_in_s": delay_s},
        )
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, RETRY_MAX_S)
    logger.info("ready", extra={"default_version": version})
