"""precipfast.runtime.sampling: the ensemble sampler: pipeline, tiles, member groups, memory budget, physical guard."""
