"""The request path without HTTP.

core (BundleService: the answer race, admission and shedding, the lifecycle: start,
ready, drain, close), building (a tailored bundle from its spec), deferred (builds shed
now, made later), derived (gzip, CSS-less JavaScript, stylesheets, served maps), maps
(source maps on request), writes (to disk and Redis behind the answer), health (the
data dir).
"""
