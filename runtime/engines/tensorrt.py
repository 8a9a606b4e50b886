"""TensorRT engines built from a bundle stage's ONNX denoiser (TensorRT 10 Python API).

One optimisation profile covers batch 1..max_batch and tiles 1..tile pixels a side, tuned for the
full batch of full tiles (what the ensemble sampler sends). With fp16 on, the layers where half
precision loses what the sampler needs stay float32: normalisation (GroupNorm's variance of ~10^3
values), softmax (attention logits), reductions, and everything outside the U-Net, i.e. the EDM
preconditioning c_skip x + c_out F (at sigma = 0.002, c_skip = 1 - 1.6e-5 is not representable in fp16).
I/O tensors stay float32. Engines are cached on disk under a key of GPU name, TensorRT version, bundle
sha256 and profile, with a config.json-style sidecar; the runtime rebuilds on any mismatch.

Built at run time by the `tensorrt` backend (runtime/engines/backends.py), never shipped in a bundle: an engine
belongs to one GPU and one TensorRT version. Runs only where `available_backends("cuda")` says so.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from precipfast.errors import EngineMismatchError
from precipfast.runtime.engines.engine import Backend

WORKSPACE_BYTES = 4 << 30  # builder scratch; tactics needing more are skipped, not failed


@dataclass(frozen=True)
class EngineProfile:
    """Shapes and precision an engine is built for."""
    in_channels: int                        # channels of x
    cond_channels: int                      # channels of cond
    max_batch: int                          # largest batch (also the tuning batch): the run's images per call
    tile: int                               # largest tile edge (also the tuning tile): the run's --tile
    min_tile: int = 1                       # smallest tile edge (edge tiles of small domains)
    fp16: bool = True                       # fp16 kernels, with the float32 islands listed above


def engine_key(profile: EngineProfile, bundle_sha256: str, gpu_name: str, trt_version: str) -> dict:
    """Everything an engine depends on; its sha256 names the cache file."""
    return {"gpu": gpu_name, "tensorrt": trt_version, "bundle_sha256": bundle_sha256, "profile": asdict(profile)}


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def build_engine(onnx_path: str | os.PathLike, profile: EngineProfile) -> bytes:
    """Parse the ONNX file and build a serialized engine for `profile`."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10 networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineMismatchError(f"TensorRT cannot parse {str(onnx_path)!r}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if profile.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        _keep_fp32_islands(network, trt)
    opt = builder.create_optimization_profile()
    lo, hi = profile.min_tile, profile.tile
    for name, ch in (("x", profile.in_channels), ("cond", profile.cond_channels)):
        opt.set_shape(name, (1, ch, lo, lo), (profile.max_batch, ch, hi, hi), (profile.max_batch, ch, hi, hi))
    opt.set_shape("sigma", (1,), (profile.max_batch,), (profile.max_batch,))
    config.add_optimization_profile(opt)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise EngineMismatchError(f"TensorRT failed to build an engine from {str(onnx_path)!r} for {profile}")
    return bytes(blob)


def _keep_fp32_islands(network, trt) -> None:
    """Pin normalisation, softmax, reductions and the EDM preconditioning (nodes outside `/net/`) to fp32."""
    pinned = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outputs or any(t.dtype != trt.float32 for t in outputs):
            continue  # shape arithmetic (int64) and boolean masks have no precision to pin
        if layer.type in pinned or "/net/" not in layer.name:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


class TensorRTRunner:
    """Runs a deserialized engine on torch CUDA tensors, on torch's current stream."""

    def __init__(self, engine_bytes: bytes, device: torch.device, out_channels: int):
        import tensorrt as trt

        self.device, self.out_channels = device, out_channels
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise EngineMismatchError("TensorRT could not deserialize the cached engine")
        self.context = self.engine.create_execution_context()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        feed = {"x": x, "sigma": sigma.reshape(-1), "cond": cond}
        feed = {k: v.to(self.device, torch.float32).contiguous() for k, v in feed.items()}
        b, _, h, w = x.shape
        out = torch.empty((b, self.out_channels, h, w), dtype=torch.float32, device=self.device)
        for name, t in feed.items():
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise EngineMismatchError(f"input {name} of shape {tuple(t.shape)} is outside the engine's "
                                          "optimisation profile (raise max_batch / tile)")
            self.context.set_tensor_address(name, t.data_ptr())
        self.context.set_tensor_address("denoised", out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineMismatchError("TensorRT execution failed")
        return out


def load_or_build_engine(onnx_path: str | os.PathLike, profile: EngineProfile, bundle_sha256: str,
                         cache_dir: Path, device: torch.device, out_channels: int = 1) -> TensorRTRunner:
    """A runner from the cache when its sidecar matches, else build, cache (atomically) and run."""
    import tensorrt as trt

    key = engine_key(profile, bundle_sha256, torch.cuda.get_device_name(device), trt.__version__)
    stem = Path(cache_dir) / _key_hash(key)[:24]
    engine_file, sidecar = stem.with_suffix(".engine"), stem.with_suffix(".json")
    if engine_file.is_file() and sidecar.is_file():
        try:
            if json.loads(sidecar.read_text()) == key:
                return TensorRTRunner(engine_file.read_bytes(), device, out_channels)
        except (json.JSONDecodeError, EngineMismatchError):
            pass  # a damaged cache entry is rebuilt below
    blob = build_engine(onnx_path, profile)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for path, data in ((engine_file, blob), (sidecar, json.dumps(key, indent=2).encode())):
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return TensorRTRunner(blob, device, out_channels)


class TensorRTBackend(Backend):
    """A TensorRT engine built from the stage's ONNX (runtime/engines/tensorrt.py), cached on disk."""
    name = "tensorrt"

    def __init__(self, runner, device: torch.device, max_batch: int):
        self.runner, self.device, self.max_batch = runner, device, max_batch

    def __call__(self, x, sigma, cond):
        return self.runner(x, sigma, cond)
