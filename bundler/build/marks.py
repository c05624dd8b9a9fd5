"""Where a tailored bundle names its version, so that one built for a version can be
given to another without a build (bundler.carry).

esbuild makes a tailored bundle's code from its inputs; only the service's own parts
name the version: the entry's registry record (``{version: ...}``), the moved-out
assets' URLs (``assets/<version>/<hash>``) and the source map's URL (``&v=<version>``,
URL-encoded). A tailored build writes a mark in each of those places instead, and the
mark is replaced by the version once the output is read (``render``), which also says
where each one was. Every tailored bundle, carried or built, is made this way: the bytes
of a bundle carried to a version are those of a build for it.
"""

from __future__ import annotations

import re
import urllib.parse

# Letters, digits and dashes: esbuild prints them as they are, in double quotes, as it
# prints every valid version; nothing in a package names them.
RAW_MARK = "bundler-version-mark-7c1e0f93"
QUERY_MARK = "bundler-version-query-7c1e0f93"
_MARKS = re.compile(f"({RAW_MARK}|{QUERY_MARK})".encode())
_RAW = RAW_MARK.encode()
RAW, QUERY = 0, 1

# (offset in the code, form: RAW or QUERY), in order.
Marks = tuple[tuple[int, int], ...]


def forms(version: str) -> tuple[bytes, bytes]:
    """The version as the entry and asset paths write it, and as a query string does
    (bundler.spec.BundleSpec.query)."""
    query = urllib.parse.urlencode({"v": version}, safe=",/@").removeprefix("v=")
    return version.encode(), query.encode()


def render(template: bytes, version: str) -> tuple[bytes, Marks]:
    """The template's marks replaced by ``version``; where each one now is."""
    written = forms(version)
    out: list[bytes] = []
    marks: list[tuple[int, int]] = []
    at = 0  # in the template
    length = 0  # of the output so far
    for match in _MARKS.finditer(template):
        out.append(template[at : match.start()])
        length += match.start() - at
        form = RAW if match.group(0) == _RAW else QUERY
        marks.append((length, form))
        out.append(written[form])
        length += len(written[form])
        at = match.end()
    out.append(template[at:])
    return b"".join(out), tuple(marks)


def spots(template: bytes, version: str) -> list[tuple[int, int]]:
    """(offset in the template, change in length) of each mark ``render`` replaces: a
    source map of the template is shifted by them (bundler.css.shift_map)."""
    written = forms(version)
    return [
        (
            match.start(),
            len(written[RAW if match.group(0) == _RAW else QUERY]) - len(match.group(0)),
        )
        for match in _MARKS.finditer(template)
    ]


def rename(code: bytes, marks: Marks, old: str, new: str) -> tuple[bytes, Marks]:
    """``code`` rendered for ``old``, rendered for ``new`` instead. Raises ValueError if
    a mark does not hold ``old`` (the code is not what its marks say)."""
    before, after = forms(old), forms(new)
    out: list[bytes] = []
    moved: list[tuple[int, int]] = []
    at = 0
    shift = 0
    for offset, form in marks:
        end = offset + len(before[form])
        if offset < at or code[offset:end] != before[form]:
            raise ValueError(f"no version at {offset}")
        out.append(code[at:offset])
        moved.append((offset + shift, form))
        out.append(after[form])
        shift += len(after[form]) - len(before[form])
        at = end
    out.append(code[at:])
    return b"".join(out), tuple(moved)
