"""The generated entry file: what turns a module list into one registering bundle.

Bundle format (docs/bundle-format.md): each requested module's namespace object
is stored under its requested name in ``globalThis[<registry>]``, and, when an
AMD loader is on the page, also announced with ``define(name, [], () => ns)``.
Modules are evaluated in canonical (sorted) order, since esbuild evaluates
imports in the order they are written.
"""

from __future__ import annotations

import json
from pathlib import Path


def entry_source(modules: tuple[str, ...], source_root: Path, registry_name: str) -> str:
    # Absolute specifiers: the entry lives in scratch space, the modules under the
    # source root. Names were validated (bundler.spec), json.dumps quotes them anyway.
    lines = [
        f"import * as m{i} from {json.dumps(str(source_root / name))};"
        for i, name in enumerate(modules)
    ]
    pairs = ", ".join(f"[{json.dumps(name)}, m{i}]" for i, name in enumerate(modules))
    lines += [
        "const g = typeof globalThis !== 'undefined' ? globalThis : self;",
        f"const registry = g[{json.dumps(registry_name)}] || (g[{json.dumps(registry_name)}] = {{}});",
        "const amd = typeof define === 'function' && define.amd;",
        f"for (const [name, ns] of [{pairs}]) {{",
        "  registry[name] = ns;",
        "  if (amd) define(name, [], () => ns);",
        "}",
    ]
    return "\n".join(lines) + "\n"


def specifier_to_module(specifier: str, modules: tuple[str, ...], source_root: Path) -> str | None:
    """Which requested module an esbuild 'Could not resolve' specifier stands for."""
    for name in modules:
        if specifier == str(source_root / name):
            return name
    return None
