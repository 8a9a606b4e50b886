"""Job options: one frozen dataclass per command (sample, validate, demo, bench), one name and one
default per setting, every range checked here, once, at the edge.

Each field is a `setting(...)`: its default, its CLI help and, for numbers, its inclusive range. The
command line's flags are generated from these fields (`--max-batch` <-> `max_batch`, cli.py), the
Python API builds the same objects, and deeper code trusts what it is handed. A value out of range is a
ValueError naming the flag, the range and the value.

Defaults shared by every job: the bundle's own sampler steps, device "auto", backend "auto", tiles of
DEFAULT_TILE px. Member counts differ by purpose: 30 for a product, 8 where the job only shows (demo),
verifies (validate) or times (bench) the ensemble.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from precipfast.choices import check_backend_name, check_bbox, check_device_name, check_precision
from precipfast.config import DEFAULT_OVERLAP, DEFAULT_TILE, STAGES

SEED_MAX = 2 ** 32 - 1   # time slice t samples with seed + t * 2^32 (precipfast/noise.py): seeds fill the low word


def setting(default: Any, help: str, *, lo=None, hi=None, unit: str = "", kind=None, nargs: int = 1) -> Any:
    """A dataclass field with what the CLI and the range check need. kind: int, float, str or bool (a flag);
    lo/hi: inclusive bounds for numbers (each element when nargs > 1)."""
    if kind is None:
        kind = type(default) if default is not None else str
    meta = {"help": help, "lo": lo, "hi": hi, "unit": unit, "kind": kind, "nargs": nargs}
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a field: `--max-batch` for max_batch (one name per setting)."""
    return "--" + f.name.replace("_", "-")


def check_ranges(obj) -> None:
    """Every numeric setting of `obj` within its [lo, hi] (NaN and inf are out of every finite range)."""
    for f in dataclasses.fields(obj):
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        value = getattr(obj, f.name)
        if value is None or (lo is None and hi is None):
            continue
        for v in (value if isinstance(value, tuple) else (value,)):
            kind = f.metadata["kind"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
                raise ValueError(f"{flag_of(f)} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
            if not (lo <= v <= hi):
                unit = f" {f.metadata['unit']}" if f.metadata["unit"] else ""
                raise ValueError(f"{flag_of(f)} must be in [{fmt_number(lo)}, {fmt_number(hi)}]{unit}, got {v!r}")
        if f.metadata["kind"] is int:  # 3.0 from Python becomes 3, so range() and shapes accept it
            object.__setattr__(obj, f.name, tuple(map(int, value)) if isinstance(value, tuple) else int(value))


def fmt_number(v) -> str:
    """Integers in full (4294967295), other numbers short (0.0001, 100000)."""
    return str(v) if isinstance(v, int) else f"{v:g}"


def parse_list(text, kind, what: str) -> tuple:
    """'a,b,c' (or a sequence) -> tuple of `kind`; ValueError naming `what` otherwise."""
    items = [v for v in text.split(",") if v.strip()] if isinstance(text, str) else text
    try:
        return tuple(kind(v.strip() if isinstance(v, str) else v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a comma list of {kind.__name__} values, got {text!r}") from None


def parse_stages(stages) -> tuple[str, ...] | None:
    """None (every stage of the bundle) or a non-empty subset of STAGES in pipeline order."""
    if stages is None:
        return None
    names = parse_list(stages, str, "--stages")
    bad = [n for n in names if n not in STAGES]
    if bad or not names:
        raise ValueError(f"--stages must be a comma list of {','.join(STAGES)}, got {stages!r}")
    return tuple(s for s in STAGES if s in names)


def _common_checks(opts) -> None:
    check_ranges(opts)
    check_backend_name(opts.backend)
    check_device_name(opts.device)
    if opts.overlap >= opts.tile:
        raise ValueError(f"--overlap must be smaller than --tile ({opts.tile} px), got {opts.overlap}")


# Settings shared by several jobs: one definition each (a function, so every dataclass gets its own field).
def _model():
    return setting(None, "Bundle directory (default: the bundle shipped in the package).", kind=str)


def _steps():
    return setting(None, "Sampler steps of each diffusion stage (default: the bundle's; a one-evaluation "
                   "stage keeps its one).", lo=2, hi=1000, kind=int)


def _seed():
    return setting(0, "Noise seed: member noise is a pure function of (seed, member, stage, step, pixel).",
                   lo=0, hi=SEED_MAX)


def _backend():
    return setting("auto", "auto, torch, onnxruntime or tensorrt.")


def _device():
    return setting("auto", "auto, cpu, cuda or cuda:N.")


def _stages():
    return setting(None, "Comma list of stages to run, e.g. 'downscaling' for a bias-free coarse input "
                         "(default: every stage of the bundle).", kind=str)


def _tile():
    return setting(DEFAULT_TILE, "Tile edge (pixels) for large domains.", lo=16, hi=4096, unit="px")


def _overlap():
    return setting(DEFAULT_OVERLAP, "Tile overlap (pixels), blended smoothly.", lo=0, hi=4095, unit="px")


def _max_batch():
    return setting(None, "(member, tile) images per backend call (default: from the memory budget).",
                   lo=1, hi=65536, kind=int)


def _memory_gb():
    return setting(None, "Memory budget in GiB for denoiser activations and for the members sampled "
                         "together (default: 2 on the CPU, a third of free GPU memory).",
                   lo=1e-4, hi=1e5, unit="GiB", kind=float)


def _quiet():
    return setting(False, "No progress on stderr.")


@dataclass(frozen=True)
class SampleOptions:
    """`precipfast sample` and `Pipeline`: how to build the pipeline and what to sample."""
    model: str | None = _model()
    members: int = setting(30, "Ensemble members.", lo=1, hi=10000)
    steps: int | None = _steps()
    seed: int = _seed()
    backend: str = _backend()
    device: str = _device()
    stages: tuple[str, ...] | None = _stages()
    bbox: tuple[float, float, float, float] | None = setting(
        None, "S,N,W,E in degrees: crop the input first.", kind=str)
    variable: str | None = setting(None, "Dataset path when the file is in none of the known layouts.", kind=str)
    tile: int = _tile()
    overlap: int = _overlap()
    max_batch: int | None = _max_batch()
    memory_gb: float | None = _memory_gb()
    precision: str = setting("fp32", "Denoiser arithmetic of the torch backend: fp32, bf16 (CUDA, or a CPU "
                                     "with native bf16) or fp16 (CUDA only); the sampler state stays float32. "
                                     "Torch only: onnxruntime and tensorrt keep their own precision.")
    torch_compile: bool = setting(False, "torch backend on CUDA: compile the denoiser with torch.compile "
                                         "(the first call takes tens of seconds).")
    cuda_graphs: bool = setting(False, "torch backend on CUDA: replay the denoiser from CUDA graphs, one per "
                                       "micro-batch shape.")
    overwrite: bool = setting(False, "Replace an existing output file.")
    quiet: bool = _quiet()

    def __post_init__(self):
        check_precision(self.precision)
        object.__setattr__(self, "stages", parse_stages(self.stages))
        if self.bbox is not None:
            box = parse_list(self.bbox, float, "--bbox")
            if len(box) != 4:
                raise ValueError(f"--bbox must be S,N,W,E in degrees (e.g. 35,40,-100,-95), got {self.bbox!r}")
            object.__setattr__(self, "bbox", check_bbox(box))
        _common_checks(self)

    def replace(self, **changes) -> "SampleOptions":
        """A copy with `changes`, checked like the original."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ValidateOptions:
    """`precipfast validate`: the bundle's ensemble on held-out radar (precipfast/jobs/validate.py)."""
    model: str | None = _model()
    data: str = setting("../shared/data", "Radar data directory.")
    source: str = setting("mrms/region_3", "Held-out radar source: mrms/region_N, fmi/fmi_*, bom/bom_* "
                                           "(see train/data.py).")
    frames: tuple[int, ...] = setting("0,17,35", "Comma list of frame indices (negative counts from the end).")
    members: int = setting(8, "Ensemble members (at least 2: spread and CRPS need an ensemble).", lo=2, hi=10000)
    steps: int | None = _steps()
    seed: int = _seed()
    stages: tuple[str, ...] | None = setting(
        None, "Stages to run, as in sample: 'downscaling' samples the fine stage on the clean coarse radar; "
              "with 'correction' the coarse radar is first degraded like a satellite (train/degrade.py) "
              "(default: every stage of the bundle).", kind=str)
    backend: str = _backend()
    device: str = _device()
    crop: int | None = setting(None, "Window edge in 1 km pixels (the wettest NaN-free one per frame; "
                                     "default: the whole frame).", lo=1, hi=100000, unit="px", kind=int)
    tile: int = _tile()
    overlap: int = _overlap()
    max_batch: int | None = _max_batch()
    memory_gb: float | None = _memory_gb()
    out: str | None = setting(None, "Folder for metrics.json and validate.png.", kind=str)
    quiet: bool = _quiet()

    def __post_init__(self):
        object.__setattr__(self, "frames", parse_list(self.frames, int, "--frames"))
        object.__setattr__(self, "stages", parse_stages(self.stages))
        if not self.frames:
            raise ValueError("--frames must name at least one frame, got none")
        if self.stages is not None and "downscaling" not in self.stages:
            raise ValueError(f"--stages must include downscaling (the scores are on the 1 km grid), "
                             f"got {','.join(self.stages)}")
        _common_checks(self)

    def sample_options(self) -> SampleOptions:
        """The pipeline settings of this run, as `precipfast sample` would take them."""
        return SampleOptions(model=self.model, members=self.members, steps=self.steps, seed=self.seed,
                             backend=self.backend, device=self.device, stages=self.stages, tile=self.tile,
                             overlap=self.overlap, max_batch=self.max_batch, memory_gb=self.memory_gb,
                             quiet=self.quiet)


@dataclass(frozen=True)
class DemoOptions:
    """`precipfast demo`: the shipped model on the demo input (precipfast/jobs/demo_input.py)."""
    out: str = setting("out/demo", "Output folder (ensemble.h5, quicklook.png).")
    members: int = setting(8, "Ensemble members.", lo=1, hi=10000)
    steps: int | None = _steps()
    seed: int = _seed()
    backend: str = _backend()
    device: str = _device()
    quiet: bool = _quiet()

    def __post_init__(self):
        check_ranges(self)
        self.sample_options()  # checks backend and device too

    def sample_options(self) -> SampleOptions:
        return SampleOptions(members=self.members, steps=self.steps, seed=self.seed, backend=self.backend,
                             device=self.device, overwrite=True, quiet=self.quiet)


@dataclass(frozen=True)
class BenchOptions:
    """`precipfast bench` and the benchmark scripts' defaults."""
    model: str | None = _model()
    what: str = setting("all", "sample, backends or all.")
    members: int = setting(8, "Ensemble members (sample benchmark).", lo=1, hi=10000)
    steps: int | None = _steps()
    seed: int = _seed()
    lr_hw: tuple[int, int] = setting((20, 20), "Coarse field size H W (sample benchmark).", lo=1, hi=10000,
                                     unit="px", kind=int, nargs=2)
    hw: tuple[int, int] = setting((128, 128), "Tile size H W (backend benchmark).", lo=8, hi=4096, unit="px",
                                  kind=int, nargs=2)
    max_batch: int = setting(8, "Images per backend call (backend benchmark).", lo=1, hi=65536)
    repeat: int = setting(5, "Timed repetitions.", lo=1, hi=10000)
    backend: str = _backend()
    device: str = _device()
    data: str = setting("../shared/data", "Where imerg_samples.h5 lives (else a synthetic field).")

    def __post_init__(self):
        if self.what not in ("sample", "backends", "all"):
            raise ValueError(f"--what must be sample, backends or all, got {self.what!r}")
        object.__setattr__(self, "lr_hw", parse_list(self.lr_hw, int, "--lr-hw"))
        object.__setattr__(self, "hw", parse_list(self.hw, int, "--hw"))
        for name in ("lr_hw", "hw"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"--{name.replace('_', '-')} must be two integers H W, got {getattr(self, name)}")
        check_ranges(self)
        check_backend_name(self.backend)
        check_device_name(self.device)


JOB_OPTIONS = {"sample": SampleOptions, "validate": ValidateOptions, "demo": DemoOptions, "bench": BenchOptions}

