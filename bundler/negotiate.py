"""Accept-Encoding negotiation (RFC 9110 section 12.5.3), for the encodings we hold."""

from __future__ import annotations

import functools

# Preference when the client rates several equally: smaller first.
SUPPORTED = ("br", "gzip", "identity")
IMPLICIT_IDENTITY_Q = 0.001


def parse_accept_encoding(header: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        weights[name] = q
    return weights


@functools.lru_cache(maxsize=256)  # browsers send a handful of distinct headers
def choose_encoding(header: str | None, supported: tuple[str, ...] = SUPPORTED) -> str:
    """The best supported encoding; identity unless the client refuses it and offers nothing.

    A client that refuses everything we have still gets identity: a bundle the
    browser can read beats a 406 that breaks the page.
    """
    if not header:
        return "identity"
    weights = parse_accept_encoding(header)
    star = weights.get("*")

    def weight(name: str) -> float:
        if name in weights:
            return weights[name]
        if star is not None:
            return star
        # Unlisted identity is acceptable (RFC 9110) but preferred last: a client
        # that lists gzip at any q gets gzip.
        return IMPLICIT_IDENTITY_Q if name == "identity" else 0.0

    best = max(supported, key=lambda name: (weight(name), -supported.index(name)))
    return best if weight(best) > 0 else "identity"
