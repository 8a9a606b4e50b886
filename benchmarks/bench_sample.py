"""End-to-end ensemble sampling: the batched precipfast runtime against a plain PyTorch loop that
samples one member at a time with the same weights (eager torch, `edm.sample`), in one run.

Prints one JSON line per implementation and one for the ratio; human-readable text on stderr.
Peak memory is each run's own high-water mark (Linux /proc VmHWM, reset before each run).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from precipfast import edm, noise
from precipfast.benchmarks._emit import emit
from precipfast.config import STAGES
from precipfast.grid import upsample
from precipfast.options import BenchOptions
from precipfast.runtime.engines.bundle import default_bundle_path, load_denoisers, open_bundle
from precipfast.runtime.files.reader import read_input
from precipfast.runtime.sampling.pipeline import Pipeline
from precipfast.transform import forward, inverse

DEFAULTS = BenchOptions()


def plain_loop(bundle, lr: np.ndarray, members: int, steps: int | None, seed: int) -> np.ndarray:
    """The baseline: eager torch, one member at a time, both stages, float32, global-grid noise."""
    dens = load_denoisers(bundle)
    tr, f = bundle.transform, int(bundle.manifest["scale_factor"])
    x_sat = forward(torch.from_numpy(np.nan_to_num(lr)), tr).view(1, 1, *lr.shape)
    out = []
    with torch.inference_mode():
        for m in range(members):
            x = x_sat
            for stage in STAGES:
                if stage not in dens:
                    continue
                base = upsample(x, f) if stage == "downscaling" else x
                h, w = base.shape[-2:]
                sc = bundle.sampler(stage)
                eps = lambda i, s=stage: noise.normal_members(seed, [m], s, i, 0, h, 0, w, w)  # noqa: E731
                sig = edm.karras_sigmas(steps or sc.num_steps, sc.sigma_min, sc.sigma_max, sc.rho, torch.float32)
                x = base + edm.sample(dens[stage], base, eps, sig, noise_clip=sc.noise_clip)
            out.append(inverse(x, tr)[0, 0].numpy())
    return np.stack(out)


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (peak RSS) on Linux
    except OSError:
        pass


def _peak_rss_gib() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return float("nan")


def bench(model=None, *, lr_hw=DEFAULTS.lr_hw, members=DEFAULTS.members, steps=DEFAULTS.steps, seed=DEFAULTS.seed,
          backend=DEFAULTS.backend, device=DEFAULTS.device, data_dir=DEFAULTS.data, repeat=1) -> list[dict]:
    bundle = open_bundle(model or default_bundle_path())
    lr, source = _field(lr_hw, data_dir)
    pipe = Pipeline.from_bundle(bundle.path, backend=backend, device=device)
    denoise_s = [0.0]
    for run in pipe.stages.values():  # time the denoiser calls to get the sampler's own share
        run.backend = _timed(run.backend, denoise_s)
    common = {"bench": "sample", "lr_shape": list(lr.shape), "hr_shape": [lr.shape[0] * 10, lr.shape[1] * 10],
              "members": members, "steps": steps, "source": source, "model": bundle.name,
              "evaluations_per_member": pipe.evaluations_per_member(steps)}
    recs, times = [], {}
    for impl in ("plain_torch_loop", "precipfast"):
        best, peak = float("inf"), 0.0
        for _ in range(repeat):
            _reset_peak()
            denoise_s[0] = 0.0
            t0 = time.perf_counter()
            if impl == "plain_torch_loop":
                ens = plain_loop(bundle, lr, members, steps, seed)
            else:
                ens = pipe.sample_field(lr, members, steps, seed)["precip"]
            best = min(best, time.perf_counter() - t0)
            peak = max(peak, _peak_rss_gib())
        times[impl] = best
        rec = {**common, "impl": impl, "backend": "torch" if impl == "plain_torch_loop" else pipe.backend_name,
               "seconds": round(best, 3), "members_per_s": round(members / best, 4), "peak_rss_gib": round(peak, 3),
               "mean_mm_h": float(np.nanmean(ens))}
        if impl == "precipfast":
            rec["sampler_overhead_fraction"] = round(1 - denoise_s[0] / best, 4)
        recs.append(rec)
    recs.append({**common, "impl": "ratio", "speedup_vs_plain_loop": round(times["plain_torch_loop"] /
                                                                           times["precipfast"], 3)})
    return recs


def _timed(fn, acc):
    def call(*a):
        t = time.perf_counter()
        out = fn(*a)
        acc[0] += time.perf_counter() - t
        return out
    return call


def _field(hw, data_dir):
    """A real IMERG field (rainiest window of the V06B CONUS granule) when the data is there."""
    from pathlib import Path
    src = Path(data_dir) / "imerg_samples.h5"
    if src.is_file():
        f = read_input(src, variable="v06b_final_conus_20170103T1100/precipitationCal")
        p = f.precip[0]
        h, w = hw
        r0, c0 = 90, 370  # rain over Ohio (see precipfast/jobs/demo.py)
        return p[r0:r0 + h, c0:c0 + w].copy(), "imerg v06b 2017-01-03T11:00Z"
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]]
    return (5 * np.exp(-((yy - hw[0] / 2) ** 2 + (xx - hw[1] / 2) ** 2) / 20)).astype(np.float32), "synthetic"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m precipfast.benchmarks.bench_sample", description=__doc__)
    ap.add_argument("--model")
    ap.add_argument("--lr-hw", type=int, nargs=2, default=DEFAULTS.lr_hw)
    ap.add_argument("--members", type=int, default=DEFAULTS.members)
    ap.add_argument("--steps", type=int, default=DEFAULTS.steps)
    ap.add_argument("--backend", default=DEFAULTS.backend)
    ap.add_argument("--device", default=DEFAULTS.device)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--data", default=DEFAULTS.data)
    a = ap.parse_args(argv)
    BenchOptions(model=a.model, lr_hw=a.lr_hw, members=a.members, steps=a.steps, backend=a.backend,
                 device=a.device, data=a.data)  # the CLI's range checks
    for rec in bench(a.model, lr_hw=tuple(a.lr_hw), members=a.members, steps=a.steps, backend=a.backend,
                     device=a.device, data_dir=a.data, repeat=a.repeat):
        emit(rec)
        print(f"{rec['impl']:>18}: " + ", ".join(f"{k}={v}" for k, v in rec.items() if k in
              ("seconds", "peak_rss_gib", "sampler_overhead_fraction", "speedup_vs_plain_loop")), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
