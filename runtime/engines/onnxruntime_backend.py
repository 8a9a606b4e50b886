"""The ONNX Runtime engine: a stage's ONNX graph in one InferenceSession (CPU, or the CUDA/TensorRT execution
providers of onnxruntime-gpu), and the session settings the export's parity check uses too."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from precipfast.errors import BackendUnavailableError, EngineMismatchError
from precipfast.runtime.engines.engine import Backend, cache_dir


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
                    "trt_engine_cache_path": str(cache_dir(None) / "ort-trt")}
        options = {"TensorrtExecutionProvider": trt_opts, "CUDAExecutionProvider": {"device_id": device_id}}
        providers = [(p, options[p]) for p in gpu]
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unparsable models
        raise EngineMismatchError(f"onnxruntime cannot load {str(onnx_path)!r}: {e}") from None
