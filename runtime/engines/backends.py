"""Denoiser backends: one interface (runtime/engines/engine.py), one registry (pysteps `get_method` style).

A backend runs a bundle stage's D(x, sigma, cond) -> denoised on torch tensors: x (B, C, H, W),
sigma (B,), cond (B, Cc, H, W), all float32, on the backend's device. Names map to factories in
`BACKENDS`; a name that cannot run here raises `BackendUnavailableError` with the reason, never a silent
fallback to another backend.

`resolve_auto(device)` picks, in order (precipfast/choices.py AUTO_ORDER):
  cuda: tensorrt > onnxruntime (TensorRT or CUDA execution provider) > torch
  cpu:  onnxruntime > torch   (ONNX Runtime's MLAS convolutions and graph fusions beat eager per-op
                               dispatch on the CPU: benchmarks/RESULTS.md)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from precipfast.choices import AUTO_ORDER, BACKEND_NAMES, check_backend_name
from precipfast.errors import BackendUnavailableError
from precipfast.runtime.engines.bundle import load_denoiser, open_bundle
from precipfast.runtime.engines.engine import Backend, BackendOptions, cache_dir
from precipfast.runtime.engines.onnxruntime_backend import OnnxRuntimeBackend
from precipfast.runtime.engines.tensorrt import EngineProfile, TensorRTBackend, load_or_build_engine
from precipfast.runtime.engines.torch_backend import TorchBackend


# ---------------------------------------------------------------------------- probes and factories
def _probe_torch(device: str) -> tuple[bool, str]:
    if device == "cuda" and not torch.cuda.is_available():
        return False, f"torch {torch.__version__} has no usable CUDA device"
    return True, f"torch {torch.__version__} eager on {device}"


def _probe_onnxruntime(device: str) -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return False, f"onnxruntime is not importable ({e}); install precipfast[cpu] or precipfast[gpu]"
    present = ort.get_available_providers()
    if device == "cuda" and not {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(present):
        return False, f"onnxruntime {ort.__version__} has no CUDA/TensorRT execution provider ({present})"
    return True, f"onnxruntime {ort.__version__}, providers {present}"


def _probe_tensorrt(device: str) -> tuple[bool, str]:
    if device != "cuda":
        return False, f"tensorrt runs only on CUDA devices, not {device!r}"
    try:
        import tensorrt as trt
    except ImportError as e:
        return False, f"tensorrt is not importable ({e}); install precipfast[tensorrt] on a CUDA machine"
    if not torch.cuda.is_available():
        return False, f"tensorrt {trt.__version__} is installed but torch sees no CUDA device"
    return True, f"tensorrt {trt.__version__} on {torch.cuda.get_device_name()}"


def _make_torch(bundle, stage: str, device: torch.device, options: BackendOptions) -> Backend:
    return TorchBackend(load_denoiser(bundle, stage), device, compile=options.torch_compile,
                        precision=options.precision, cuda_graphs=options.cuda_graphs)


def _make_onnxruntime(bundle, stage: str, device: torch.device, options: BackendOptions) -> Backend:
    return OnnxRuntimeBackend(bundle.file(stage, "onnx"), device, threads=options.threads)


def _make_tensorrt(bundle, stage: str, device: torch.device, options: BackendOptions) -> Backend:
    unet = bundle.unet(stage)
    profile = EngineProfile(in_channels=unet.in_channels, cond_channels=unet.cond_channels,
                            max_batch=options.max_batch, tile=options.tile, fp16=options.fp16)
    runner = load_or_build_engine(bundle.file(stage, "onnx"), profile, bundle.sha256,
                                  cache_dir(options.cache_dir) / "tensorrt", device, unet.out_channels)
    return TensorRTBackend(runner, device, options.max_batch)


@dataclass(frozen=True)
class BackendEntry:
    """A registry row: build a backend, and say whether (and why not) it can run on a device type."""
    make: Callable[..., Backend]            # (bundle, stage, device, options) -> Backend
    probe: Callable[[str], tuple[bool, str]]  # device type -> (usable, reason)


BACKENDS: dict[str, BackendEntry] = {
    "torch": BackendEntry(_make_torch, _probe_torch),
    "onnxruntime": BackendEntry(_make_onnxruntime, _probe_onnxruntime),
    "tensorrt": BackendEntry(_make_tensorrt, _probe_tensorrt),
}
assert tuple(BACKENDS) == BACKEND_NAMES, "precipfast/choices.py names the registry's rows"


def _device_type(device) -> str:
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in AUTO_ORDER:
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return kind


def available_backends(device: str = "cpu") -> dict[str, tuple[bool, str]]:
    """{name: (usable on this device type, reason)} for every registered backend."""
    kind = _device_type(device)
    return {name: entry.probe(kind) for name, entry in BACKENDS.items()}


def resolve_auto(device: str = "cpu") -> str:
    """The first usable backend in AUTO_ORDER for the device type (see the module docstring)."""
    kind = _device_type(device)
    reasons = []
    for name in AUTO_ORDER[kind]:
        ok, why = BACKENDS[name].probe(kind)
        if ok:
            return name
        reasons.append(f"{name}: {why}")
    raise BackendUnavailableError(f"no backend can run on {device!r}: " + "; ".join(reasons))


def get_backend(name: str, bundle, stage: str, device, *, options: BackendOptions) -> Backend:
    """Backend `name` ("auto" resolves by device) for `stage` of `bundle` (a Bundle or its path) on
    `device` (a torch.device or its name; the CUDA index is kept)."""
    check_backend_name(name)
    if name == "auto":
        name = resolve_auto(device)
    kind = _device_type(device)
    ok, why = BACKENDS[name].probe(kind)
    if not ok:
        usable = [n for n, (good, _) in available_backends(kind).items() if good]
        raise BackendUnavailableError(f"backend {name!r} cannot run on {kind}: {why}. "
                                      f"Usable here: {usable}")
    if name != "torch" and options.torch_only():
        raise ValueError(f"{', '.join(options.torch_only())} applies to the torch backend only; this run "
                         f"uses {name!r} (add --backend torch)")
    bundle = open_bundle(bundle)
    bundle.stage(stage)  # refuses a stage the bundle does not have
    return BACKENDS[name].make(bundle, stage, torch.device(device), options)
