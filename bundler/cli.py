"""`bundler serve | build-fallback`: a thin shell over Settings and the library.

Every flag can also come from a BUNDLER_* environment variable. A setting that
cannot work ends the process with one clear line and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiohttp import web

from bundler import status_view, warm
from bundler.app import create_app
from bundler.build.builder import Builder
from bundler.components import make_components
from bundler.connections import LISTEN_BACKLOG, ConnectionRunner, Limits
from bundler.errors import BundlerError, ConfigError, one_line
from bundler.fallback.build import build_fallback, offline_plan
from bundler.fallback.model import describe_fallback
from bundler.fallback.storage import BUILT_FALLBACKS, write_fallback
from bundler.flags import BUILD_SETTINGS, WARM_SETTINGS, add_arguments, settings_from_args
from bundler.keys import CONNECTIONS, IN_FLIGHT, SERVICE
from bundler.logs import AccessLogger, configure_logging
from bundler.settings import Settings

logger = logging.getLogger("bundler")

EXIT_CONFIG = 2
EXIT_FAILED = 1
# In asyncio debug mode, callbacks longer than this are logged with their name.
DEBUG_SLOW_CALLBACK_S = 0.01
GIL_SWITCH_INTERVAL_S = 0.001
# After the shutdown timeout: how long the 503s of aborted waits may take to be written.
ABORT_GRACE_S = 1.0


async def _serve(settings: Settings) -> None:
    """Runs until SIGTERM/SIGINT, then drains: /readyz 503 for drain_s while still
    serving, then the listener closes, in-flight requests finish, builds are killed."""
    app = create_app(settings)
    loop = asyncio.get_running_loop()
    if loop.get_debug():  # PYTHONASYNCIODEBUG=1: name every callback that holds the loop
        loop.slow_callback_duration = DEBUG_SLOW_CALLBACK_S
    # aiohttp's own shutdown waits its timeout for handlers, then again after cancelling
    # them: twice. The service waits for in-flight requests itself (the shutdown timeout),
    # answers what still waits with 503, and leaves aiohttp only a moment.
    runner = ConnectionRunner(
        app,
        Limits.from_settings(settings),
        app[CONNECTIONS],
        handle_signals=False,
        access_log=logging.getLogger("bundler.access") if settings.access_log == "on" else None,
        access_log_class=AccessLogger,
        shutdown_timeout=ABORT_GRACE_S / 2,
    )
    await runner.setup()  # runs the startup half of cleanup_ctx: ConfigError surfaces here
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except OSError as exc:  # the port is taken, the address is wrong
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
            ) from None
        # Everything so far (modules, classes, settings) lives as long as the process: move
        # it out of the collector's sight, so a full collection does not walk it all
        # again while requests wait (tens of milliseconds each time).
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()

        def on_signal(signum: int) -> None:
            if app[SERVICE].draining:
                stop.set()  # a second signal: stop now
                return
            logger.info("signal received; draining", extra={"signal": signal.Signals(signum).name})
            app[SERVICE].begin_drain()
            loop.call_later(settings.drain_s, stop.set)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await stop.wait()
        logger.info("closing the listener; finishing in-flight requests")
        await _finish_requests(runner, app, settings.shutdown_timeout_s)
    finally:
        await runner.cleanup()
        gc.unfreeze()  # let interpreter shutdown finalize everything (native extensions too)
    logger.info("stopped")


async def _finish_requests(runner: web.AppRunner, app: web.Application, timeout_s: float) -> None:
    """Close the listener, let in-flight requests finish within ``timeout_s``; then answer
    every request still waiting (for a build, a fallback, a pull) with a 503."""
    for site in list(runner.sites):
        await site.stop()
    in_flight = app[IN_FLIGHT]
    try:
        await asyncio.wait_for(in_flight.idle.wait(), timeout_s)
        return
    except TimeoutError:
        pass
    aborted = app[SERVICE].abort_waiters()
    logger.warning(
        "shutdown timeout reached; answering the requests still waiting with 503",
        extra={"requests": in_flight.count, "waiters": aborted, "timeout_s": timeout_s},
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(in_flight.idle.wait(), ABORT_GRACE_S / 2)


def _tune_runtime() -> None:
    """Latency knobs for a loop that shares the process with worker threads and children.

    - Python 3.11 waits for every child process in a thread of its own, started on
      the loop; a pidfd watched by the loop is cheaper (3.12+ does this itself).
    - A worker thread running Python code holds the GIL for up to the switch
      interval (5 ms) before the loop gets it back; 1 ms keeps probes prompt.
    """
    if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    configure_logging(settings.log_format, settings.log_level)
    _tune_runtime()
    asyncio.run(_serve(settings))  # a listen error is a ConfigError; nothing else is one
    return 0


async def _build_fallback(
    settings: Settings, builder: Builder, version: str, out_dir: Path
) -> Path:
    parts = make_components(settings, builder=builder, max_versions=1)
    source, options = parts.source, parts.options
    plan = offline_plan(settings, version)
    await source.start()
    try:
        async with source.use(version) as root:
            build = await build_fallback(builder, root, version, options, plan)
            build = dataclasses.replace(build, source_sha256=await source.digest(version))
    finally:
        await builder.close()
        await source.close()
    target = out_dir / version
    await asyncio.to_thread(write_fallback, target, options, build)
    print(describe_fallback(build.fallback().summary()) + f" -> {target.resolve()}")
    return target


def build_fallback_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    configure_logging(settings.log_format, "WARNING")
    # Where the service looks for the fallbacks it builds itself: never --fallback-dir,
    # which is read-only input (the checkout's static_fallback/ for the examples).
    out_dir = Path(args.out) if args.out else Path(settings.data_dir) / BUILT_FALLBACKS
    # One esbuild with every CPU: nothing else is running.
    builder = Builder.from_settings(
        settings,
        pool_size=1,
        threads_per_build=settings.threads_per_build * settings.pool_size,
        niceness=0,
    )
    try:
        asyncio.run(_build_fallback(settings, builder, args.version, out_dir))
    except BundlerError as exc:
        print(f"bundler: build-fallback failed: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    return 0


async def _warm(
    settings: Settings, args: argparse.Namespace, combos: list[list[str]]
) -> warm.Report:
    if args.from_server:
        combos = await warm.combinations_from_server(args.from_server, args.top)

    async def run(target: warm.Target) -> warm.Report:
        problem = await warm.warm_fallback(target)  # first: a release never meets a cold one
        report = await warm.run_with_progress(combos, target, args.concurrency)
        if problem is not None:
            report.failures.insert(0, (f"fallback of {args.version}", one_line(problem)))
        return report

    return await warm.with_target(
        settings, args.version, args.server, run, args.carry_from, args.format
    )


def warm_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    configure_logging(settings.log_format, "WARNING")
    if bool(args.input) == bool(args.from_server):
        raise ConfigError(
            "give the combinations with --input FILE (or - for stdin) or --from-server URL"
        )
    if args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    combos: list[list[str]] = []
    try:
        if args.input == "-":
            combos = warm.read_combinations(sys.stdin)
        elif args.input:
            combos = warm.read_combinations(Path(args.input).read_text().splitlines())
        report = asyncio.run(_warm(settings, args, combos))
    except (warm.WarmFailed, aiohttp.ClientError, OSError, BundlerError) as exc:
        print(f"bundler: warm failed: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    for combination, reason in report.failures:
        print(f"failed: {combination}: {reason}", file=sys.stderr)
    return 0 if report.ok else EXIT_FAILED


def status_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        return status_view.run(args.url, settings.warm_token, args.watch)
    except KeyboardInterrupt:
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

    fallback_parser = commands.add_parser(
        "build-fallback",
        help="build a version's static fallback bundle (the most wanted modules within "
        "--fallback-max-bytes) and its source map",
    )
    fallback_parser.add_argument("--version", dest="version", required=True, metavar="VERSION")
    fallback_parser.add_argument(
        "--out",
        default=None,
        help="directory to write VERSION/ into (default: DATA_DIR/fallback, where the "
        "service finds it; give the directory --fallback-dir reads to ship one in an image)",
    )
    add_arguments(fallback_parser, only=BUILD_SETTINGS)
    fallback_parser.set_defaults(func=build_fallback_command)

    warm_parser = commands.add_parser(
        "warm",
        help="build combinations of a version ahead of its traffic",
        description="Build each combination (one comma-separated module list per line) of "
        "--version, against a running server (--server) or offline into --data-dir.",
    )
    warm_parser.add_argument("--version", dest="version", required=True, metavar="VERSION")
    warm_parser.add_argument("--input", help="file of combinations, - for stdin")
    warm_parser.add_argument("--from-server", metavar="URL", help="take GET URL/combos instead")
    warm_parser.add_argument("--top", type=int, default=500, help="how many from --from-server")
    warm_parser.add_argument(
        "--server", metavar="URL", help="warm this running server (POST /warm)"
    )
    warm_parser.add_argument("--concurrency", type=int, default=4, help="combinations at once")
    warm_parser.add_argument(
        "--carry-from",
        metavar="VERSION",
        help="offline: carry over this version's bundles in the data dir where their inputs "
        "did not change, instead of building them (a server carries from what it has)",
    )
    warm_parser.add_argument(
        "--format",
        choices=["iife", "esm"],
        default="iife",
        help="which form to warm: iife (/bundle.js, the default) or esm (/bundle.mjs); "
        "run twice to warm both",
    )
    add_arguments(warm_parser, only=WARM_SETTINGS)
    warm_parser.set_defaults(func=warm_command)
    status_parser = commands.add_parser(
        "status",
        help="print a running server's status (as /status shows it) in the terminal",
        description="One screen of a running server's status: answers, tailored share, "
        "TTFB, builds, lag, tiers and each version's release.",
    )
    status_parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    status_parser.add_argument("--watch", action="store_true", help="draw it again every 3 s")
    add_arguments(status_parser, only=frozenset({"warm_token"}))
    status_parser.set_defaults(func=status_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"bundler: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return code


if __name__ == "__main__":
    sys.exit(main())
