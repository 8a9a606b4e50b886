"""Denoiser throughput per backend, side by side in one run, against the machine's matmul rate.

    python -m precipfast.benchmarks.bench_backends --model DIR --max-batch 8 --hw 128 128 --repeat 5

Measures fp32 matmul GFLOP/s (1024^3 torch.matmul, median) as the machine's practical peak, then, for
every backend usable on the device, one denoiser call D(x, sigma, cond) on a (batch, C, H, W) input:
p20/p50/p80 ms, images/s, achieved GFLOP/s from `precipfast.unet.count_flops` and its fraction of the matmul
rate, plus the backend's max relative deviation from torch. Without --model a random-weight denoiser of
the given U-Net shape is exported to a temporary bundle. JSON lines on stdout, a table on stderr.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from precipfast.benchmarks._emit import emit, time_calls
from precipfast.config import EDMConfig, SamplerConfig, UNetConfig, to_dict
from precipfast.denoiser import build_denoiser
from precipfast.export.bundle import write_bundle
from precipfast.options import BenchOptions
from precipfast.runtime.engines.backends import BackendOptions, available_backends, get_backend
from precipfast.runtime.engines.bundle import open_bundle
from precipfast.unet import count_flops

DEFAULTS = BenchOptions()  # the defaults of `precipfast bench`, shared by this script's flags
MATMUL_N = 1024


def matmul_gflops(device: torch.device, repeat: int = 10) -> dict:
    """fp32 GEMM rate: the ceiling a convolution network can approach on this device."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=g).to(device)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=g).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    t = time_calls(lambda: torch.matmul(a, b), repeat, warmup=2, sync=sync)
    return {**t, "gflop_per_s": round(2 * MATMUL_N ** 3 / (t["p50_ms"] * 1e6), 2)}


def random_bundle(out_dir: Path, unet_cfg, seed: int = 0) -> Path:
    """A one-stage (downscaling) bundle with random, non-zero weights (EDM zero-inits some layers)."""

    torch.manual_seed(seed)
    den = build_denoiser(unet_cfg, EDMConfig())
    with torch.no_grad():
        for p in den.parameters():
            p.normal_(0.0, 0.05)
    names = ["precip_up"] + [f"aux{i}" for i in range(1, unet_cfg.cond_channels)]
    cfg = {"unet": to_dict(unet_cfg), "edm": to_dict(EDMConfig()), "sampler": to_dict(SamplerConfig()),
           "cond_names": names}
    return write_bundle(out_dir, {"downscaling": (den, cfg)}, name="bench-random", model_version="0",
                        scale_factor=10, pooling="max", transform={}, parity=False)


def bench(model, stage: str | None, max_batch: int, hw: tuple[int, int], repeat: int, device: str = "cpu",
          names: list[str] | None = None, threads: int = 0) -> list[dict]:
    """Run the comparison; returns (and emits) one record per backend plus the matmul record."""

    dev = torch.device(device)
    bundle = open_bundle(model)
    batch = max_batch
    opts = BackendOptions(max_batch=batch, tile=max(hw), threads=threads)
    stage = stage or bundle.stage_names[0]
    unet = bundle.unet(stage)
    h, w = hw
    flops = count_flops(unet, h, w) * batch
    peak = matmul_gflops(dev, max(3, repeat // 2))
    emit({"bench": "matmul", "impl": "torch", "device": device, "shape": [MATMUL_N] * 3, "dtype": "fp32", **peak})
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(batch, unet.in_channels, h, w, generator=g) * 2).to(dev)
    cond = torch.randn(batch, unet.cond_channels, h, w, generator=g).to(dev)
    sigma = torch.logspace(-2.7, 1.9, batch).to(dev)  # 0.002 .. 80: the sampler's whole range
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    ref = get_backend("torch", bundle, stage, device, options=opts)(x, sigma, cond)  # what every backend is checked against
    records = []
    for name, (ok, why) in available_backends(dev.type).items():
        if names and name not in names:
            continue
        base = {"bench": "backends", "impl": name, "device": device, "stage": stage,
                "shape": [batch, unet.in_channels, h, w], "dtype": "fp32",
                "unet": {"model_channels": unet.model_channels, "channel_mult": list(unet.channel_mult)}}
        if not ok:
            rec = {**base, "available": False, "reason": why}
        else:
            be = get_backend(name, bundle, stage, device, options=opts)
            out = be(x, sigma, cond)
            t = time_calls(lambda: be(x, sigma, cond), repeat, warmup=2, sync=sync)
            gflops = flops / (t["p50_ms"] * 1e6)
            rec = {**base, "available": True, **t, "images_per_s": round(batch / t["p50_ms"] * 1e3, 2),
                   "gflop_per_call": round(flops / 1e9, 4), "gflop_per_s": round(gflops, 2),
                   "matmul_gflop_per_s": peak["gflop_per_s"],
                   "fraction_of_matmul": round(gflops / peak["gflop_per_s"], 4),
                   "max_rel_err_vs_torch": float(((out.float() - ref.float()).abs().max() / ref.abs().max()).item())}
        emit(rec)
        records.append(rec)
    _summary(records, peak, flops, batch, hw)
    return records


def _summary(records: list[dict], peak: dict, flops: float, batch: int, hw) -> None:
    p = lambda s: print(s, file=sys.stderr)  # noqa: E731
    p(f"denoiser {flops / 1e9:.3f} GFLOP per call (batch {batch}, {hw[0]}x{hw[1]}); "
      f"matmul peak {peak['gflop_per_s']:.1f} GFLOP/s")
    torch_ms = next((r["p50_ms"] for r in records if r["impl"] == "torch" and r.get("available")), None)
    p(f"{'backend':<12} {'p50 ms':>9} {'p20-p80 ms':>17} {'img/s':>9} {'GFLOP/s':>9} {'of peak':>8} {'vs torch':>9}")
    for r in records:
        if not r["available"]:
            p(f"{r['impl']:<12} unavailable: {r['reason']}")
            continue
        speed = f"{torch_ms / r['p50_ms']:.2f}x" if torch_ms else "-"
        p(f"{r['impl']:<12} {r['p50_ms']:>9.2f} {r['p20_ms']:>8.2f}-{r['p80_ms']:<8.2f} {r['images_per_s']:>9.1f} "
          f"{r['gflop_per_s']:>9.2f} {r['fraction_of_matmul']:>7.1%} {speed:>9}")


def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(prog="python -m precipfast.benchmarks.bench_backends",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="bundle directory (default: a random-weight denoiser, see --model-channels)")
    ap.add_argument("--stage", help="stage to run (default: the bundle's first)")
    ap.add_argument("--max-batch", type=int, default=DEFAULTS.max_batch)
    ap.add_argument("--hw", type=int, nargs=2, default=DEFAULTS.hw, metavar=("H", "W"))
    ap.add_argument("--repeat", type=int, default=DEFAULTS.repeat)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--backends", help="comma-separated subset (default: every registered backend)")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = physical cores)")
    ap.add_argument("--model-channels", type=int, default=32)
    ap.add_argument("--channel-mult", default="1,2,2")
    ap.add_argument("--attn-levels", default="2")
    ap.add_argument("--cond-channels", type=int, default=1)
    a = ap.parse_args(argv)
    names = a.backends.split(",") if a.backends else None
    with tempfile.TemporaryDirectory(prefix="pf-bench-") as tmp:
        path = a.model
        if path is None:
            ints = lambda s: tuple(int(v) for v in s.split(",") if v)  # noqa: E731
            cfg = UNetConfig(cond_channels=a.cond_channels, model_channels=a.model_channels,
                             channel_mult=ints(a.channel_mult), attn_levels=ints(a.attn_levels))
            path = random_bundle(Path(tmp) / "bundle", cfg)
        BenchOptions(max_batch=a.max_batch, hw=a.hw, repeat=a.repeat, device=a.device)  # the CLI's range checks
        bench(path, a.stage, a.max_batch, tuple(a.hw), a.repeat, a.device, names, a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
