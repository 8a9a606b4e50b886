"""ONNX export of the full EDM-preconditioned denoiser D(x, sigma, cond) (Karras et al. 2022, Table 1).

The graph holds everything between the sampler and the U-Net: c_skip/c_out/c_in/c_noise, the noise
embedding, the U-Net and the padding to a multiple of its downsampling factor. Inputs `x` (B, in, H, W),
`sigma` (B,), `cond` (B, Cc, H, W), output `denoised` (B, out, H, W), all float32, with batch, height
and width dynamic, so one file serves every ensemble micro-batch and every tile shape.

We use the TorchScript (tracing) exporter: the network is a fixed sequence of ops, tracing records the
shape arithmetic (padding amounts, attention reshapes, crops) as graph ops, and it needs no onnxscript
rewrites. The one thing tracing cannot record is Python control flow on shapes: `UNet.forward` skips
its edge padding when H and W are already multiples of 2^(levels-1), and a trace at such a size would
bake "no padding" into the graph. `_PadToMultiple` therefore pads x and cond itself, with the amounts
computed from the runtime shape inside the graph, so the U-Net always sees a multiple and its own
(skipped) branch is correct for every input. Replicate padding commutes with the per-sample scaling by
c_in, so the result is the same arithmetic as eager `D` (tested at odd sizes in tests/export). A
"mean+edm" stage is the exception that needs care: its diffusion net sees x - mu, so the padded rows
must hold x - mu of the last real row (edge padding of the difference), not mu computed on padded rows.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from precipfast.edm import Preconditioned

INPUT_NAMES = ("x", "sigma", "cond")
OUTPUT_NAME = "denoised"
DEFAULT_OPSET = 17
DYNAMIC_AXES = {
    "x": {0: "batch", 2: "height", 3: "width"},
    "sigma": {0: "batch"},
    "cond": {0: "batch", 2: "height", 3: "width"},
    OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
}


class _PadToMultiple(torch.nn.Module):
    """D on inputs edge-padded to a multiple of `factor`, cropped back: the U-Net's own padding,
    written so a trace records the amounts as functions of the input shape."""

    def __init__(self, denoiser: Preconditioned, factor: int, cond_channels: int):
        super().__init__()
        self.denoiser = denoiser
        self.factor = int(factor)
        self.cond_channels = int(cond_channels)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        pad = (0, (-w) % self.factor, 0, (-h) % self.factor)
        x_p = F.pad(x, pad, mode="replicate")
        cond_p = F.pad(cond, pad, mode="replicate") if self.cond_channels else cond
        if getattr(self.denoiser, "kind", "edm") == "mean+edm":
            # Eager D edge-pads x - mu, so the padded rows hold x - mu of the last real row: mu is computed
            # at the real size (its own padding is the U-Net's), cropped and edge-padded like x.
            mu = F.pad(self.denoiser.mean(x_p, cond_p)[:, :, :h, :w], pad, mode="replicate")
            return self.denoiser(x_p, sigma, cond_p, mu=mu)[:, :, :h, :w]
        return self.denoiser(x_p, sigma, cond_p)[:, :, :h, :w]


def downsample_factor(denoiser: Preconditioned) -> int:
    """2^(levels-1) of the wrapped U-Net (1 when the network does not say)."""
    cfg = getattr(denoiser.net, "cfg", None)
    return int(getattr(cfg, "downsample_factor", 1))


def export_onnx(denoiser: Preconditioned, path: str | os.PathLike, *, cond_channels: int,
                in_channels: int = 1, opset: int = DEFAULT_OPSET,
                example_hw: tuple[int, int] = (40, 56)) -> Path:
    """Write D(x, sigma, cond) -> denoised to `path` as ONNX (float32, dynamic batch/H/W) and check it
    with `onnx.checker`. `example_hw` is only the trace size; any H, W >= 1 runs afterwards."""
    import onnx

    if cond_channels < 0 or in_channels < 1:
        raise ValueError(f"export_onnx needs cond_channels >= 0 and in_channels >= 1, got "
                         f"{cond_channels} and {in_channels}")
    cfg = getattr(denoiser.net, "cfg", None)
    if cfg is not None and (cfg.cond_channels, cfg.in_channels) != (cond_channels, in_channels):
        raise ValueError(f"export_onnx: the network takes cond_channels={cfg.cond_channels}, "
                         f"in_channels={cfg.in_channels}; got cond_channels={cond_channels}, "
                         f"in_channels={in_channels}")
    path = Path(path)
    h, w = example_hw
    # Two samples with distinct sigmas so no per-sample value can be folded into a constant.
    x = torch.randn(2, in_channels, h, w, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, cond_channels, h, w, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.5, 2.0])
    model = _PadToMultiple(denoiser, downsample_factor(denoiser), cond_channels).eval()
    was_training = denoiser.training
    denoiser.eval()
    try:
        with warnings.catch_warnings():
            # Tracer warnings flag shape values read as Python numbers: channel counts and the U-Net's
            # skipped pad branch, both fixed by construction (see the module docstring).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            with torch.no_grad():
                torch.onnx.export(model, (x, sigma, cond), str(path), dynamo=False, opset_version=opset,
                                  input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                  dynamic_axes=DYNAMIC_AXES, do_constant_folding=True)
    finally:
        denoiser.train(was_training)
    _fix_output_channels(path, int(getattr(cfg, "out_channels", in_channels)))
    onnx.checker.check_model(str(path), full_check=True)
    return path


def _fix_output_channels(path: Path, out_channels: int) -> None:
    """The crop leaves the output's channel dim symbolic; state it so consumers (TensorRT profiles,
    shape checks) see (batch, out, height, width)."""
    import onnx

    model = onnx.load(str(path))
    dim = model.graph.output[0].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = out_channels
    onnx.save(model, str(path))
