"""What esbuild may look at to resolve an import, and what it finds there.

An import's resolution is a function of the specifier, the importer's place and what
exists at the paths esbuild tries: ``./x`` is ``x``, then ``x`` with each extension (and
``x.ts`` for ``x.js``), then ``x/package.json``'s main fields, then ``x/index`` with each
extension; a bare ``pkg/sub`` is looked for in ``node_modules/pkg`` of every directory up
from the importer, through that package's ``package.json``; every package.json above a
file may remap or reconfigure it (``browser``, ``exports``, ``imports``, ``sideEffects``,
``type``), and so may a tsconfig.json or jsconfig.json (its compiler options, and a bare
import tried under its ``baseUrl`` first).

Each of those looks is summed up as a fact, a string: every entry of a directory whose
name starts with ``x`` (a superset of ``x`` with any extension), with its kind (a file, a
directory, a symlink and its target); a package.json's fields that esbuild reads, never
its ``version``. Two versions with the same facts for every import resolve every import
alike. A specifier of a form not modelled here (``#imports``, absolute paths, URLs, a
bare import a tsconfig's ``paths`` may map), or a tsconfig.json that ``extends`` another
file or cannot be read as JSON, is a doubt (a fact starting "doubt "): the bundle is
rebuilt, never carried.

Directory listings are read once per probe (a sorted list of names: a prefix is a
bisection), so a bundle of hundreds of files costs milliseconds; reads run in a thread.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

# What esbuild reads of a package.json: not "version", "description", "scripts", ...
PACKAGE_FIELDS = ("name", "main", "module", "browser", "exports", "imports", "sideEffects", "type")
MAIN_FIELDS = ("browser", "module", "main")
CONFIG_FILES = ("tsconfig.json", "jsconfig.json")
# CSS names a file relative to itself even without "./" (url(a.png)).
CSS_KINDS = frozenset({"url-token", "import-rule", "composes-from"})


class Listing:
    def __init__(self, names: list[str], kinds: dict[str, str]) -> None:
        self.names = names  # sorted
        self.kinds = kinds  # name -> "f", "d", "l:<target>", "?"

    def starting(self, prefix: str) -> list[str]:
        at = bisect.bisect_left(self.names, prefix)
        out = []
        while at < len(self.names) and self.names[at].startswith(prefix):
            out.append(f"{self.names[at]}={self.kinds[self.names[at]]}")
            at += 1
        return out


class Probe:
    """One version's directories and package.json files, each read once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._listings: dict[str, Listing | None] = {}
        self._packages: dict[str, dict[str, object] | None] = {}
        self._chains: dict[str, list[str]] = {}
        self._configs: dict[str, list[tuple[str, dict[str, object]]]] = {}

    def listing(self, directory: str) -> Listing | None:
        if directory not in self._listings:
            self._listings[directory] = self._read(directory)
        return self._listings[directory]

    def _read(self, directory: str) -> Listing | None:
        kinds: dict[str, str] = {}
        try:
            with os.scandir(self.root / directory if directory else self.root) as entries:
                for entry in entries:
                    try:
                        if entry.is_symlink():
                            kinds[entry.name] = "l:" + os.readlink(entry.path)
                        else:
                            kinds[entry.name] = "d" if entry.is_dir() else "f"
                    except OSError:
                        kinds[entry.name] = "?"
        except OSError:  # not a directory, or none: as esbuild finds it
            return None
        return Listing(sorted(kinds), kinds)

    def kind(self, path: str) -> str:
        """ "-" (nothing), "f", "d" or "l:<target>" (no symlink is followed at the end)."""
        listing = self.listing(posixpath.dirname(path))
        return "-" if listing is None else listing.kinds.get(posixpath.basename(path), "-")

    def package(self, path: str) -> dict[str, object] | None:
        """The fields esbuild reads of the package.json at ``path`` (None: none there, or
        not readable as JSON)."""
        if path not in self._packages:
            self._packages[path] = self._relevant(path) if self.kind(path) != "-" else None
        return self._packages[path]

    def _relevant(self, path: str) -> dict[str, object] | None:
        try:
            data = json.loads((self.root / path).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return {"": data}
        return {field: data[field] for field in PACKAGE_FIELDS if field in data}

    # -------------------------------------------------------------- facts

    def _package_fact(self, path: str) -> str:
        fields = self.package(path)
        if fields is None:
            return f"package {path} -" if self.kind(path) == "-" else f"doubt unreadable {path}"
        return f"package {path} {json.dumps(fields, sort_keys=True)}"

    def base_facts(self, base: str, depth: int = 0) -> list[str]:
        """What resolving ``base`` as a file or a directory may look at."""
        directory, name = posixpath.split(base)
        listing = self.listing(directory)
        out = [
            f"dir {directory} {name}* "
            + ("-" if listing is None else " ".join(listing.starting(name)))
        ]
        found = None if listing is None else listing.kinds.get(name)
        if found is None or found in ("f", "?"):  # a directory (or a symlink) is looked into
            return out
        inner = self.listing(base)
        out.append(
            f"dir {base} index* " + ("-" if inner is None else " ".join(inner.starting("index")))
        )
        package = posixpath.join(base, "package.json")
        out.append(self._package_fact(package))
        fields = self.package(package) or {}
        for field in MAIN_FIELDS:
            value = fields.get(field)
            if isinstance(value, str) and depth == 0:
                target = posixpath.normpath(posixpath.join(base, value))
                if target == ".." or target.startswith("../"):
                    return [*out, f"doubt {package} points outside the version"]
                out += self.base_facts("" if target == "." else target, depth + 1)
        return out

    def config_chain(self, path: str) -> list[str]:
        """Every package.json that may configure ``path``; a tsconfig.json or jsconfig.json
        there is a doubt."""
        return self._chain(posixpath.dirname(path))

    def _chain(self, directory: str) -> list[str]:
        known = self._chains.get(directory)
        if known is None:
            known = [self._package_fact(posixpath.join(directory, "package.json"))]
            for name in CONFIG_FILES:
                path = posixpath.join(directory, name)
                if self.kind(path) != "-":
                    known.append(self._config_fact(path))
            if directory:
                known = known + self._chain(posixpath.dirname(directory))
            self._chains[directory] = known
        return known

    def _config_fact(self, path: str) -> str:
        try:
            data = (self.root / path).read_bytes()
            options = json.loads(data)
        except (OSError, ValueError):
            return f"doubt {path} is not plain JSON"  # esbuild reads comments; we do not
        if not isinstance(options, dict) or "extends" in options:
            return f"doubt {path} extends another file"
        return f"config {path} {hashlib.sha256(data).hexdigest()}"

    def tsconfigs(self, directory: str) -> list[tuple[str, dict[str, object]]]:
        """The compiler options of every tsconfig.json and jsconfig.json above
        ``directory`` (with their directories), the nearest first."""
        known = self._configs.get(directory)
        if known is None:
            known = []
            for name in CONFIG_FILES:
                path = posixpath.join(directory, name)
                if self.kind(path) != "-" and not self._config_fact(path).startswith("doubt "):
                    options = json.loads((self.root / path).read_bytes()).get("compilerOptions")
                    known.append((directory, options if isinstance(options, dict) else {}))
            if directory:
                known = known + self.tsconfigs(posixpath.dirname(directory))
            self._configs[directory] = known
        return known

    def _mapped(self, directory: str, specifier: str) -> list[str] | None:
        """What a tsconfig's ``baseUrl`` makes esbuild try for a bare import before
        node_modules; None when its ``paths`` may map it (not modelled)."""
        out: list[str] = []
        for config_dir, options in self.tsconfigs(directory):
            paths = options.get("paths")
            if isinstance(paths, dict) and any(_matches(p, specifier) for p in paths):
                return None
            base_url = options.get("baseUrl")
            if isinstance(base_url, str):
                base = posixpath.normpath(posixpath.join(config_dir, base_url, specifier))
                if base == ".." or base.startswith("../"):
                    return None
                out += self.base_facts(base)
        return out

    def candidates(self, importer: str, specifier: str, kind: str) -> list[str] | None:
        """The facts resolving ``specifier`` from ``importer`` depends on; None: a form not
        modelled (the bundle is rebuilt)."""
        if not specifier or specifier.startswith(("/", "#")) or ":" in specifier:
            return None
        if "?" in specifier or "\\" in specifier:
            return None
        directory = posixpath.dirname(importer)
        relative = specifier.startswith(("./", "../")) or specifier in (".", "..")
        out: list[str] = []
        if relative or kind in CSS_KINDS:
            base = posixpath.normpath(posixpath.join(directory, specifier))
            if base == ".." or base.startswith("../"):
                return None
            out += self.base_facts("" if base == "." else base)
            if relative:
                return out
        mapped = self._mapped(directory, specifier)
        if mapped is None:
            return None
        return out + mapped + self._package_facts(directory, specifier)

    def _package_facts(self, directory: str, specifier: str) -> list[str]:
        parts = specifier.split("/")
        count = 2 if specifier.startswith("@") else 1
        name, sub = "/".join(parts[:count]), "/".join(parts[count:])
        out = []
        while True:
            package = posixpath.join(directory, "node_modules", name)
            out += self.base_facts(package)
            if self.kind(package) != "-" and sub:
                out += self.base_facts(posixpath.join(package, sub))
            if not directory:
                return out
            directory = posixpath.dirname(directory)

    def digest(self, facts: Iterable[str]) -> str:
        """One SHA-256 over the facts, in a fixed order."""
        h = hashlib.sha256()
        for fact in sorted(set(facts)):
            h.update(fact.encode() + b"\n")
        return h.hexdigest()


def _matches(pattern: str, specifier: str) -> bool:
    """A tsconfig ``paths`` pattern (at most one "*") matches the specifier."""
    if "*" not in pattern:
        return pattern == specifier
    prefix, _, suffix = pattern.partition("*")
    return specifier.startswith(prefix) and specifier.endswith(suffix)
