"""Carry-over: a bundle built for one version is given to another without a build, when
that version would build it byte for byte alike (record: what a bundle depends on, and
the decision; probes: what an import's resolution looks at; carrier: the service's part,
on a miss and ahead of the requests after a release)."""
