"""Parse and validate a bundle request into its canonical form.

Everything a request says is checked here, before any of it reaches the disk,
a URL or a subprocess. Module names are sorted and deduplicated, so every
permutation of one list names one cache entry and one build.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from bundler.errors import BadRequest

# Characters a module path may use; everything else (quotes, backslashes, spaces,
# '=', ':', '%') is refused, so a name is safe inside a JavaScript string literal.
# (fullmatch, never "$": "$" also matches before a trailing newline.)
MODULE_CHARS = re.compile(r"[A-Za-z0-9_.@+/-]+")
# A release version: starts alphanumeric, then a small safe alphabet (semver fits).
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
ALLOWED_PARAMS = frozenset({"modules", "v"})
# How the parameters are listed in messages: as a URL writes them.
PARAM_ORDER = ("modules", "v", "css")
# Bumped whenever the bundle wrapper or what a bundle holds changes (3: its modules' CSS),
# so old cache entries are never reused.
FORMAT_VERSION = 3


# A bundle's form: a classic script that registers its modules (IIFE), or an ES module
# that exports them (/bundle.mjs).
CLASSIC, MODULE = "iife", "esm"


@dataclass(frozen=True)
class BuildOptions:
    target: str
    registry_name: str
    minify: bool = True
    asset_inline_max_bytes: int = 8192
    format: str = CLASSIC

    @property
    def module(self) -> bool:
        return self.format == MODULE


@dataclass(frozen=True)
class BundleSpec:
    version: str
    modules: tuple[str, ...]
    options: BuildOptions
    # The digest of the version's source (bundler.digest): a bundle is only ever served for
    # the exact bytes it was built from, whichever source or deployment asks.
    content: str = ""

    @functools.cached_property
    def key(self) -> str:
        """Stable cache key of the source's content + version + canonical module list +
        build options: the key of every tier (memory, disk, Redis)."""
        options = dict(self.options.__dict__)
        if options["format"] == CLASSIC:
            # Left out, so the classic bundles' keys are those from before the module form
            # existed: a deployment that adds it keeps its caches.
            del options["format"]
        payload = json.dumps(
            [FORMAT_VERSION, self.content, self.version, self.modules, options], sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    @functools.cached_property
    def query(self) -> str:
        """The canonical query string of this bundle, URL-encoded (for links and logs)."""
        return self.query_for(self.version)

    @property
    def path(self) -> str:
        """The endpoint that serves this bundle: /bundle.js or /bundle.mjs."""
        return "bundle.mjs" if self.options.module else "bundle.js"

    def query_for(self, version: str) -> str:
        """The same query naming another version (a build writes a mark there:
        bundler.build.marks)."""
        return urllib.parse.urlencode({"modules": ",".join(self.modules), "v": version}, safe=",/@")


def validate_version(version: str) -> str:
    if not VERSION_PATTERN.fullmatch(version) or ".." in version:
        raise BadRequest(
            f"invalid version {version!r}: use letters, digits and . _ + - "
            "(at most 64 characters, starting with a letter or digit), e.g. v=1.4.2"
        )
    return version


def validate_module(name: str, max_chars: int) -> str:
    if not name:
        raise BadRequest("empty module name: check for a stray comma in modules=")
    if len(name) > max_chars:
        raise BadRequest(f"module name longer than {max_chars} characters: {name[:40]!r}...")
    if not MODULE_CHARS.fullmatch(name):
        raise BadRequest(f"invalid module name {name!r}: use letters, digits and _ . @ + - / only")
    if name[0] in "/-":
        raise BadRequest(f"invalid module name {name!r}: it must not start with '/' or '-'")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise BadRequest(
                f"invalid module name {name!r}: empty, '.' and '..' path segments are not allowed"
            )
    return name


def parse_modules(raw: str, max_modules: int, max_chars: int) -> tuple[str, ...]:
    names = raw.split(",")
    # Bound the work before validating each name: a huge list is refused outright.
    if len(names) > max_modules:
        raise BadRequest(f"too many modules: {len(names)} given, at most {max_modules} allowed")
    return tuple(sorted({validate_module(n, max_chars) for n in names}))


def parse_query(
    pairs: Sequence[tuple[str, str]],
    *,
    default_version: str,
    options: BuildOptions,
    max_modules: int,
    max_chars: int,
    other_params: frozenset[str] = frozenset(),
) -> tuple[BundleSpec, bool]:
    """The spec, and whether the version was pinned explicitly (that decides caching headers).

    ``pairs`` is the query as sent, repeats included: a repeated parameter is refused
    rather than silently taking one of its values. ``other_params`` are the endpoint's
    own (``css`` of /bundle.js): allowed here, read by the endpoint.
    """
    keys = [k for k, _ in pairs]
    allowed = ALLOWED_PARAMS | other_params
    unknown = sorted(set(keys) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s): {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed, key=PARAM_ORDER.index))}"
        )
    for name in sorted(ALLOWED_PARAMS):
        if keys.count(name) > 1:
            raise BadRequest(f"query parameter {name!r} given more than once")
    query = {k: v for k, v in pairs if k in ALLOWED_PARAMS}
    if "modules" not in query:
        raise BadRequest(
            "missing modules=: name the modules to bundle, e.g. modules=components/hero"
        )
    pinned = "v" in query
    version = validate_version(query["v"] if pinned else default_version)
    modules = parse_modules(query["modules"], max_modules, max_chars)
    return BundleSpec(version=version, modules=modules, options=options), pinned
