"""Denoiser backends: one interface, one registry (pysteps `get_method` style).

A backend runs a bundle stage's D(x, sigma, cond) -> denoised on torch tensors: x (B, C, H, W),
sigma (B,), cond (B, Cc, H, W), all float32, on the backend's device; the sampler never knows which
one it holds. Names map to factories in `BACKENDS`; a name that cannot run here raises
`BackendUnavailableError` with the reason, never a silent fallback to another backend.

`resolve_auto(device)` picks, in order:
  cuda: tensorrt > onnxruntime (TensorRT or CUDA execution provider) > torch
  cpu:  onnxruntime > torch   (ONNX Runtime CPU measured 2.7-3.7x faster than eager torch on 2 cores:
                               MLAS convolutions and graph fusions beat per-op eager dispatch)
"""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from precipfast.errors import BackendUnavailableError, EngineMismatchError, PrecipfastError

AUTO_ORDER = {"cuda": ("tensorrt", "onnxruntime", "torch"), "cpu": ("onnxruntime", "torch")}


class UnknownBackendError(PrecipfastError, ValueError):
    """A backend name that is not in the registry (a ValueError too: it is bad input)."""


@dataclass(frozen=True)
class BackendOptions:
    """Per-backend tuning; each field is read by one backend only."""
    max_batch: int                          # tensorrt: largest batch of the optimisation profile (--max-batch)
    max_hw: int                             # tensorrt: largest tile edge of the optimisation profile (--tile)
    threads: int = 0                        # onnxruntime CPU intra-op threads (0 = one per physical core)
    torch_compile: bool = False             # torch on CUDA: wrap the denoiser in torch.compile
    precision: str = "fp32"                 # torch: denoiser under autocast to bf16/fp16 ("fp32": none)
    cuda_graphs: bool = False               # torch on CUDA: replay the denoiser from CUDA graphs
    fp16: bool = True                       # tensorrt: fp16 kernels (GroupNorm, softmax, EDM scalars fp32)
    cache_dir: str | None = None            # tensorrt: engine cache (None = ~/.cache/precipfast/tensorrt)

    def __post_init__(self):
        if self.threads < 0 or self.max_batch < 1 or self.max_hw < 8:
            raise ValueError(f"backend options need threads >= 0, max_batch >= 1, max_hw >= 8; got "
                             f"{self.threads}, {self.max_batch}, {self.max_hw}")
        check_precision(self.precision)

    def torch_only(self) -> list[str]:
        """The flags of the torch-only settings that differ from their defaults."""
        return [flag for flag, on in (("--precision " + self.precision, self.precision != "fp32"),
                                      ("--torch-compile", self.torch_compile),
                                      ("--cuda-graphs", self.cuda_graphs)) if on]


# Denoiser precision of the torch backend: the autocast dtype (None: plain float32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str) -> str:
    """The name itself, or ValueError naming --precision and the choices."""
    if name not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


class Backend(abc.ABC):
    """D(x, sigma, cond) -> denoised for one bundle stage on one device."""
    name: str = ""
    device: torch.device = torch.device("cpu")
    max_batch: int | None = None            # hint: largest batch the backend was built for (None = any)

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma (B,), cond (B, Cc, H, W) float32 -> denoised (B, C_out, H, W)."""


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
            from precipfast.runtime.engines.cuda_graphs import GraphedDenoiser
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
        # fp16 autocast does run on the CPU, but x86 CPUs without AVX512-FP16 convert instead of
        # computing in it: a small U-Net took 0.55 s in fp16 against 0.18 s in fp32 and 0.06 s in bf16
        # (2-core EPYC with avx512_bf16, 2026-12, 4 x 48^2 px): fp16 never pays on the CPU.
        raise ValueError(f"--precision fp16 runs on CUDA only (on the CPU it is slower than fp32); "
                         f"use --precision bf16 or fp32 on {device}")
    if cuda_graphs:
        raise ValueError(f"--cuda-graphs needs a CUDA device; this run is on {device}")
    if compile:
        raise ValueError(f"--torch-compile runs on CUDA only (on the CPU its compile time outweighs the "
                         f"gain for these short runs); this run is on {device}")


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime InferenceSession (cached for the backend's life); I/O binding on CUDA."""
    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, device: str | torch.device = "cpu", threads: int = 0):
        self.device = torch.device(device)
        self.session = ort_session(onnx_path, self.device.type, threads=threads,
                                   device_id=self.device.index or 0)
        self._inputs = {i.name for i in self.session.get_inputs()}
        out = self.session.get_outputs()[0]
        self._out_name = out.name
        self._out_channels = out.shape[1] if isinstance(out.shape[1], int) else None

    def __call__(self, x, sigma, cond):
        feed = {"x": x, "sigma": sigma.reshape(-1), "cond": cond}
        feed = {k: v.detach().to(torch.float32).contiguous() for k, v in feed.items() if k in self._inputs}
        if self.device.type == "cpu":
            out = self.session.run([self._out_name], {k: v.cpu().numpy() for k, v in feed.items()})[0]
            return torch.from_numpy(out)
        return self._run_bound(feed, x.shape)

    def _run_bound(self, feed: dict, shape) -> torch.Tensor:
        """Inputs and output stay in device memory: ORT reads and writes torch's buffers directly."""
        import numpy as np

        binding = self.session.io_binding()
        dev_id = self.device.index or 0
        for k, v in feed.items():
            v = v.to(self.device)
            feed[k] = v  # keep the tensor alive until the run completes
            binding.bind_input(k, "cuda", dev_id, np.float32, tuple(v.shape), v.data_ptr())
        b, _, h, w = shape
        out = torch.empty((b, self._out_channels or shape[1], h, w), dtype=torch.float32, device=self.device)
        binding.bind_output(self._out_name, "cuda", dev_id, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch must be visible
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out


class TensorRTBackend(Backend):
    """A TensorRT engine built from the stage's ONNX (runtime/engines/tensorrt.py), cached on disk."""
    name = "tensorrt"

    def __init__(self, runner, device: torch.device, max_batch: int):
        self.runner, self.device, self.max_batch = runner, device, max_batch

    def __call__(self, x, sigma, cond):
        return self.runner(x, sigma, cond)


def physical_cores() -> int:
    """Cores this process may use, one thread per physical core (SMT siblings share the FMA units,
    so a second thread per core slows ORT's convolutions down)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        cores, seen = set(), None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                seen = line.split(":")[1].strip()
            elif line.startswith("core id"):
                cores.add((seen, line.split(":")[1].strip()))
        return max(1, min(usable, len(cores) or usable))
    except OSError:
        return max(1, usable)


def ort_session(onnx_path, device: str = "cpu", *, threads: int = 0, device_id: int = 0):
    """InferenceSession with full graph optimisation and providers chosen by device type."""
    import onnxruntime as ort

    if not Path(onnx_path).is_file():
        raise EngineMismatchError(f"ONNX file {str(onnx_path)!r} is missing")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or physical_cores()
    opts.log_severity_level = 3  # warnings about unused initializers are noise to users
    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        present = ort.get_available_providers()
        gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in present]
        if not gpu:
            raise BackendUnavailableError(
                f"onnxruntime on {device} needs the CUDA or TensorRT execution provider; this onnxruntime "
                f"has {present} (install onnxruntime-gpu instead of onnxruntime)")
        trt_opts = {"device_id": device_id, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(_cache_dir(None) / "ort-trt")}
        options = {"TensorrtExecutionProvider": trt_opts, "CUDAExecutionProvider": {"device_id": device_id}}
        providers = [(p, options[p]) for p in gpu]
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unparsable models
        raise EngineMismatchError(f"onnxruntime cannot load {str(onnx_path)!r}: {e}") from None


def _cache_dir(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("PRECIPFAST_CACHE", Path.home() / ".cache" / "precipfast"))


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
    from precipfast.runtime.engines.bundle import load_denoiser
    return TorchBackend(load_denoiser(bundle, stage), device, compile=options.torch_compile,
                        precision=options.precision, cuda_graphs=options.cuda_graphs)


def _make_onnxruntime(bundle, stage: str, device: torch.device, options: BackendOptions) -> Backend:
    return OnnxRuntimeBackend(bundle.file(stage, "onnx"), device, threads=options.threads)


def _make_tensorrt(bundle, stage: str, device: torch.device, options: BackendOptions) -> Backend:
    from precipfast.runtime.engines.tensorrt import EngineProfile, load_or_build_engine
    unet = bundle.unet(stage)
    profile = EngineProfile(in_channels=unet.in_channels, cond_channels=unet.cond_channels,
                            max_batch=options.max_batch, max_hw=options.max_hw, fp16=options.fp16)
    runner = load_or_build_engine(bundle.file(stage, "onnx"), profile, bundle.sha256,
                                  _cache_dir(options.cache_dir) / "tensorrt", device, unet.out_channels)
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
    from precipfast.runtime.engines.bundle import open_bundle

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


def check_backend_name(name: str) -> str:
    """The name itself, or UnknownBackendError naming --backend and the registry."""
    if name != "auto" and name not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {name!r} (--backend); available: {sorted(BACKENDS)} or 'auto'")
    return name
