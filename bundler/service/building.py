"""A tailored bundle from its spec: the version checked out, the names resolved to files
(a 404 for an unknown one, before esbuild runs), one build job, its compressed forms."""

from __future__ import annotations

import asyncio
import functools

from bundler.build.builder import Builder
from bundler.build.jobs import BuildJob, BuildOutput
from bundler.bundle import Bundle
from bundler.errors import UnknownModule
from bundler.resolve import near_misses, resolve_modules
from bundler.slots import Priority
from bundler.sources import SourceStore
from bundler.spec import BundleSpec


async def tailored_output(
    source: SourceStore, builder: Builder, spec: BundleSpec, priority: Priority, *, with_map: bool
) -> BuildOutput:
    async with source.use(spec.version) as root:
        try:
            registrations = resolve_modules(root, spec.version, spec.modules)
        except UnknownModule as exc:
            suggestions = await asyncio.to_thread(near_misses, root, exc.modules)
            raise exc.suggesting(suggestions) from None
        job = BuildJob.tailored(spec, registrations, priority, with_map=with_map)
        return await builder.build(job, root)


async def tailored_bundle(
    source: SourceStore, builder: Builder, spec: BundleSpec, priority: Priority
) -> Bundle:
    """Build one tailored bundle (no source map: it is made on request) and its compressed forms."""
    output = await tailored_output(source, builder, spec, priority, with_map=False)
    return await asyncio.to_thread(
        functools.partial(
            Bundle.create, spec.key, output.code, version_at=output.marks, inputs=output.inputs
        )
    )
