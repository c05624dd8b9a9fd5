"""`bundler serve`: a thin shell over Settings and create_app.

Every flag can also come from a BUNDLER_* environment variable. A setting that
cannot work ends the process with one clear line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from bundler.app import create_app
from bundler.errors import ConfigError
from bundler.logs import configure_logging
from bundler.settings import add_arguments, settings_from_args

logger = logging.getLogger("bundler")

EXIT_CONFIG = 2


def serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bundler", description="On-demand JavaScript bundles built by esbuild."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Serve GET /bundle.js?modules=a,b&v=VERSION. Each flag's default comes "
        "from the BUNDLER_* environment variable named beside it.",
    )
    add_arguments(serve_parser)
    serve_parser.set_defaults(func=serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"bundler: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
