"""Export parity: the exported ONNX denoiser against eager torch on fixed inputs (STYLE.md section 7).

Every case runs D(x, sigma, cond) through ONNX Runtime (CPU, the same session settings as the
`onnxruntime` backend) and through the torch module in float32, and reports the largest absolute error
and the largest error relative to the sample's largest |torch output|. A float64 torch run gives the
float32 rounding floor of the network itself, so a reader can see how close the exported graph is to
what float32 can do at all. Cases cover batch 1 and several batches, odd tile sizes (the padding path)
and noise levels from sigma_min = 0.002 to sigma_max = 80 (the whole EDM schedule).
"""
from __future__ import annotations

import copy
import math
import os
from typing import Iterable, Sequence

import numpy as np
import torch

from precipfast.config import EDMConfig, UNetConfig, from_dict
from precipfast.denoiser import build_denoiser, load_weights
from precipfast.runtime.engines.onnxruntime_backend import ort_session

# Pass threshold on the relative error. Both sides compute the same float32 graph; they differ only in
# summation order (MLAS vs oneDNN convolution/GEMM blocking, fused Conv+activation, GroupNorm lowered to
# InstanceNormalization, graph rewrites). Each reordering perturbs a sum of K products by about
# sqrt(K) * 2^-24 relative (K = 9 * C_in <= ~2300 for our widths, so ~3e-6), and about 20 layers compound
# that to ~1e-5 at worst; measured values are 1e-7 to 1e-6, the same order as the float32-vs-float64 floor
# reported beside them. 1e-4 leaves 10x headroom over that bound while any real export fault (a baked-in
# shape, a wrong pad or crop, a dropped preconditioning term) produces errors of order 1e-2 to 1.
PARITY_TOL_REL = 1e-4
SIGMA_PROBE = (0.002, 0.02, 0.2, 1.0, 5.0, 80.0)  # spans the Karras schedule, sigma_min to sigma_max
DEFAULT_BATCHES = (1, 3, 8)
DEFAULT_HW = ((37, 53), (40, 56))


def _inputs(batch: int, hw: tuple[int, int], sigmas: Sequence[float], in_ch: int, cond_ch: int,
            sigma_data: float, gen: torch.Generator):
    """x = y + sigma n with y at the data scale, as the sampler feeds D; cond at working-space scale."""
    h, w = hw
    sigma = torch.tensor(sigmas, dtype=torch.float32)
    y = sigma_data * torch.randn(batch, in_ch, h, w, generator=gen)
    x = y + sigma.view(-1, 1, 1, 1) * torch.randn(batch, in_ch, h, w, generator=gen)
    # Wet everywhere (working-space rain is >= 0): the inference clamp D >= -cond stays inactive, so the
    # comparison exercises the network rather than the clamp.
    cond = 2.0 + torch.randn(batch, cond_ch, h, w, generator=gen).abs()
    return x, sigma, cond


def _rel_err(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max abs error, max over samples of max|err| / max|ref|) for (B, ...) arrays."""
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64)).reshape(len(ref), -1)
    scale = np.maximum(np.abs(ref.astype(np.float64)).reshape(len(ref), -1).max(axis=1), 1e-30)
    return float(err.max()), float((err.max(axis=1) / scale).max())


def parity_report(denoiser: torch.nn.Module, onnx_path: str | os.PathLike, *,
                  batch_sizes: Sequence[int] = DEFAULT_BATCHES,
                  hw_list: Sequence[tuple[int, int]] = DEFAULT_HW, seed: int = 0,
                  real_inputs: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
                  tolerance_rel: float = PARITY_TOL_REL) -> dict:
    """ONNX Runtime (CPU) vs torch float32 on synthetic cases, plus `real_inputs` (x, sigma, cond)
    tuples when given. Every synthetic (batch, H, W) case covers all of SIGMA_PROBE, in as many calls as
    the batch needs. Returns a JSON-ready dict with per-case errors, the tolerance and `passed`."""
    import onnxruntime as ort

    sess = ort_session(onnx_path, "cpu")
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    in_ch, cond_ch = int(shapes["x"][1]), int(shapes["cond"][1])
    sigma_data = float(getattr(denoiser, "sigma_data", 0.5))
    ref32 = denoiser.eval()
    ref64 = copy.deepcopy(denoiser).double().eval()
    gen = torch.Generator().manual_seed(seed)

    def run(x, sigma, cond):
        with torch.inference_mode():
            t32 = ref32(x, sigma, cond).numpy()
            t64 = ref64(x.double(), sigma.double(), cond.double()).numpy()
        feed = {"x": x.numpy(), "sigma": sigma.numpy(), "cond": cond.numpy()}
        o = sess.run(None, {k: v for k, v in feed.items() if k in shapes})[0]
        return o, t32, t64

    cases = []
    for b in batch_sizes:
        for hw in hw_list:
            calls = math.ceil(len(SIGMA_PROBE) / b)
            worst = {"max_abs_err": 0.0, "max_rel_err": 0.0, "torch_fp32_rel_err": 0.0}
            covered = []
            for c in range(calls):
                sig = [SIGMA_PROBE[(c * b + i) % len(SIGMA_PROBE)] for i in range(b)]
                covered += sig
                o, t32, t64 = run(*_inputs(b, hw, sig, in_ch, cond_ch, sigma_data, gen))
                _accumulate(worst, o, t32, t64)
            cases.append(_case("synthetic", b, hw, sorted(set(covered)), worst, tolerance_rel))
    for x, sigma, cond in real_inputs or ():
        x, sigma, cond = x.float().cpu(), sigma.float().cpu().reshape(-1), cond.float().cpu()
        worst = {"max_abs_err": 0.0, "max_rel_err": 0.0, "torch_fp32_rel_err": 0.0}
        _accumulate(worst, *run(x, sigma, cond))
        cases.append(_case("real", x.shape[0], tuple(x.shape[-2:]), sorted(set(sigma.tolist())), worst,
                           tolerance_rel))
    return {"tolerance_rel": tolerance_rel,
            "passed": all(c["passed"] for c in cases),
            "max_rel_err": max((c["max_rel_err"] for c in cases), default=0.0),
            "max_abs_err": max((c["max_abs_err"] for c in cases), default=0.0),
            "reference": "torch float32 eager (float64 run gives the rounding floor)",
            "provider": "CPUExecutionProvider", "onnxruntime": ort.__version__, "torch": torch.__version__,
            "cases": cases}


def _accumulate(worst: dict, onnx_out: np.ndarray, t32: np.ndarray, t64: np.ndarray) -> None:
    if onnx_out.shape != t32.shape:
        # A wrong output shape is an export fault, not a rounding difference: report it as infinite error.
        worst.update(max_abs_err=math.inf, max_rel_err=math.inf, shape_mismatch=[list(onnx_out.shape),
                                                                                  list(t32.shape)])
        return
    a, r = _rel_err(onnx_out, t32)
    _, floor = _rel_err(t32, t64)
    nan = not np.isfinite(onnx_out).all()
    worst["max_abs_err"] = math.inf if nan else max(worst["max_abs_err"], a)
    worst["max_rel_err"] = math.inf if nan else max(worst["max_rel_err"], r)
    worst["torch_fp32_rel_err"] = max(worst["torch_fp32_rel_err"], floor)


def _case(kind: str, batch: int, hw, sigmas: list, worst: dict, tol: float) -> dict:
    sigmas = [float(f"{s:.6g}") for s in sigmas]  # float32 inputs print as 0.10000000149...
    return {"kind": kind, "batch": int(batch), "hw": [int(hw[0]), int(hw[1])], "sigmas": sigmas, **worst,
            "passed": bool(worst["max_rel_err"] <= tol)}


def summary_line(report: dict) -> str:
    """One human line: worst error, tolerance, verdict."""
    verdict = "PASS" if report["passed"] else "FAIL"
    return (f"ONNX parity {verdict}: max rel err {report['max_rel_err']:.2e} (tolerance "
            f"{report['tolerance_rel']:.0e}), max abs err {report['max_abs_err']:.2e} over "
            f"{len(report['cases'])} cases")


_LIVE: dict = {}  # (bundle dir, stage, weights sha256, onnx sha256) -> report: one check per process


def live_pair_check(root, files: dict):
    """A `check_stage_pairs` live check for the bundle at `root`: the stage's ONNX against the torch net
    built from its safetensors, on one batch covering all of SIGMA_PROBE at an odd tile size. None when
    onnxruntime is not installed (the ONNX cannot run here, so it cannot matter here). `files`: the
    manifest's {name: sha256}, checked, which key the cache."""
    import importlib.util
    from pathlib import Path
    if importlib.util.find_spec("onnxruntime") is None:  # no import: it costs a second, and is rarely needed
        return None


    def check(stage: str, entry: dict) -> dict:
        key = (os.path.realpath(root), stage, files.get(entry["weights"]), files.get(entry["onnx"]))
        if key not in _LIVE:
            den = build_denoiser(from_dict(UNetConfig, entry["unet"]), from_dict(EDMConfig, entry["edm"]))
            load_weights(den, Path(root) / entry["weights"])
            with torch.random.fork_rng():  # the check must not move the caller's global RNG
                _LIVE[key] = parity_report(den.eval(), Path(root) / entry["onnx"],
                                           batch_sizes=(len(SIGMA_PROBE),), hw_list=((19, 27),))
        return _LIVE[key]
    return check
