"""Backend registry: every name resolves or says why not, unknown names list the registry, the auto
order is the documented one, and the backends agree with each other."""
import importlib.util

import pytest
import torch

from precipfast.choices import UnknownBackendError
from precipfast.config import EDMConfig, SamplerConfig, UNetConfig, to_dict
from precipfast.denoiser import build_denoiser
from precipfast.errors import BackendUnavailableError, PrecipfastError
from precipfast.export.bundle import write_bundle
from precipfast.runtime.engines import backends as B
from precipfast.runtime.engines.bundle import open_bundle
from precipfast.runtime.engines.parity import PARITY_TOL_REL

OPTS = B.BackendOptions(max_batch=8, tile=128, threads=1)
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNetConfig(cond_channels=2, model_channels=8, channel_mult=(1, 2), attn_levels=(1,), channels_per_head=8)
    den = build_denoiser(unet, EDMConfig())
    with torch.no_grad():
        for p in den.parameters():
            p.normal_(0.0, 0.15)  # non-zero F: EDM's zero init would make every backend agree trivially
    cfg = {"unet": to_dict(unet), "edm": to_dict(EDMConfig()), "sampler": to_dict(SamplerConfig()),
           "cond_names": ["precip_up", "dem"]}
    path = write_bundle(tmp_path_factory.mktemp("bk") / "b", {"downscaling": (den, cfg)}, name="t",
                        model_version="0", scale_factor=10, pooling="max", transform={}, parity=False)
    return open_bundle(path)


def _inputs(batch=3, hw=(37, 53)):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 1, *hw, generator=g), torch.tensor([1.3, 0.002, 80.0][:batch]),
            torch.randn(batch, 2, *hw, generator=g))


def test_every_registered_name_resolves_or_says_why(bundle):
    avail = B.available_backends("cpu")
    assert set(avail) == set(B.BACKENDS) == {"torch", "onnxruntime", "tensorrt"}
    for name, (ok, reason) in avail.items():
        assert isinstance(ok, bool) and len(reason) > 10
        if ok:
            be = B.get_backend(name, bundle, "downscaling", "cpu", options=OPTS)
            assert isinstance(be, B.Backend) and be.name == name and be.device.type == "cpu"
            assert be(*_inputs()).shape == (3, 1, 37, 53)
        else:
            with pytest.raises(BackendUnavailableError, match=reason.split("(")[0][:30]):
                B.get_backend(name, bundle, "downscaling", "cpu", options=OPTS)


def test_unknown_name_lists_registry(bundle):
    with pytest.raises(UnknownBackendError,
                       match=r"unknown backend 'tensorflow' \(--backend\); available: \['onnxruntime', 'tensorrt', 'torch'\]"):
        B.get_backend("tensorflow", bundle, "downscaling", "cpu", options=OPTS)
    with pytest.raises(ValueError):  # also a ValueError: bad input
        B.get_backend("tensorflow", bundle, "downscaling", "cpu", options=OPTS)


def test_unknown_stage_and_device(bundle):
    with pytest.raises(PrecipfastError, match=r"stage 'correction' is not in bundle .* \['downscaling'\]"):
        B.get_backend("torch", bundle, "correction", "cpu", options=OPTS)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda"):
        B.available_backends("tpu")


def test_tensorrt_unavailable_says_why(bundle):
    with pytest.raises(BackendUnavailableError, match="tensorrt runs only on CUDA devices"):
        B.get_backend("tensorrt", bundle, "downscaling", "cpu", options=OPTS)
    ok, reason = B.available_backends("cuda")["tensorrt"]
    if ok:
        pytest.skip("tensorrt is usable here")
    assert "not importable" in reason or "no CUDA device" in reason
    with pytest.raises(BackendUnavailableError, match="backend 'tensorrt' cannot run on cuda: tensorrt"):
        B.get_backend("tensorrt", bundle, "downscaling", "cuda", options=OPTS)


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_auto_order_on_cpu(bundle, monkeypatch):
    assert B.AUTO_ORDER["cpu"] == ("onnxruntime", "torch")
    assert B.resolve_auto("cpu") == "onnxruntime"
    assert B.get_backend("auto", bundle, "downscaling", "cpu", options=OPTS).name == "onnxruntime"
    down = B.BackendEntry(B.BACKENDS["onnxruntime"].make, lambda device: (False, "pretend it is missing"))
    monkeypatch.setitem(B.BACKENDS, "onnxruntime", down)
    assert B.resolve_auto("cpu") == "torch"
    # Asking for it by name never falls back silently.
    with pytest.raises(BackendUnavailableError, match=r"pretend it is missing\. Usable here: \['torch'\]"):
        B.get_backend("onnxruntime", bundle, "downscaling", "cpu", options=OPTS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_auto_without_cuda_explains_each_backend():
    with pytest.raises(BackendUnavailableError, match="no backend can run on 'cuda'.*tensorrt:.*onnxruntime:.*torch:"):
        B.resolve_auto("cuda")


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
@pytest.mark.parametrize("batch,hw", [(1, (40, 56)), (3, (37, 53))])
def test_torch_and_onnxruntime_agree(bundle, batch, hw):
    x, sigma, cond = _inputs(batch, hw)
    ref = B.get_backend("torch", bundle, "downscaling", "cpu", options=OPTS)(x, sigma, cond)
    out = B.get_backend("onnxruntime", bundle.path, "downscaling", "cpu", options=OPTS)(x, sigma, cond)  # path works too
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert ((out - ref).abs().max() / ref.abs().max()).item() < PARITY_TOL_REL
    sd = bundle.edm("downscaling").sigma_data
    c_skip = (sd ** 2 / (sigma ** 2 + sd ** 2)).view(-1, 1, 1, 1)
    assert (ref - c_skip * x).abs().max() > 0.05  # the network term contributes: agreement is not trivial


def test_options_are_validated():
    with pytest.raises(ValueError, match="max_batch >= 1"):
        B.BackendOptions(max_batch=0, tile=128)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["onnxruntime", "tensorrt"])
def test_gpu_backends_match_torch(bundle, name):
    ok, why = B.available_backends("cuda")[name]
    if not ok:
        pytest.skip(why)
    x, sigma, cond = (t.cuda() for t in _inputs(3, (37, 53)))
    ref = B.get_backend("torch", bundle, "downscaling", "cuda", options=OPTS)(x, sigma, cond)
    opts = B.BackendOptions(max_batch=8, tile=64)
    out = B.get_backend(name, bundle, "downscaling", "cuda", options=opts)(x, sigma, cond)
    torch.cuda.synchronize()
    # TensorRT runs fp16 convolutions (GroupNorm/softmax/preconditioning fp32): ~1e-3 relative is fp16's
    # 2^-11 rounding through ~20 layers; ORT-CUDA with the TensorRT EP also enables fp16.
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-2


# ---------------------------------------------------------------------------- torch precision and CUDA settings
def _network_term(bundle, x, sigma, out):
    """out - c_skip x: the part of D the network computes (c_skip x is exact in every precision)."""
    sd = bundle.edm("downscaling").sigma_data
    return out - (sd ** 2 / (sigma ** 2 + sd ** 2)).view(-1, 1, 1, 1) * x


def test_bf16_autocast_on_cpu_is_close_to_fp32(bundle):
    x, sigma, cond = _inputs(3, (37, 53))
    # Rain-like positive conditioning keeps the clamp D >= -cond (edm.Preconditioned) inactive, so the
    # error of the network's term is measured, not hidden by clamped pixels.
    cond[:, :1] = cond[:, :1].abs() + 5.0
    ref = B.get_backend("torch", bundle, "downscaling", "cpu", options=OPTS)(x, sigma, cond)
    assert (ref > -cond[:, :1]).all()
    low = B.get_backend("torch", bundle, "downscaling", "cpu",
                        options=B.BackendOptions(max_batch=8, tile=128, precision="bf16"))(x, sigma, cond)
    assert low.dtype == torch.float32 and low.shape == ref.shape  # the sampler state stays float32
    err = ((low - ref).norm() / _network_term(bundle, x, sigma, ref).norm()).item()
    # bf16 keeps 8 significant bits (unit roundoff 2^-9 = 2e-3); each conv/matmul rounds its operands
    # once and accumulates in fp32, and the ~20 layers' errors add roughly in quadrature: sqrt(20) x 2e-3
    # = 9e-3 (measured here: 2.0e-3). 2e-2 leaves a factor two over the estimate. The lower bound shows
    # autocast ran: float32 both ways would agree exactly.
    assert 1e-4 < err < 2e-2, err


def test_bf16_members_stay_finite_and_close(bundle):
    from precipfast.runtime.sampling.ensemble import Tiling, sample_ensemble
    g = torch.Generator().manual_seed(3)
    cond = torch.nn.functional.avg_pool2d(torch.rand(1, 2, 36, 44, generator=g), 5, 1)  # 32 x 40
    cfg = SamplerConfig(num_steps=4, sigma_max=10.0)
    out = {}
    for precision in ("fp32", "bf16"):
        be = B.get_backend("torch", bundle, "downscaling", "cpu",
                           options=B.BackendOptions(max_batch=4, tile=128, precision=precision))
        out[precision] = sample_ensemble(be, cond, [0, 1], "downscaling", 5, cfg, Tiling(tile=24, overlap=8))
    assert torch.isfinite(out["bf16"]).all()
    # Same noise, so bf16 moves each member only by its rounding, ~2e-3 of the network's term per
    # evaluation (test above), which the few steps carry through at the same order: under 1 % of how
    # much members differ from one another (the ensemble spread; measured 5e-4 of it).
    moved = (out["bf16"] - out["fp32"]).norm() / out["fp32"].numel() ** 0.5
    spread = (out["fp32"][0] - out["fp32"][1]).norm() / out["fp32"][0].numel() ** 0.5
    assert moved < 0.01 * spread, (moved.item(), spread.item())
    assert moved > 0  # bf16 really ran


def test_precision_choices_are_checked():
    from precipfast.options import SampleOptions
    with pytest.raises(ValueError, match=r"^--precision must be one of fp32, bf16, fp16, got 'fp64'$"):
        SampleOptions(precision="fp64")
    with pytest.raises(ValueError, match="--precision must be one of"):
        B.BackendOptions(max_batch=8, tile=128, precision="half")
    assert SampleOptions().precision == "fp32" and not SampleOptions().cuda_graphs


@pytest.mark.parametrize("settings,message", [
    ({"precision": "fp16"}, r"--precision fp16 runs on CUDA only .*use --precision bf16 or fp32 on cpu"),
    ({"cuda_graphs": True}, r"--cuda-graphs needs a CUDA device; this run is on cpu"),
    ({"compile": True}, r"--torch-compile runs on CUDA only .*this run is on cpu"),
])
def test_cuda_only_settings_are_refused_on_cpu(bundle, settings, message):
    from precipfast.runtime.engines.bundle import load_denoiser
    with pytest.raises(ValueError, match=message):
        B.TorchBackend(load_denoiser(bundle, "downscaling"), "cpu", **settings)


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_torch_only_settings_are_refused_on_other_backends(bundle):
    opts = B.BackendOptions(max_batch=8, tile=128, precision="bf16", cuda_graphs=True)
    with pytest.raises(ValueError, match=r"^--precision bf16, --cuda-graphs applies to the torch backend only; "
                                         r"this run uses 'onnxruntime' \(add --backend torch\)$"):
        B.get_backend("onnxruntime", bundle, "downscaling", "cpu", options=opts)
    with pytest.raises(ValueError, match="applies to the torch backend only"):
        B.get_backend("auto", bundle, "downscaling", "cpu", options=opts)  # auto picks onnxruntime here
