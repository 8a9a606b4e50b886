"""`precipfast sample`: one input file in, one output file out, nothing lost on failure.

Order matters: everything that can be checked is checked before any sampling starts (output path,
bundle integrity, the input's declared size against the memory budget, the input file, grid vs model),
then each time slice is sampled through `Pipeline.iter_groups` (the Python API's route too) and
streamed into a temporary file that is renamed onto the output only when the whole run succeeded.
"""
from __future__ import annotations

import sys
import time

from precipfast._version import __version__
from precipfast.options import SampleOptions
from precipfast.runtime.files.atomic import check_not_input, check_output_path
from precipfast.runtime.files.reader import read_input
from precipfast.runtime.files.signals import raise_if_interrupted
from precipfast.runtime.files.writer import DEFAULT_THRESHOLDS_MM_H, OutputWriter
from precipfast.runtime.sampling import memory
from precipfast.runtime.sampling.pipeline import Pipeline, fine_coords


def run_sample(input_path, output_path, opts: SampleOptions = SampleOptions()) -> dict:
    """Sample an ensemble for every time in `input_path`; returns a summary (times, memory, members)."""
    t_start = time.perf_counter()
    check_not_input(input_path, output_path)
    check_output_path(output_path, opts.overwrite)
    pipe = Pipeline.from_options(opts)
    f = pipe.scale_factor if "downscaling" in pipe.stages else 1
    field = read_input(input_path, bbox=opts.bbox, variable=opts.variable,
                       check_size=lambda t, h, w: memory.check_domain(t, h, w, f, pipe.budget_bytes,
                                                                       pipe.step_name))
    lr, origin, aux, _ = pipe.prepare(field)
    context = pipe.context_of(field)
    lat, lon = fine_coords(field.lat, field.lon, f) if f > 1 else (field.lat, field.lon)
    n_t = lr.shape[0]
    attrs = {"model_name": pipe.bundle.manifest["name"], "model_sha256": pipe.bundle.sha256,
             "model_version": pipe.bundle.manifest.get("model_version", ""), "members": opts.members,
             "steps": _steps_used(pipe, opts), "seed": opts.seed,
             "backend": pipe.backend_name, "device": str(pipe.device), "stages": ",".join(pipe.stages),
             "input_sha256": field.sha256, "input_file": str(input_path), "input_format": field.source_format,
             "input_variable": field.variable, "precipfast_version": __version__,
             "missing_policy": "missing input pixels conditioned as 0 mm/h; output NaN over them",
             "noise": "Philox4x32-10 keyed by (seed + t * 2^32, member, stage, step, global pixel)",
             # the input's pixels beside the bbox that the correction stage saw (top, bottom, left, right)
             "correction_context_px": None if context is None else
             [context.top, context.bottom, context.left, context.right]}
    h, w = lr.shape[1:]
    bar = _progress(n_t * pipe.images_per_field(h, w, opts.members, opts.steps, context), opts.quiet, n_t)
    try:
        _sample_into(output_path, pipe, lr, origin, aux, lat, lon, field, attrs, opts, bar, context)
    finally:
        if bar:
            bar.close()  # also when interrupted: a bar left to the garbage collector redraws after the error
    return {"output": str(output_path), "times": n_t, "members": opts.members,
            "lr_shape": list(lr.shape[1:]), "hr_shape": [len(lat), len(lon)],
            "backend": pipe.backend_name, "device": str(pipe.device),
            "seconds": round(time.perf_counter() - t_start, 2), "peak_rss_gib": round(peak_rss_gib(), 3)}


def _sample_into(output_path, pipe, lr, origin, aux, lat, lon, field, attrs, opts, bar, context) -> None:
    """Sample every time slice and stream each group of members into the (atomic) output file."""
    n_t = lr.shape[0]
    with OutputWriter(output_path, lat=lat, lon=lon, members=opts.members,
                      times=field.times if field.times is not None else n_t, lat_lr=field.lat,
                      lon_lr=field.lon, thresholds_mm_h=DEFAULT_THRESHOLDS_MM_H, attrs=attrs,
                      overwrite=opts.overwrite) as out:
        # Each group of members goes to the file as soon as it is sampled: memory holds one group.
        for t, g in pipe.iter_groups(lr, origin, aux, opts, progress=_ticker(bar),
                                     on_time=bar.time_slice if bar else None, context=context):
            ms = slice(g["members"][0], g["members"][-1] + 1)
            out.write_members(t, ms, values=g["precip"])
            out.write_corrected(t, ms, values=g["corrected_lr"])


def _ticker(bar):
    """The sampler's progress callback: advances the bar, and is where a signal whose exception Python
    dropped (runtime/files/signals.py) stops the run."""
    def tick(n: int, stage: str) -> None:
        raise_if_interrupted()
        if bar:
            bar.advance(n, stage)
    return tick


def _steps_used(pipe: Pipeline, opts: SampleOptions):
    """Heun steps per stage: --steps, else each stage's bundle default; one int when the stages agree."""
    used = {name: opts.steps or run.sampler.num_steps for name, run in pipe.stages.items()}
    return next(iter(used.values())) if len(set(used.values())) == 1 else ",".join(f"{k}:{v}" for k, v in used.items())


def peak_rss_gib() -> float:
    """Peak resident memory of this process (Linux ru_maxrss is KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


class _Progress:
    """tqdm on stderr counting (member, tile) images denoised over all stages, steps and times, with
    the stage being sampled in its description; the ETA holds for the whole run."""

    def __init__(self, total: int, n_times: int):
        from tqdm import tqdm
        self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.05, mininterval=1.0)
        self.n_times, self.t, self.shown = n_times, 0, None

    def time_slice(self, t: int) -> None:
        self.t = t

    def advance(self, n: int, stage: str) -> None:
        if (self.t, stage) != self.shown:
            self.shown = (self.t, stage)
            when = f"time {self.t + 1}/{self.n_times} " if self.n_times > 1 else ""
            self.bar.set_description(f"{when}{stage} (member x tile x evaluation)", refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _progress(total: int, quiet: bool, n_times: int = 1):
    return None if quiet else _Progress(total, n_times)
