"""GET /status and /status.json: a release as an operator watches it.

/status is one HTML page (bundler/web/status.html). The current numbers are rendered
into it here, so it shows them without JavaScript. Its script (bundler/web/status.js)
then draws the last minutes from /status.json as plain SVG (no chart library, nothing
from a CDN), and every few seconds takes the numbers again from /status (one renderer,
this one) and the series again from /status.json. Both reveal traffic, so where ``--warm-token`` is
set they need it: as ``X-Warm-Token`` (``bundler status``), or as the password of HTTP
Basic authentication, which a browser asks for and then sends with the page's own
requests. Neither is ever cached.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
from html import escape
from typing import Any

from aiohttp import web

from bundler.handlers.bundles import web_asset
from bundler.keys import SETTINGS, STATUS

NO_STORE = {"Cache-Control": "no-store"}
NONE = "-"  # a figure there is none of yet
PLACEHOLDER = "<!-- current numbers -->"
# The page's script is /status.js (no inline script); its style is inline.
CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"


def authorized(request: web.Request) -> bool:
    token = request.app[SETTINGS].warm_token
    if not token:
        return True
    given = request.headers.get("X-Warm-Token", "")
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if not given and scheme.lower() == "basic":
        try:  # any user name; the token is the password
            given = base64.b64decode(credentials, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            given = ""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


def refuse() -> web.Response:
    return web.Response(
        status=401,
        text="the status page needs the warm token: as X-Warm-Token, or as the password "
        "the browser asks for\n",
        headers={**NO_STORE, "WWW-Authenticate": 'Basic realm="bundler status"'},
    )


async def handle_status_json(request: web.Request) -> web.Response:
    if not authorized(request):
        return refuse()
    return web.json_response(request.app[STATUS].status(), headers=NO_STORE)


async def handle_status(request: web.Request) -> web.Response:
    if not authorized(request):
        return refuse()
    now = render_now(request.app[STATUS].status())
    return web.Response(
        text=page().replace(PLACEHOLDER, now),
        content_type="text/html",
        headers={**NO_STORE, "Content-Security-Policy": CSP},
    )


@functools.cache
def page() -> str:
    """The page's template, read once from the package (bundler/web/status.html)."""
    return web_asset("status.html").decode()


def number(value: float | None, digits: int = 1, unit: str = "") -> str:
    return NONE if value is None else f"{value:,.{digits}f}{unit}"


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def render_now(status: dict[str, Any]) -> str:
    """The current numbers as HTML tables: what the page shows without JavaScript."""
    now = status["now"] or {}
    answers = now.get("answers", {})
    share = now.get("tailored_share")
    bounds = status["bounds"]
    state = "draining" if status["draining"] else ("ready" if status["ready"] else "not ready")
    rows = [
        ("state", state),
        ("answers / s", ", ".join(f"{k} {v:,.1f}" for k, v in answers.items()) or NONE),
        ("tailored share", NONE if share is None else f"{share:.1%}"),
        ("TTFB p50 / p99", f"{number(now.get('ttfb_p50_ms'), 2)} / {number(now.get('ttfb_p99_ms'), 2)} ms"),
        ("build queue / pool busy", f"{number(now.get('queue'), 0)} / {number(now.get('busy'), 0)} of {status['pool_size']:.0f}"),
        ("esbuild runs / s", number(now.get("esbuild_runs"))),
        ("event-loop lag", number(now.get("lag_ms"), 1, " ms")),
        ("memory tier", f"{mib(now.get('memory_bytes', 0))} of {mib(bounds['memory_bytes'])}"),
        ("disk tier", f"{mib(now.get('disk_bytes', 0))} of {mib(bounds['disk_bytes'])}"),
    ]  # fmt: skip
    out = ['<table class="now"><tbody>']
    out += [f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows]
    out.append("</tbody></table>")
    out.append(
        '<table class="versions"><thead><tr><th>version</th><th>pulled</th><th>pull</th>'
        "<th>fallback usable / whole</th><th>fallback size</th><th>modules</th>"
        "<th>left out</th><th>carried / rebuilt</th></tr></thead><tbody>"
    )
    for v in status["versions"]:
        fallback = v["fallback"] or {}
        ready = v["fallback_ready_s"]
        left_out = sum(fallback.get("left_out_counts", {}).values()) if fallback else None
        cells = [
            v["version"] + (" (default)" if v["default"] else ""),
            "yes" if v["here"] else "no",
            number(v["pull_s"], 2, " s"),
            f"{number(ready.get('first'), 2, ' s')} / {number(ready.get('all'), 2, ' s')}",
            NONE if not fallback else f"{fallback['bytes'] / 1024:,.0f} KB",
            NONE if not fallback else str(fallback["modules"]),
            NONE if left_out is None else str(left_out),
            f"{v['carried']} / {v['rebuilt']}",
        ]
        out.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)
