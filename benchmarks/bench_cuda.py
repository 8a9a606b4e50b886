"""The sampler end to end on the CUDA path, shaped like the peer figure it is compared with.

Peer (../shared/NOTES.md, measured 2026-11-23 on an H100 80 GB): PhysicsNeMo 2.2.2's CorrDiff sampler,
a SongUNet of 32 channels (mult 1,2,2, 2 blocks, 1.7 M parameters, 280 GFLOP per member and evaluation
at 512^2, as its 47 TFLOP/s at 6.2 s implies), random weights, 30 members of 512 x 512, 18 Heun steps
(35 evaluations): at best (fp16, torch.compile, CUDA graphs) 22.1 ms per member * Mpx * evaluation.

Here: precipfast's U-Net of the same shape (`CORRDIFF_UNET`: 32 channels, mult 1,2,2, 2 blocks; its
parameter count is printed) samples the same work, 30 members over a domain cut into 128 px tiles, two
ways in one run, same weights, same noise:

  baseline    plain PyTorch: eager float32 denoiser and the allocating reference step, whose initial
              noise is drawn on the host (precipfast/noise.py) and copied over (no churn: S_churn = 0)
  precipfast  bf16 autocast + torch.compile + CUDA graphs + the fused Triton step (each switchable;
              on the CPU only what runs there: autocast and the in-place step)

    python -m precipfast.benchmarks.bench_cuda                          # 30 members, 128 and 512 px
    python -m precipfast.benchmarks.bench_cuda --domains 512 --steps 18 --repeat 3

One JSON line per (domain, variant) and one comparison line per domain on stdout; text on stderr.
Method (../.library/device/METHOD.md): a first untimed run compiles, captures and picks cuDNN
algorithms (its time is reported as warmup_s); then `repeat` timed runs, each ended by a device
synchronisation, give p20/p50/p80. Inputs are random, never zeros. Figures per member * Mpx * evaluation
count the domain's pixels (tile overlaps are work the tiling adds, reported as tile_overhead).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time

import torch

from precipfast.benchmarks._emit import emit, time_calls
from precipfast.config import EDMConfig, SamplerConfig, UNetConfig
from precipfast.denoiser import build_denoiser
from precipfast.kernels.heun_residual import get_step_impl, step_impl_name
from precipfast.runtime.engines.torch_backend import PRECISIONS, TorchBackend
from precipfast.runtime.sampling.ensemble import Tiling, domain_tiles, evaluations, sample_ensemble
from precipfast.unet import count_flops

# The peer's network shape (NOTES.md: SongUNet 32 ch, mult 1,2,2, 2 blocks). precipfast's U-Net always
# attends at its coarsest level (32^2 tokens on a 128 px tile); no other level attends, as in the peer.
CORRDIFF_UNET = UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_blocks=2, attn_levels=())
PEER = {"peer_ms_per_member_mpx_eval": 22.1, "peer_gflop_per_member_eval": 280.0, "peer_device": "H100 80GB",
        "peer": "PhysicsNeMo 2.2.2 CorrDiff sampler, SongUNet 32 ch 1.7 M params, fp16 + torch.compile + CUDA "
                "graphs, 30 members x 512^2, 18 Heun steps, random weights (../shared/NOTES.md, 2026-11-23)"}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way to run the sampler: the backend's settings and the step implementation."""
    name: str
    precision: str
    torch_compile: bool
    cuda_graphs: bool
    step: str


def variants(device: torch.device, precision: str | None, compile_: bool | None, graphs: bool | None,
             step: str | None) -> list[Variant]:
    """The baseline and precipfast's path; on the CPU the fast path keeps only what runs there."""
    cuda = device.type == "cuda"
    fast = Variant("precipfast", precision or ("bf16" if cuda else "fp32"),
                   cuda if compile_ is None else compile_, cuda if graphs is None else graphs,
                   step or step_impl_name(device))
    return [Variant("baseline", "fp32", False, False, "reference"), fast]


def build_net(seed: int = 0) -> torch.nn.Module:
    """CORRDIFF_UNET with EDM preconditioning, random weights drawn so every layer contributes (EDM's
    zero-initialised output layers would make D = c_skip x, and METHOD.md: never time on zeros)."""
    torch.manual_seed(seed)
    den = build_denoiser(CORRDIFF_UNET, EDMConfig(sigma_data=0.5))
    with torch.no_grad():
        for p in den.parameters():
            p.normal_(0.0, 0.05)
    return den.eval()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM, the peak resident set size (Linux)
    except OSError:
        pass


def _peak_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30, "cuda_max_memory_allocated"
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20, "process_VmHWM"
    except OSError:
        pass
    return float("nan"), "unavailable"


def bench_domain(den, device: torch.device, hw: tuple[int, int], vs: list[Variant], *, members: int, steps: int,
                 tiling: Tiling, repeat: int, seed: int, gflop_per_image: float) -> list[dict]:
    """Time each variant on one domain; returns its records and a comparison record."""
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    g = torch.Generator().manual_seed(seed + 1)
    # A smooth positive conditioning field, like rain in transformed units (the D >= -cond clamp idles).
    cond = torch.nn.functional.avg_pool2d(torch.rand(1, 1, hw[0] + 8, hw[1] + 8, generator=g), 9, 1) + 0.5
    cond = cond.to(device)
    cfg = SamplerConfig(num_steps=steps)
    tiles, _ = domain_tiles(hw[0], hw[1], tiling)
    tiled_px = sum(t.shape[0] * t.shape[1] for t in tiles)
    evals = evaluations(cfg)
    mpx = hw[0] * hw[1] / 1e6
    common = {"bench": "cuda", "device": str(device), "domain_hw": list(hw), "members": members, "steps": steps,
              "evaluations": evals, "tile": tiling.tile, "overlap": tiling.overlap, "tiles": len(tiles),
              "images_per_call": tiling.max_batch, "tile_overhead": round(tiled_px / (hw[0] * hw[1]), 3),
              "unet": dataclasses.asdict(CORRDIFF_UNET), "params": sum(p.numel() for p in den.parameters()),
              "gflop_per_member_eval": round(gflop_per_image * len(tiles), 2)}
    recs, outs = [], {}
    for v in vs:
        backend = TorchBackend(den, device, compile=v.torch_compile, precision=v.precision, cuda_graphs=v.cuda_graphs)
        step = get_step_impl(device, v.step)

        def run():
            return sample_ensemble(backend, cond, list(range(members)), "downscaling", seed, cfg, tiling,
                                   base=cond, step_impl=step)
        _peak_reset(device)
        t0 = time.perf_counter()
        outs[v.name] = run()  # compiles, captures graphs, picks cuDNN algorithms: untimed below
        if sync:
            sync()
        warmup_s = time.perf_counter() - t0
        t = time_calls(run, repeat=repeat, warmup=0, sync=sync)
        peak, peak_kind = _peak_gib(device)
        per_unit = t["p50_ms"] / (members * mpx * evals)
        settings = {k: val for k, val in dataclasses.asdict(v).items() if k != "name"}
        rec = {**common, "variant": v.name, **settings, "warmup_s": round(warmup_s, 2), **t,
               "ms_per_member_mpx_eval": _sig(per_unit),
               "tflop_per_s": round(members * evals * common["gflop_per_member_eval"] / (t["p50_ms"] * 1e-3) / 1e3, 3),
               "peak_mem_gib": round(peak, 3), "peak_mem_kind": peak_kind,
               "finite": bool(torch.isfinite(outs[v.name]).all())}
        recs.append(rec)
        del backend, run  # frees its graphs before the next variant; compiled code stays cached in-process
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base, fast = recs[0], recs[-1]
    residual = outs[vs[0].name] - cond
    moved = (outs[vs[-1].name] - outs[vs[0].name]).norm() / residual.norm()
    spread = (residual[0] - residual[1]).norm() / residual[0].norm() if members > 1 else float("nan")
    recs.append({**common, "variant": "comparison", "baseline_p50_ms": base["p50_ms"],
                 "precipfast_p50_ms": fast["p50_ms"],
                 "speedup_vs_baseline": _sig(base["p50_ms"] / fast["p50_ms"]),
                 "ms_per_member_mpx_eval": fast["ms_per_member_mpx_eval"], **PEER,
                 "speedup_vs_peer": _sig(PEER["peer_ms_per_member_mpx_eval"] / fast["ms_per_member_mpx_eval"]),
                 "same_device_as_peer": device.type == "cuda" and "H100" in torch.cuda.get_device_name(device),
                 "rel_diff_vs_baseline": _sig(float(moved)), "member_spread_rel": _sig(float(spread))})
    return recs


def _sig(x: float, digits: int = 4) -> float:
    """x to `digits` significant digits (ratios and per-unit times span many orders of magnitude)."""
    return float(f"{x:.{digits}g}")


def _domain(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) >= 8 for p in parts):
        raise argparse.ArgumentTypeError(f"a domain is N or HxW pixels (each >= 8), got {text!r}")
    return (int(parts[0]), int(parts[-1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m precipfast.benchmarks.bench_cuda", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--domains", type=_domain, nargs="+", default=[(128, 128), (512, 512)],
                    help="domain sizes, N or HxW px (default: one tile, and the peer's 512^2)")
    ap.add_argument("--members", type=int, default=30)
    ap.add_argument("--steps", type=int, default=18, help="Heun steps (18: 35 evaluations, as the peer)")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=None, help="images per denoiser call (default: members)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs after the untimed first one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=list(PRECISIONS), help="fast path (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=None,
                    help="fast path: torch.compile (default: on CUDA only)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, help=argparse.SUPPRESS)   # the old name
    ap.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                    help="fast path: CUDA graphs (default: on CUDA only)")
    ap.add_argument("--step", help="fast path's step implementation (default: the registry's for the device)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    a = ap.parse_args(argv)
    if a.compile is not None:
        ap.error("--compile is now --torch-compile (the name `precipfast sample` uses)")
    if a.members < 1 or a.steps < 2 or a.repeat < 1:
        ap.error(f"need --members >= 1, --steps >= 2, --repeat >= 1; got {a.members}, {a.steps}, {a.repeat}")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    tiling = Tiling(tile=a.tile, overlap=a.overlap, max_batch=a.max_batch or a.members)
    vs = variants(device, a.precision, a.torch_compile, a.cuda_graphs, a.step)
    den = build_net(a.seed).to(device)
    print(f"net: {CORRDIFF_UNET}, {sum(p.numel() for p in den.parameters()) / 1e6:.3f} M parameters; "
          f"variants: {vs}", file=sys.stderr)
    for hw in a.domains:
        tile_hw = domain_tiles(hw[0], hw[1], tiling)[0][0].shape  # plan_tiles: every tile the same size
        gflop = count_flops(CORRDIFF_UNET, *tile_hw) / 1e9
        for rec in bench_domain(den, device, hw, vs, members=a.members, steps=a.steps, tiling=tiling,
                                repeat=a.repeat, seed=a.seed, gflop_per_image=gflop):
            emit(rec)
            keys = ("variant", "domain_hw", "p50_ms", "ms_per_member_mpx_eval", "tflop_per_s", "peak_mem_gib",
                    "warmup_s", "speedup_vs_baseline", "speedup_vs_peer", "rel_diff_vs_baseline")
            print(" ".join(f"{k}={rec[k]}" for k in keys if k in rec), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
