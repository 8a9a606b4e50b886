"""precipfast: a compiled ensemble runtime for residual diffusion models that correct and downscale
satellite precipitation (IMERG, 10 km) into calibrated 1 km ensembles.

Python API (MISSION.md): `Pipeline.from_bundle(...)`, `read_input(path, bbox=...)` (the field with its
geolocation, as `precipfast sample` reads it), `load_denoisers(bundle)`, `coarsen(hr, factor, how)`.
Heavy modules load on first use so `import precipfast` stays fast.
"""
from precipfast._version import __version__

__all__ = ["__version__", "Pipeline", "read_input", "load_denoisers", "coarsen"]


def __getattr__(name):
    if name == "coarsen":  # lazy too: torch takes seconds to import, and the CLI's signal handling
        from precipfast.grid import coarsen  # starts only once click runs a command
        return coarsen
    if name == "Pipeline":
        from precipfast.runtime.pipeline import Pipeline
        return Pipeline
    if name == "read_input":
        from precipfast.runtime.io_h5 import read_input
        return read_input
    if name == "load_denoisers":
        from precipfast.runtime.bundle import load_denoisers
        return load_denoisers
    raise AttributeError(f"module 'precipfast' has no attribute {name!r}")
