"""The generated entry file: what turns a module list into one registering bundle.

Bundle format (docs/http-api.md, "The bundle format"): each requested module's namespace
object is stored under its requested name in ``globalThis[<registry>]``, and,
when an AMD loader is on the page, also announced with
``define(name, [], () => ns)``. Each bundle also appends
``{version, mode, modules}`` to ``registry[Symbol.for("bundler.bundles")]``, so a
loader can tell a tailored bundle from a fallback. Modules are evaluated in the order of the
registrations (canonical, sorted, for a tailored bundle), since esbuild
evaluates imports in the order they are written.

The module form (/bundle.mjs) registers nothing: each namespace is an export named as
requested (ES2022 string export names), the default export maps every name to its
namespace, and ``{version, mode, modules}`` is the export ``"bundler:bundle"`` (a name no
module can have: ':' is not allowed in one).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

# (name the page asks for, path under the source root that esbuild resolves)
Registration = tuple[str, str]
# A registration whose path starts so is a package specifier esbuild resolves itself.
PACKAGE_PREFIX = "npm:"
# The module form's export of {version, mode, modules}: ':' is never in a module's name.
INFO_EXPORT = "bundler:bundle"


def entry_source(
    registrations: Sequence[Registration],
    source_root: Path,
    registry_name: str,
    *,
    version: str = "",
    mode: str = "tailored",
    module: bool = False,
) -> str:
    # Absolute specifiers: the entry lives in scratch space, the modules under the
    # source root. Names were validated (bundler.spec); json.dumps quotes them anyway.
    variables: dict[str, str] = {}
    lines = []
    for _, path in registrations:
        if path not in variables:
            variables[path] = f"m{len(variables)}"
            lines.append(
                f"import * as {variables[path]} from {json.dumps(specifier(path, source_root))};"
            )
    info = f"{{version: {json.dumps(version)}, mode: {json.dumps(mode)}, modules: {len(registrations)}}}"
    if module:
        exported = [(name, variables[path]) for name, path in registrations]
        return "\n".join([*lines, *module_exports(exported, info)]) + "\n"
    pairs = ", ".join(f"[{json.dumps(name)}, {variables[path]}]" for name, path in registrations)
    registry = json.dumps(registry_name)
    lines += [
        "const g = typeof globalThis !== 'undefined' ? globalThis : self;",
        f"const registry = g[{registry}] || (g[{registry}] = {{}});",
        # Which bundles ran, for loaders (a Symbol key: invisible to Object.keys(registry)).
        "const loaded = Symbol.for('bundler.bundles');",
        f"(registry[loaded] || (registry[loaded] = [])).push({info});",
        "const amd = typeof define === 'function' && define.amd;",
        f"for (const [name, ns] of [{pairs}]) {{",
        "  registry[name] = ns;",
        "  if (amd) define(name, [], () => ns);",
        "}",
    ]
    return "\n".join(lines) + "\n"


def module_exports(
    exported: Sequence[tuple[str, str]], info: str, info_variable: str = "info"
) -> list[str]:
    """The module form's exports, of ``exported`` (name, the variable holding its
    namespace): each name its namespace, the default every name's, and ``info`` (the
    bundle's ``{version, mode, modules}``) as ``"bundler:bundle"``. The tailored entry and
    the fallback's module form (bundler.service.derived) both end so."""
    named = ", ".join(f"{variable} as {json.dumps(name)}" for name, variable in exported)
    mapping = ", ".join(f"{json.dumps(name)}: {variable}" for name, variable in exported)
    return [
        f"const {info_variable} = {info};",
        f"export {{ {named}, {info_variable} as {json.dumps(INFO_EXPORT)} }};",
        f"export default {{ {mapping} }};",
    ]


def specifier(path: str, source_root: Path) -> str:
    """What the entry imports: the file's absolute path, or a published name as is (esbuild
    resolves it through the version's node_modules, as an application would)."""
    if path.startswith(PACKAGE_PREFIX):
        return path.removeprefix(PACKAGE_PREFIX)
    return str(source_root / path)


def names_for_specifier(
    specifier_: str, registrations: Sequence[Registration], source_root: Path
) -> list[str]:
    """Which registered names an esbuild 'Could not resolve' specifier stands for."""
    return [name for name, path in registrations if specifier_ == specifier(path, source_root)]
