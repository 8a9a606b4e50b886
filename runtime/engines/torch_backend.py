"""The torch engine: the bundle's safetensors in eager PyTorch (the reference path), or on request under
autocast, torch.compile and CUDA graphs."""
from __future__ import annotations

import torch

from precipfast.choices import check_precision
from precipfast.runtime.engines.cuda_graphs import GraphedDenoiser
from precipfast.runtime.engines.engine import Backend

# Denoiser precision of the torch backend: the autocast dtype (None: plain float32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend(Backend):
    """PyTorch: eager float32 (the reference path), or on request the denoiser under autocast (bf16 on
    CUDA or the CPU, fp16 on CUDA), compiled with torch.compile and replayed from CUDA graphs (CUDA).

    Under autocast the convolutions and matmuls run in the low precision with float32 accumulation, while
    GroupNorm, softmax and the EDM preconditioning (c_skip x + c_out F, `edm.Preconditioned`) stay
    float32; the output is float32, so the sampler state never leaves float32."""
    name = "torch"

    def __init__(self, denoiser: torch.nn.Module, device: str | torch.device = "cpu", compile: bool = False,
                 precision: str = "fp32", cuda_graphs: bool = False):
        self.device = torch.device(device)
        check_torch_settings(self.device, precision, compile, cuda_graphs)
        self.precision, self.cuda_graphs = precision, cuda_graphs
        self.module = denoiser.to(self.device).eval().requires_grad_(False)
        fn = self._autocast if PRECISIONS[precision] is not None else self.module
        # CPU stays uncompiled: compile time would dominate short CPU runs (refused above).
        self._fn = torch.compile(fn, dynamic=True) if compile else fn
        if cuda_graphs:
            self._fn = GraphedDenoiser(self._fn, self.device)

    def _autocast(self, x, sigma, cond):
        # cache_enabled=False: the weight-cast cache lives only as long as one autocast region, so it
        # saves nothing per call here, and a CUDA graph must not capture casts into a cache that is
        # freed when the region exits (PyTorch: autocast + CUDA graphs need cache_enabled=False).
        with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision], cache_enabled=False):
            return self.module(x, sigma, cond)

    def __call__(self, x, sigma, cond):
        with torch.inference_mode():
            return self._fn(x, sigma, cond)


def check_torch_settings(device: torch.device, precision: str, compile: bool, cuda_graphs: bool) -> None:
    """Refuse torch-backend settings that cannot run (or cannot pay) on `device`, one line each."""
    check_precision(precision)
    if device.type == "cuda":
        return
    if precision == "fp16":
        # x86 CPUs without AVX512-FP16 convert to fp16 instead of computing in it (benchmarks/RESULTS.md).
        raise ValueError(f"--precision fp16 runs on CUDA only (on the CPU it is slower than fp32); "
                         f"use --precision bf16 or fp32 on {device}")
    if cuda_graphs:
        raise ValueError(f"--cuda-graphs needs a CUDA device; this run is on {device}")
    if compile:
        raise ValueError(f"--torch-compile runs on CUDA only (on the CPU its compile time outweighs the "
                         f"gain for these short runs); this run is on {device}")
