"""Logging set-up: JSON lines for production, plain text for a terminal."""

from __future__ import annotations

import json
import logging
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

# Attributes every LogRecord has; anything else was passed with extra= and is logged.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def configure_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# Where a bundle handler leaves how it answered the request (hit, built, fallback, shed).
MODE = web.RequestKey("mode", str)
# A query string is logged up to this many characters (a page may send hundreds of names).
MAX_LOGGED_PATH = 2000


class AccessLogger(AbstractAccessLogger):
    """One line per request, through the service's own formatter (JSON in production):
    what pages ask for, and how each was answered. The line's fields are the dashboard's
    and the operator's grep: method, path, status, mode, bytes, duration_ms, remote."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path_qs[:MAX_LOGGED_PATH],
                "status": response.status,
                "mode": request.get(MODE, "-"),
                "bytes": response.body_length,  # sent: headers and body
                "duration_ms": round(time * 1000, 2),
                "remote": request.remote,
            },
        )
