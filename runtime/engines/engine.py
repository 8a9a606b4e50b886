"""What every engine is: D(x, sigma, cond) -> denoised for one bundle stage on one device, and the
per-engine settings a run passes down. The sampler never knows which engine it holds."""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from precipfast.choices import check_precision


@dataclass(frozen=True)
class BackendOptions:
    """Per-backend tuning; each field is read by one backend only."""
    max_batch: int                          # tensorrt: largest batch of the optimisation profile (--max-batch)
    tile: int                               # tensorrt: largest tile edge of the optimisation profile (--tile)
    threads: int = 0                        # onnxruntime CPU intra-op threads (0 = one per physical core)
    torch_compile: bool = False             # torch on CUDA: wrap the denoiser in torch.compile
    precision: str = "fp32"                 # torch: denoiser under autocast to bf16/fp16 ("fp32": none)
    cuda_graphs: bool = False               # torch on CUDA: replay the denoiser from CUDA graphs
    fp16: bool = True                       # tensorrt: fp16 kernels (GroupNorm, softmax, EDM scalars fp32)
    cache_dir: str | None = None            # tensorrt: engine cache (None = ~/.cache/precipfast/tensorrt)

    def __post_init__(self):
        if self.threads < 0 or self.max_batch < 1 or self.tile < 8:
            raise ValueError(f"backend options need threads >= 0, max_batch >= 1, tile >= 8; got "
                             f"{self.threads}, {self.max_batch}, {self.tile}")
        check_precision(self.precision)

    def torch_only(self) -> list[str]:
        """The flags of the torch-only settings that differ from their defaults."""
        return [flag for flag, on in (("--precision " + self.precision, self.precision != "fp32"),
                                      ("--torch-compile", self.torch_compile),
                                      ("--cuda-graphs", self.cuda_graphs)) if on]


class Backend(abc.ABC):
    """D(x, sigma, cond) -> denoised for one bundle stage on one device."""
    name: str = ""
    device: torch.device = torch.device("cpu")
    max_batch: int | None = None            # hint: largest batch the backend was built for (None = any)

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma (B,), cond (B, Cc, H, W) float32 -> denoised (B, C_out, H, W)."""


def cache_dir(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("PRECIPFAST_CACHE", Path.home() / ".cache" / "precipfast"))
