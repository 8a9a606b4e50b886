"""precipfast: a compiled ensemble runtime for residual diffusion models that correct and downscale
satellite precipitation (IMERG, 10 km) into calibrated 1 km ensembles.

Python API (MISSION.md): `Pipeline.from_bundle(...)`, `read_input(path, bbox=...)` (the field with its
geolocation, as `precipfast sample` reads it), `load_denoisers(bundle)`, `coarsen(hr, factor, how)`.
Heavy modules load on first use so `import precipfast` stays fast.
"""
from pathlib import Path as _Path

from precipfast._version import __version__

# Running from a source checkout that is not installed (the GPU machine, whose python3 has torch but not
# precipfast): pyproject's package-dir maps kernels/, runtime/, train/, export/ and benchmarks/ beside
# this folder into the package, and the import system does not know that. Listing the checkout's root on
# the package path lets `precipfast.kernels` resolve to <root>/kernels there (and to the working tree's
# own folders in a git worktree of an editable install). An installed wheel has no pyproject.toml beside
# the package, so nothing changes for it.
_ROOT = _Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "kernels" / "__init__.py").is_file():
    __path__.append(str(_ROOT))

__all__ = ["__version__", "Pipeline", "read_input", "load_denoisers", "coarsen"]


def __getattr__(name):
    if name == "coarsen":  # lazy too: torch takes seconds to import, and the CLI's signal handling
        from precipfast.grid import coarsen  # starts only once click runs a command
        return coarsen
    if name == "Pipeline":
        from precipfast.runtime.sampling.pipeline import Pipeline
        return Pipeline
    if name == "read_input":
        from precipfast.runtime.files.reader import read_input
        return read_input
    if name == "load_denoisers":
        from precipfast.runtime.engines.bundle import load_denoisers
        return load_denoisers
    raise AttributeError(f"module 'precipfast' has no attribute {name!r}")
