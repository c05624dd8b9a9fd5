"""One build request on a long-lived esbuild, within its deadline.

A build cannot be stopped alone: at the deadline its esbuild is killed whole. The other
builds that esbuild had in flight did nothing wrong, so each runs once more on a new
one. A crash fails every build in flight, since which one caused it cannot be told; it
is logged with esbuild's last words and answered as a crash (500-class, retry later),
never as the page's fault.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from bundler.build.outputs import EsbuildResult
from bundler.build.pool import EsbuildPool
from bundler.build.reports import MAX_ERROR_CHARS, sanitize
from bundler.errors import BuildCrashed, BuildTimeout, Unavailable
from bundler.esbuild_service import EsbuildService, ServiceGone

logger = logging.getLogger(__name__)

# A build whose esbuild was killed for another build's deadline runs again this often.
ATTEMPTS_AFTER_A_KILL = 1


async def run_build(
    esbuilds: EsbuildPool,
    request: dict[str, Any],
    *,
    nice_by: int,
    timeout_s: float,
    key: str,
    source_root: Path,
    workdir: Path,
) -> EsbuildResult:
    """``request`` (bundler.build.request) on the esbuild ``nice_by`` nicer than the
    service; esbuild's own error report comes back formatted, as a failed result."""
    for attempt in range(1 + ATTEMPTS_AFTER_A_KILL):
        service: EsbuildService | None = None
        try:
            async with asyncio.timeout(timeout_s):
                service = await esbuilds.service_for(nice_by)
                response = await service.request(request)
                if not response.get("errors"):
                    return EsbuildResult(
                        None,
                        response["metafile"],
                        {f["path"]: f["contents"] for f in response["outputFiles"]},
                    )
                formatted = await service.request(
                    {
                        "command": "format-msgs",
                        "messages": response["errors"],
                        "isWarning": False,
                        "color": False,
                    }
                )
                return EsbuildResult("".join(formatted["messages"]), "{}", {})
        except TimeoutError:
            if service is not None:
                service.kill()
            raise BuildTimeout(
                f"esbuild did not finish within {timeout_s:g} s and was stopped; "
                "try fewer modules or retry later"
            ) from None
        except ServiceGone as gone:
            if esbuilds.closed:
                raise Unavailable("the service is shutting down; retry") from None
            if gone.killed and attempt < ATTEMPTS_AFTER_A_KILL:
                continue  # another build's deadline: this one runs again
            raise crashed(gone, key, source_root, workdir) from None
    raise AssertionError("unreachable")


def crashed(gone: ServiceGone, key: str, source_root: Path, workdir: Path) -> BuildCrashed:
    logger.error(
        "esbuild crashed",
        extra={
            "key": key,
            "returncode": gone.returncode,
            "stderr": sanitize(gone.stderr[-MAX_ERROR_CHARS:], source_root, workdir),
        },
    )
    return BuildCrashed(
        f"esbuild exited with status {gone.returncode} without an error report; "
        "the service logged it, retry later"
    )
