"""Where a source checkout keeps what the service finds by default: the example
components, their shipped fallbacks, and the esbuild binary `npm ci` installed."""

from __future__ import annotations

import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# In a source checkout the example components and node_modules sit beside the package.
CHECKOUT_DIR = PACKAGE_DIR.parent


def default_source() -> str:
    for candidate in (CHECKOUT_DIR / "examples" / "components", Path("examples/components")):
        if candidate.is_dir():
            return str(candidate.resolve())
    return "examples/components"


def bundled_fallback_dir(source: str) -> Path | None:
    """static_fallback/ beside the checkout, for the bundled examples it was built from and
    no other source: it is read-only input, never written, never another source's."""
    shipped = CHECKOUT_DIR / "static_fallback"
    examples = CHECKOUT_DIR / "examples" / "components"
    if "://" in source or source.startswith("npm:") or not shipped.is_dir():
        return None
    return shipped if Path(source).resolve() == examples.resolve() else None


def default_esbuild() -> str:
    """The binary `npm ci` installed beside the checkout or in the working dir, else PATH."""
    for base in (CHECKOUT_DIR, Path.cwd()):
        candidate = base / "node_modules" / ".bin" / "esbuild"
        if candidate.exists():
            return str(candidate.resolve())
    return shutil.which("esbuild") or "esbuild"
