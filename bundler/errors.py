"""Domain errors, defined once; bundler.app turns them into HTTP responses in one place."""

from __future__ import annotations

import errno

# errno values that mean the service's data dir, not the request or the source, is at fault.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT})


# A message in a log line or a one-line answer is cut here.
ONE_LINE_CHARS = 500


def one_line(text: str, max_chars: int = ONE_LINE_CHARS) -> str:
    """``text`` as one line (esbuild's reports, framework messages: several lines each),
    cut at ``max_chars``, with anything that cannot be written as UTF-8 (a header's stray
    bytes, kept as surrogates) escaped: it goes into logs and answers as is."""
    flat = " ".join(text.split())[:max_chars]
    return flat.encode("utf-8", "backslashreplace").decode("utf-8")


class ConfigError(Exception):
    """A setting is wrong: the service refuses to start, with this one-line message."""


class BundlerError(Exception):
    """An error a client can act on; ``status`` is its HTTP status."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def summary(self, max_chars: int = ONE_LINE_CHARS) -> str:
        """The whole message as one line, for a log line: never only its first line,
        which for esbuild's reports is "could not build version X:" and nothing more."""
        return one_line(self.message, max_chars)


class BadRequest(BundlerError):
    status = 400


class RequestTimeout(BundlerError):
    status = 408


class VersionNotFound(BundlerError):
    status = 404


class NotFound(BundlerError):
    status = 404


class UnknownModule(BundlerError):
    status = 404

    def __init__(self, version: str, modules: list[str], hint: str = "") -> None:
        names = ", ".join(modules)
        noun = "module" if len(modules) == 1 else "modules"
        super().__init__(f"unknown {noun} in version {version}: {names}{hint}")
        self.version = version
        self.modules = modules
        self.hint = hint

    def suggesting(self, suggestions: str) -> UnknownModule:
        """The same error with ``suggestions`` ("; did you mean ...?") before its hint."""
        return UnknownModule(self.version, self.modules, suggestions + self.hint)


class BuildFailed(BundlerError):
    """esbuild rejected the source (a syntax error, a missing import inside a module)."""

    status = 422


class BuildCrashed(BundlerError):
    """esbuild died without reporting an error: our fault, not the request's, so not remembered."""

    status = 500


class BuildTimeout(BundlerError):
    status = 504


class TooManyRequests(BundlerError):
    """The client is past one of its limits (bundler.limits): 429 with Retry-After."""

    status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(BundlerError):
    """Not now; a later retry may work (503 with Retry-After)."""

    status = 503


class SourceUnavailable(Unavailable):
    """A version's source could not be pulled now."""


class Overloaded(Unavailable):
    """The build queue is full and no fallback covers the request."""


class DiskFault(Unavailable):
    """The data dir cannot be written (full, read-only, failing): the service's fault, never
    the request's; not remembered, and answered with the fallback where it covers."""

    def __init__(self, what: str, exc: BaseException | str) -> None:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        super().__init__(f"the service cannot write its data dir ({what}: {detail}); retry")
