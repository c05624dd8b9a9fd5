"""Static fallback bundles: the modules pages use, registered like a tailored bundle.

While a tailored bundle is being built (or when the pool is saturated), a page gets its
version's fallback instead: bigger, but it registers the modules pages ask for under
every name a page may use, so the page works the same. A module the fallback left out is
built for its request as usual.

candidates (what a request could name), ranking (their order and the byte budget),
model (a fallback, its plan, what it must match), storage (on disk and in the shared
tier), build (the algorithm: surveys, selection, the first part), store (one fallback
per version, loaded or built once, ahead of every tailored build).
"""
