"""The sampler's element-wise step (Karras et al. 2022, Algorithm 2): fused kernels against the unfused
PyTorch sequence, the sampler's share of the total time, and the peak memory of a sample.

Modes (JSON lines on stdout, human-readable text on stderr):

  step    one Heun step's element-wise work (Euler predictor + Heun corrector), the churn and the
          residual finish, per implementation of `kernels.heun_residual`, at 30 members x 128 px tiles
          and one whole-CONUS member (3500 x 7000): bytes moved, time, GB/s; on CUDA also the card's
          measured copy bandwidth and the fraction of it each reaches.
  share   a whole downscaling-stage sample with the shipped net: time in the denoiser, in the step
          and in the rest (tiling, blending), per step implementation.
  memory  peak RSS of a one-member sample (default 1500 x 1500 px) per step implementation, each in a
          fresh process (/proc VmHWM), and the full-size float32 fields per member it implies.

    python -m precipfast.benchmarks.bench_kernels --mode step
    python -m precipfast.benchmarks.bench_kernels --mode memory --hw 1500 1500
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import torch

from precipfast.benchmarks._emit import emit, time_calls, time_cuda
from precipfast.config import SamplerConfig, TransformConfig
from precipfast.kernels._triton import unavailable_reason
from precipfast.kernels.heun_residual import STEP_IMPLS, NoiseWindow, get_step_impl
from precipfast.noise import Origin
from precipfast.runtime.engines.bundle import load_denoisers
from precipfast.runtime.sampling.ensemble import Tiling, sample_ensemble
from precipfast.runtime.sampling.pipeline import Pipeline

SIZES = {"tiles_30x128": (30, 128, 128), "conus_1x3500x7000": (1, 3500, 7000)}
T_HAT, T_NEXT = 1.7, 0.93


def bytes_per_pixel(impl: str, op: str, den_bytes: int) -> int:
    """Bytes each implementation reads and writes per pixel, float32 state (4 B), denoised den_bytes.

    Fused kernels touch each operand once. The torch sequences (reference and in place: the same
    operations, in place only saves allocations) move two or three operands per element-wise op:
      euler  x_hat - D (4 + d + 4), / t (8), * h (8), x_hat + (12)                      = 32 + d
      heun   d and d' as above (2 x (8 + d + 8)), two halvings (16), + (12), * h (8), + (12) = 80 + 2d
      churn  eps * c (8), x + (12), plus generating eps (write 4 + read 4 into place)     = 28
      finish euler (32 + d), + base (12), * norm, expm1, * scale, clip (4 x 8)           = 76 + d
    """
    d = den_bytes
    fused = {"step": (8 + d) + (12 + 2 * d), "churn": 8, "finish": 12 + d}
    torch_seq = {"step": (32 + d) + (80 + 2 * d), "churn": 28, "finish": 76 + d}
    return (fused if impl == "triton" else torch_seq)[op]


def _copy_gbps(device, n: int) -> float:
    """Measured device copy bandwidth (read + write) for n float32 elements: the ceiling to compare to,
    timed as the kernels are (CUDA events, L2 flushed before each call)."""
    a = torch.randn(n, device=device)  # never time on zeros (METHOD.md)
    b = torch.empty_like(a)
    t = time_cuda(lambda: b.copy_(a), repeat=20)
    return 8 * n / (t["p50_ms"] * 1e-3) / 1e9


def bench_step(device: str, impls, sizes, den_dtypes, repeat: int, ops=("step", "churn", "finish")):
    """Yields one record per (size, denoised dtype, implementation, op), the reference first."""
    dev = torch.device(device)
    ref_ms = {}
    for size_name in sizes:
        e, h, w = SIZES[size_name]
        shape = (e, 1, h, w)
        g = torch.Generator(device=dev).manual_seed(0)
        x_hat, x_next, base = (torch.randn(shape, generator=g, device=dev) for _ in range(3))
        copy = _copy_gbps(dev, x_hat.numel()) if dev.type == "cuda" else None
        win = NoiseWindow(0, tuple(range(e)), "downscaling", Origin(0, 0, w))
        for den_dtype in den_dtypes:
            dsz = torch.tensor([], dtype=den_dtype).element_size()
            den_hat = (0.5 * x_hat).to(den_dtype)
            den_next = (0.5 * x_next).to(den_dtype)
            for impl in impls:
                step = get_step_impl(dev, impl)
                xs, dh, dn, out = x_hat.clone(), den_hat.clone(), den_next.clone(), torch.empty_like(x_hat)
                # In-place implementations overwrite their inputs; the values drift from call to call,
                # which changes nothing in the time of element-wise arithmetic on finite numbers.
                fns = {"step": lambda: step.heun(xs, dh, step.euler(xs, dh, T_HAT, T_NEXT, out=out), dn,
                                                 T_HAT, T_NEXT),
                       "churn": lambda: step.churn(xs, 2.0, 0.2, 1.0, win, 3),
                       "finish": lambda: step.finish(xs, dh, T_HAT, base, TransformConfig())}
                for op, fn in ((k, v) for k, v in fns.items() if k in ops):
                    if impl != "reference":  # each op overwrites inputs: restore them between ops
                        xs.copy_(x_hat), dh.copy_(den_hat), dn.copy_(den_next)
                    # CUDA: device time from events (host timing would add ~10 us of launch and sync to
                    # kernels of a few us); CPU: wall time.
                    t = time_cuda(fn, repeat) if dev.type == "cuda" else time_calls(fn, repeat=repeat, warmup=1)
                    nbytes = bytes_per_pixel(impl, op, dsz) * x_hat.numel()
                    rec = {"bench": "kernels", "mode": "step", "size": size_name, "shape": list(shape),
                           "device": str(dev), "impl": impl, "op": op, "denoised_dtype": str(den_dtype)[6:],
                           "bytes_moved": nbytes, **t, "gb_per_s": round(nbytes / (t["p50_ms"] * 1e-3) / 1e9, 2)}
                    if copy:
                        rec["copy_gb_per_s"] = round(copy, 1)
                        rec["fraction_of_copy"] = round(rec["gb_per_s"] / copy, 3)
                    key = (size_name, den_dtype, op)
                    if impl == "reference":
                        ref_ms[key] = t["p50_ms"]
                    elif key in ref_ms:
                        rec["speedup_vs_reference"] = round(ref_ms[key] / t["p50_ms"], 3)
                    yield rec


class _TimedStep:
    """A step object that adds the time of each method call to `seconds` (device synchronised)."""

    def __init__(self, step, sync):
        self.step, self.sync, self.seconds = step, sync, 0.0

    def __getattr__(self, name):
        fn = getattr(self.step, name)

        def timed(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            if self.sync:
                self.sync()
            self.seconds += time.perf_counter() - t
            return out
        return timed


def bench_share(device: str, impls, members: int, hw, steps: int, backend: str) -> list[dict]:
    pipe = Pipeline.from_bundle(None, backend=backend, device=device, stages=["downscaling"])
    run = pipe.stages["downscaling"]
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    den_s = [0.0]

    def backend_fn(*a):
        t = time.perf_counter()
        out = run.backend(*a)
        if sync:
            sync()
        den_s[0] += time.perf_counter() - t
        return out
    cond = torch.rand(1, 1, *hw, generator=torch.Generator().manual_seed(0)).to(dev)
    cfg = dataclasses.replace(run.sampler, num_steps=steps)
    recs = []
    for impl in impls:
        step = _TimedStep(get_step_impl(dev, impl), sync)
        den_s[0] = 0.0
        t = time.perf_counter()
        with torch.inference_mode():
            sample_ensemble(backend_fn, cond, list(range(members)), "downscaling", 0, cfg, run.tiling, base=cond,
                            step_impl=step, transform=pipe.transform)
        if sync:
            sync()
        total = time.perf_counter() - t
        recs.append({"bench": "kernels", "mode": "share", "device": str(dev), "impl": impl, "backend": pipe.backend_name,
                     "members": members, "hw": list(hw), "steps": steps, "seconds": round(total, 3),
                     "denoiser_s": round(den_s[0], 3), "step_s": round(step.seconds, 4),
                     "step_fraction": round(step.seconds / total, 4),
                     "non_denoiser_fraction": round(1 - den_s[0] / total, 4)})
    return recs


def _vm(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def memory_child(impl: str, members: int, hw, steps: int, denoiser: str) -> dict:
    """One sample in this process; peak RSS above the RSS just before sampling."""
    if denoiser == "shipped":
        net = load_denoisers()["downscaling"]
        den = torch.inference_mode()(net.forward)
    else:  # an element-wise stand-in that isolates the sampler's own state from a network's working set:
        # the exact denoiser of Gaussian data N(tanh(cond), 0.5^2), D = mu + (x - mu) sd^2 / (sigma^2 + sd^2)
        def den(x, sigma, cond):
            s2, mu = sigma.view(-1, 1, 1, 1) ** 2, torch.tanh(cond)
            return mu + (x - mu) * (0.25 / (s2 + 0.25))
    cond = torch.rand(1, 1, *hw, generator=torch.Generator().manual_seed(0))
    cfg = SamplerConfig(num_steps=steps, sigma_max=80.0)
    before = _vm("VmRSS")
    t = time.perf_counter()
    with torch.inference_mode():
        out = sample_ensemble(den, cond, list(range(members)), "downscaling", 0, cfg, Tiling(tile=128, overlap=32),
                              base=cond, step_impl=get_step_impl("cpu", impl), transform=TransformConfig())
    peak = _vm("VmHWM")
    field = hw[0] * hw[1] * 4
    return {"impl": impl, "members": members, "seconds": round(time.perf_counter() - t, 2),
            "rss_before_gib": round(before / 2 ** 30, 3), "peak_rss_gib": round(peak / 2 ** 30, 3),
            "fields_above_start_per_member": round((peak - before) / field / members, 2),
            "mean_mm_h": float(out.mean())}


def bench_memory(impls, hw, steps: int, denoiser: str, member_counts, mmap_threshold: int | None) -> list[dict]:
    """Each run in a fresh process. mmap_threshold (bytes) sets glibc's MALLOC_MMAP_THRESHOLD_ there:
    every larger allocation is then its own mapping, returned to the system when freed, so the peak RSS
    follows the live tensors; glibc's default threshold adapts upwards after the first free of a big
    block and serves later ones from a heap that keeps freed memory resident."""
    env = dict(os.environ, **({"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)} if mmap_threshold else {}))
    recs = []
    for impl in impls:
        for m in member_counts:
            cmd = [sys.executable, "-m", "precipfast.benchmarks.bench_kernels", "--mode", "memory-child", "--impls",
                   impl, "--members", str(m), "--hw", *map(str, hw), "--steps", str(steps), "--denoiser", denoiser,
                   "--threads", str(torch.get_num_threads())]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            recs.append({"bench": "kernels", "mode": "memory", "hw": list(hw), "steps": steps, "denoiser": denoiser,
                         "malloc_mmap_threshold": mmap_threshold or "glibc default",
                         **json.loads(res.stdout.strip().splitlines()[-1])})
    for impl in impls:  # the slope: what one more member costs, in full-size float32 fields
        rows = sorted((r for r in recs if r["impl"] == impl), key=lambda r: r["members"])
        if len(rows) >= 2:
            a, b = rows[0], rows[-1]
            rows[-1]["fields_per_member_marginal"] = round(
                (b["peak_rss_gib"] - a["peak_rss_gib"]) * 2 ** 30 / (hw[0] * hw[1] * 4) / (b["members"] - a["members"]), 2)
    return recs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m precipfast.benchmarks.bench_kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["step", "share", "memory", "memory-child"], default="step")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--impls", nargs="+", help=f"step implementations (default: those that run here; "
                                               f"known: {sorted(STEP_IMPLS)})")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--ops", nargs="+", default=["step", "churn", "finish"], choices=["step", "churn", "finish"],
                    help="step mode: which element-wise operations to time")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--member-counts", type=int, nargs="+", default=[1, 2], help="memory mode: members per run")
    ap.add_argument("--hw", type=int, nargs=2, default=(1500, 1500))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--mmap-threshold", type=int, help="memory mode: glibc MALLOC_MMAP_THRESHOLD_ in bytes")
    ap.add_argument("--denoiser", choices=["stand-in", "shipped"], default="stand-in")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 avoids OpenMP threads fighting for shared "
                                                "cores; default: torch's)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    impls = a.impls or ["reference", "inplace"] + (["triton"] if dev.type == "cuda" and not unavailable_reason(dev) else [])
    if a.mode == "memory-child":
        print(json.dumps(memory_child(impls[0], a.members, tuple(a.hw), a.steps, a.denoiser)))
        return 0
    if a.mode == "step":
        dtypes = [torch.float32] + ([torch.bfloat16] if dev.type == "cuda" else [])
        recs = bench_step(a.device, impls, a.sizes, dtypes, a.repeat, a.ops)
    elif a.mode == "share":
        recs = bench_share(a.device, impls, a.members, tuple(a.hw), a.steps, a.backend)
    else:
        recs = bench_memory([i for i in impls if i != "triton"], tuple(a.hw), a.steps, a.denoiser, a.member_counts,
                            a.mmap_threshold)
    for rec in recs:
        emit(rec)
        print(" ".join(f"{k}={v}" for k, v in rec.items() if k not in ("bench",)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
