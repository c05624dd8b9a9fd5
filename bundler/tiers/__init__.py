"""The cache tiers: one interface (base.BundleTier) for the memory, disk and shared (Redis)
tiers, a tier that holds nothing (a replica without Redis), and the tiered cache that
looks them up in order, promotes what it finds and writes behind the answer (tiered)."""
