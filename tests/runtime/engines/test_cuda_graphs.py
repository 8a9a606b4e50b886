"""The denoiser replayed from CUDA graphs (runtime/engines/cuda_graphs.py) and the torch backend's CUDA path:
replays equal eager calls, new inputs give new outputs, outputs never alias each other, and the sampler
runs on the GPU without waiting for it. The CUDA tests skip without a GPU; the refusals run anywhere."""
import pytest
import torch

from precipfast.config import EDMConfig, SamplerConfig, UNetConfig
from precipfast.denoiser import build_denoiser
from precipfast.runtime.engines.cuda_graphs import GraphedDenoiser
from precipfast.runtime.engines.torch_backend import TorchBackend

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
# fp32 replay runs the kernels the eager call ran; a few ulp are allowed in case cuDNN's heuristics
# pick another algorithm for the capture than for the eager call (both fp32, TF32 off below).
FP32 = {"rtol": 1e-5, "atol": 1e-6}


UNET = UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=(1,), channels_per_head=8)


def _denoiser(seed=0):
    torch.manual_seed(seed)
    den = build_denoiser(UNET, EDMConfig(sigma_data=0.5)).eval()
    with torch.no_grad():  # EDM's zero init would make D = c_skip x, the same whatever the network ran
        for p in den.parameters():
            p.normal_(0.0, 0.1)
    return den


def _inputs(batch, hw, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, *hw, generator=g)
    sigma = torch.exp(torch.randn(batch, generator=g))
    cond = torch.rand(batch, 1, *hw, generator=g) + 1.0  # positive, like rain: the D >= -cond clamp stays idle
    return x.to(device), sigma.to(device), cond.to(device)


def test_graphs_are_refused_off_cuda():
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, got cpu"):
        GraphedDenoiser(lambda x, s, c: x, torch.device("cpu"))
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        GraphedDenoiser(lambda x, s, c: x, torch.device("cuda"), warmup=0)


@pytest.fixture()
def no_tf32(monkeypatch):
    """fp32 convolutions in fp32: cuDNN may use TF32 (10-bit mantissa) by default, which would make
    eager and replayed calls differ by ~1e-3 whenever the two pick different algorithms."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.gpu
@CUDA
def test_replay_equals_eager_for_two_shapes_and_follows_new_inputs(no_tf32):
    den = _denoiser().cuda()
    graphed = GraphedDenoiser(den, torch.device("cuda"))  # no index: the current device, as tensors say
    with torch.inference_mode():
        for k, (batch, hw) in enumerate([(4, (32, 48)), (3, (40, 40))]):
            first_in = _inputs(batch, hw, 10 * k, "cuda")
            first = graphed(*first_in)
            torch.testing.assert_close(first, den(*first_in), **FP32)
            second_in = _inputs(batch, hw, 10 * k + 1, "cuda")
            second = graphed(*second_in)  # same shape: a replay of the graph captured above
            torch.testing.assert_close(second, den(*second_in), **FP32)
            assert (second - first).abs().max() > 0.1  # new inputs, new outputs
            # The first output is a copy: the second replay did not overwrite it.
            torch.testing.assert_close(first, den(*first_in), **FP32)
            assert first.data_ptr() != second.data_ptr()
        assert len(graphed.graphs) == 2  # one capture per shape, none for the replays


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_backend_with_graphs_equals_backend_without(precision, no_tf32):
    den = _denoiser(1)
    eager = TorchBackend(den, "cuda", precision=precision)
    graphed = TorchBackend(den, "cuda", precision=precision, cuda_graphs=True)
    for seed in (0, 1):
        args = _inputs(5, (37, 53), seed, "cuda")
        out, ref = graphed(*args), eager(*args)
        assert out.dtype == torch.float32  # the sampler state stays float32 under autocast
        if precision == "fp32":
            torch.testing.assert_close(out, ref, **FP32)
        else:
            # Same kernels in the same precision, so normally identical; should cuDNN pick another
            # algorithm for the capture, the two differ by about what either differs from fp32 (2e-3 of
            # the network's term on the CPU, tests/runtime/test_backends.py): 1e-2 of the whole leaves room.
            assert ((out - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.gpu
@CUDA
def test_compiled_and_graphed_backend_matches_eager(no_tf32):
    den = _denoiser(2)
    eager = TorchBackend(den, "cuda")
    fast = TorchBackend(den, "cuda", compile=True, cuda_graphs=True)
    args = _inputs(4, (32, 32), 3, "cuda")
    out, ref = fast(*args), eager(*args)
    # Inductor fuses the element-wise work and reorders fp32 sums (GroupNorm's reductions): a few ulp
    # per layer through ~20 layers, far under 1e-4 of the whole (METHOD.md: fp32 lands far under 1e-3).
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4
    assert len(fast._fn.graphs) == 1  # the compiled function was captured, once


@pytest.mark.gpu
@CUDA
def test_sampler_loop_never_waits_for_the_gpu():
    """After a first run (cuDNN algorithm choice, Triton compilation, graph capture), a whole sample of a
    tiled domain, churn included, issues no synchronising CUDA call: torch's sync debug mode raises on
    any .item(), .cpu(), bool(tensor) or blocking copy."""
    from precipfast.kernels.heun_residual import get_step_impl
    from precipfast.runtime.sampling.ensemble import Tiling, sample_ensemble
    backend = TorchBackend(_denoiser(3), "cuda", precision="bf16", cuda_graphs=True)
    cond = torch.rand(1, 1, 40, 56, device="cuda") + 1.0
    cfg = SamplerConfig(num_steps=4, sigma_max=10.0, s_churn=2.0)
    step = get_step_impl("cuda")
    args = (backend, cond, [0, 1, 2], "downscaling", 7, cfg, Tiling(tile=24, overlap=8, max_batch=4))
    first = sample_ensemble(*args, base=cond, step_impl=step)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        again = sample_ensemble(*args, base=cond, step_impl=step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(again, first, rtol=0, atol=0)  # noise is a pure function: same members


@pytest.fixture(scope="module")
def torch_bundle(tmp_path_factory):
    """Both stages, tiny random U-Nets, torch weights only (no ONNX: the GPU machine runs torch alone)."""
    from precipfast.config import TransformConfig, to_dict
    from precipfast.export.bundle import write_bundle
    stages = {}
    for k, stage in enumerate(("correction", "downscaling")):
        cfg = {"unet": to_dict(UNET), "edm": to_dict(EDMConfig(sigma_data=0.5, denoised_max=1.0)),
               "sampler": to_dict(SamplerConfig(num_steps=4, sigma_max=10.0))}
        stages[stage] = (_denoiser(10 + k), cfg)
    return write_bundle(tmp_path_factory.mktemp("bundle") / "tiny", stages, name="tiny-torch", model_version="0",
                        scale_factor=10, pooling="max", transform=to_dict(TransformConfig()), onnx=False, parity=False)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
def test_pipeline_members_with_the_fast_settings(torch_bundle, device):
    """The public route end to end: both stages; bf16 on the CPU, bf16 + CUDA graphs on the GPU (compile
    + graphs are checked on the backend above; compiling both stages here would double the test's
    time). Members stay finite and within their rounding of the float32 eager members, far closer than
    members are to one another."""
    import numpy as np

    from precipfast.runtime.sampling.pipeline import Pipeline
    lr = np.abs(np.random.default_rng(0).normal(2.0, 2.0, (12, 14))).astype(np.float32)
    common = dict(backend="torch", device=device, tile=32, overlap=8, max_batch=6)
    fast_settings = {"precision": "bf16"} if device == "cpu" else {"precision": "bf16", "cuda_graphs": True}
    ref = Pipeline.from_bundle(torch_bundle, **common).sample(lr, members=3, steps=4, seed=1)["precip"]
    fast = Pipeline.from_bundle(torch_bundle, **fast_settings, **common).sample(lr, members=3, steps=4,
                                                                                seed=1)["precip"]
    assert np.isfinite(fast).all() and fast.shape == ref.shape == (3, 120, 140)
    moved = np.sqrt(np.mean((fast - ref) ** 2))
    spread = np.sqrt(np.mean((ref[0] - ref[1]) ** 2))
    # bf16 on the CPU moved the members by 3e-4 of the spread (the cpu case here); 2e-2
    # allows for CUDA's other roundings (and TF32 in the float32 reference's convolutions).
    assert 0 < moved < 0.02 * spread, (moved, spread)
