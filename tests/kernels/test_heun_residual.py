"""The step implementations of kernels/heun_residual.py: the reference against `precipfast.edm` in
float64, the in-place CPU path and the Triton kernels against the reference, the registry, and the
whole sampler with each implementation.

Why most tolerances are zero: the in-place path and the kernels repeat the reference's float32
operations in the same order (a - b, / t, * h, + x), with IEEE division (`tl.div_rn`) and fp fusion
off, so each element rounds exactly as torch rounds it. The one exception is expm1 in the mm/h finish
(float64 exp - 1 in the interpreter, libdevice on CUDA, SLEEF in torch), allowed 2 float32 ulp.
"""
import math

import pytest
import torch

from precipfast import edm, noise
from precipfast.config import SamplerConfig, TransformConfig
from precipfast.errors import KernelUnavailableError
from precipfast.kernels import heun_residual as hr
from precipfast.kernels.heun_residual import (
    STEP_IMPLS,
    InplaceStep,
    NoiseWindow,
    ReferenceStep,
    TritonStep,
    euler_residual,
    get_step_impl,
    heun_residual,
)
from precipfast.noise import Origin
from precipfast.runtime.sampling.ensemble import Tiling, sample_ensemble

EXACT = {"rtol": 0.0, "atol": 0.0}
EXPM1 = {"rtol": 2 ** -22, "atol": 0.0}  # 2 float32 ulp: expm1 from another math library (see above)
TR = TransformConfig(scale_mm_h=1.0, norm=0.5)
T_HAT, T_NEXT = 1.7, 0.93
# Batch 1 at 37 x 53; a batch whose H*W (19 x 67 = 1273) spills one pixel-block into a ragged second.
SHAPES = [(1, 1, 37, 53), (3, 1, 19, 67)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]  # denoiser outputs; the state is float32


def _fields(shape, dtype=torch.float32, seed=0):
    """x_hat, D(x_hat), x_next, D(x_next), base: fresh random, never zero, denoised in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    x_hat, x_next, base = (torch.randn(shape, generator=g) * s for s in (T_HAT, T_NEXT, 0.5))
    den_hat = (x_hat * 0.3 + 0.2 * torch.randn(shape, generator=g)).to(dtype)
    den_next = (x_next * 0.3 + 0.2 * torch.randn(shape, generator=g)).to(dtype)
    return x_hat, den_hat, x_next, den_next, base


def _nan(like, device):
    return torch.full(like.shape, float("nan"), device=device)


# ---------------------------------------------------------------------------------------------------
# Reference against precipfast.edm, float64

def _den64(x, sigma, cond):
    """A smooth float64 denoiser with EDM-like scalings: D = c_skip x + c_out tanh(x + cond)."""
    s = sigma.view(-1, 1, 1, 1)
    return x / (1 + s ** 2) + s / (1 + s ** 2).sqrt() * torch.tanh(x + cond)


def test_reference_step_is_edm_heun_step_in_float64():
    x_hat, _, _, _, base = (f.double() for f in _fields((2, 1, 5, 7)))
    cond = base
    sig = lambda t: torch.full((2,), t, dtype=torch.float64)  # noqa: E731
    step = ReferenceStep()
    d_hat = _den64(x_hat, sig(T_HAT), cond)
    x_next = step.euler(x_hat, d_hat, T_HAT, T_NEXT)
    x = step.heun(x_hat, d_hat, x_next, _den64(x_next, sig(T_NEXT), cond), T_HAT, T_NEXT)
    torch.testing.assert_close(x, edm.heun_step(_den64, x_hat, T_HAT, T_NEXT, cond), **EXACT)
    last = step.finish(x_hat, d_hat, T_HAT, base)
    torch.testing.assert_close(last, base + edm.heun_step(_den64, x_hat, T_HAT, 0.0, cond), **EXACT)
    # With t_next = 0 the Euler step lands on the denoised estimate (Algorithm 2, line 8).
    torch.testing.assert_close(last - base, d_hat, rtol=1e-14, atol=1e-14)
    mm_h = step.finish(x_hat, d_hat, T_HAT, base, TR)
    torch.testing.assert_close(mm_h, (torch.expm1(last * TR.norm) * TR.scale_mm_h).clamp_min(0), **EXACT)


def test_reference_churn_is_edm_churn_with_runtime_noise():
    x = torch.randn(2, 1, 6, 5, dtype=torch.float64)
    win = NoiseWindow(9, (1, 4), "correction", Origin(2, 3, 40))
    gamma = edm.churn_gamma(2.0, 10, 4.0, 0.0, math.inf)
    eps = noise.normal_members(9, [1, 4], "correction", 6, 2, 8, 3, 8, 40).double()
    want, t_hat = edm.churn(x, 2.0, gamma, 1.003, eps)
    got, got_t = ReferenceStep().churn(x, 2.0, gamma, 1.003, win, 6)
    assert got_t == t_hat == hr.churn_levels(2.0, gamma, 1.003)[0]
    torch.testing.assert_close(got, want, **EXACT)
    assert ReferenceStep().churn(x, 2.0, 0.0, 1.0, win, 6) == (x, 2.0)  # gamma = 0: no noise, t_hat = t


def test_reference_sampler_is_edm_sample_in_float64():
    """The sampler loop with the reference step reproduces `edm.sample` in float64, churn included."""
    cond = torch.rand(1, 1, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cfg = SamplerConfig(num_steps=5, sigma_max=10.0, s_churn=3.0)
    got = sample_ensemble(_den64, cond, [0, 2], "downscaling", 4, cfg, Tiling(tile=16, overlap=4),
                          step_impl=ReferenceStep())
    for k, m in enumerate([0, 2]):
        eps = lambda i: noise.normal_members(4, [m], "downscaling", i, 0, 9, 0, 11, 11).double()  # noqa: E731
        want = edm.sample(_den64, cond, eps, edm.karras_sigmas(5, cfg.sigma_min, cfg.sigma_max, cfg.rho),
                          s_churn=cfg.s_churn)
        torch.testing.assert_close(got[k:k + 1], want, **EXACT)


# ---------------------------------------------------------------------------------------------------
# In-place CPU path and Triton kernels against the reference

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_euler_kernel_matches_reference(shape, dtype, device):
    x_hat, den, *_ = _fields(shape, dtype)
    got = euler_residual(x_hat.to(device), den.to(device), T_HAT, T_NEXT, out=_nan(x_hat, device)).cpu()
    torch.testing.assert_close(got, hr.euler_residual_reference(x_hat, den, T_HAT, T_NEXT), **EXACT)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_heun_kernel_matches_reference(shape, dtype, device):
    x_hat, den_hat, x_next, den_next, _ = _fields(shape, dtype, seed=1)
    want = hr.heun_residual_reference(x_hat, den_hat, x_next, den_next, T_HAT, T_NEXT)
    # The kernel writes into x_hat: poisoning it would destroy its input, but an element it skipped
    # would keep x_hat's value, which differs from the corrected one everywhere.
    assert (want != x_hat).all()
    got = heun_residual(x_hat.clone().to(device), den_hat.to(device), x_next.to(device), den_next.to(device),
                        T_HAT, T_NEXT).cpu()
    torch.testing.assert_close(got, want, **EXACT)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_member_base", [False, True])
@pytest.mark.parametrize("to_mm_h", [False, True])
def test_finish_kernel_matches_reference(shape, per_member_base, to_mm_h, device):
    x_hat, den, _, _, base = _fields(shape, torch.bfloat16, seed=2)
    base = base if per_member_base else base[:1]
    tr = TR if to_mm_h else None
    want = hr.finish_reference(x_hat, den, T_HAT, base, tr)
    got = euler_residual(x_hat.to(device), den.to(device), T_HAT, 0.0, base.to(device), tr,
                         out=_nan(x_hat, device)).cpu()
    torch.testing.assert_close(got, want, **(EXPM1 if to_mm_h else EXACT))
    if to_mm_h:
        assert (got == 0).any() and (got > 0).any() and (got >= 0).all()  # the clip was exercised


def test_finish_keeps_nan_so_divergence_is_caught(device):
    x_hat, den, _, _, base = _fields((1, 1, 4, 5))
    x_hat[0, 0, 1, 2] = float("nan")
    got = euler_residual(x_hat.to(device), den.to(device), T_HAT, 0.0, base.to(device), TR).cpu()
    assert got.isnan().sum() == 1  # not clipped to 0 mm/h


@pytest.mark.parametrize("impl", ["inplace", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_objects_match_reference(impl, dtype, device):
    """Each method of InplaceStep / TritonStep equals ReferenceStep's, inputs copied since they are
    overwritten."""
    dev = "cpu" if impl == "inplace" else device
    step, ref = get_step_impl(dev, impl), ReferenceStep()
    x_hat, den_hat, x_next, den_next, base = _fields((2, 1, 13, 29), dtype, seed=3)
    win = NoiseWindow(5, (3, 1), "downscaling", Origin(10, 21, 77))
    c = lambda t: t.clone().to(dev)  # noqa: E731
    torch.testing.assert_close(step.init((2, 1, 13, 29), 80.0, win, device=dev).cpu(),
                               ref.init((2, 1, 13, 29), 80.0, win), **EXACT)
    got, t_hat = step.churn(c(x_hat), 1.2, 0.3, 1.007, win, 4)
    want, want_t = ref.churn(x_hat, 1.2, 0.3, 1.007, win, 4)
    assert t_hat == want_t
    torch.testing.assert_close(got.cpu(), want, **EXACT)
    out = torch.full((2, 1, 13, 29), float("nan"), device=dev)
    torch.testing.assert_close(step.euler(c(x_hat), c(den_hat), T_HAT, T_NEXT, out=out).cpu(),
                               ref.euler(x_hat, den_hat, T_HAT, T_NEXT), **EXACT)
    torch.testing.assert_close(step.heun(c(x_hat), c(den_hat), c(x_next), c(den_next), T_HAT, T_NEXT).cpu(),
                               ref.heun(x_hat, den_hat, x_next, den_next, T_HAT, T_NEXT), **EXACT)
    torch.testing.assert_close(step.finish(c(x_hat), c(den_hat), T_HAT, c(base), TR).cpu(),
                               ref.finish(x_hat, den_hat, T_HAT, base, TR), **EXPM1)


def test_launchers_refuse_bad_arguments(device):
    x = torch.randn(2, 1, 4, 5, device=device)
    with pytest.raises(ValueError, match="x_hat must be a contiguous"):
        euler_residual(x.double(), x, T_HAT, T_NEXT)
    with pytest.raises(ValueError, match="denoised is"):
        euler_residual(x, x[:1].contiguous(), T_HAT, T_NEXT)
    with pytest.raises(ValueError, match="base must be"):
        euler_residual(x, x, T_HAT, 0.0, base=torch.zeros(2, 1, 4, 6, device=device))
    with pytest.raises(ValueError, match="t_next > 0"):
        heun_residual(x, x, x, x, T_HAT, 0.0)


# ---------------------------------------------------------------------------------------------------
# Registry

def test_registry_every_name_resolves_and_unknown_names_raise(monkeypatch, device):
    monkeypatch.delenv(hr.STEP_ENV, raising=False)
    for name, cls in STEP_IMPLS.items():
        assert type(get_step_impl(device, name)) is cls and cls.name == name
    with pytest.raises(ValueError, match=r"unknown step implementation 'fused'.*available: \['inplace'"):
        get_step_impl("cpu", "fused")


def test_registry_picks_by_device_and_environment(monkeypatch):
    monkeypatch.delenv(hr.STEP_ENV, raising=False)
    assert type(get_step_impl("cpu")) is InplaceStep
    monkeypatch.setattr(hr, "unavailable_reason", lambda dev: None)  # as if Triton ran on this CUDA device
    assert type(get_step_impl("cuda")) is TritonStep
    monkeypatch.setenv(hr.STEP_ENV, "reference")
    assert type(get_step_impl("cuda")) is ReferenceStep  # the variable forces the reference
    assert type(get_step_impl("cuda", "inplace")) is InplaceStep  # an explicit name wins
    monkeypatch.setenv(hr.STEP_ENV, "nope")
    with pytest.raises(ValueError, match=r"\$PRECIPFAST_STEP"):
        get_step_impl("cpu")


def test_registry_says_why_triton_cannot_run(monkeypatch):
    monkeypatch.delenv(hr.STEP_ENV, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    # Without Triton installed the reason is that instead; either way the message names the fallback.
    with pytest.raises(KernelUnavailableError, match="'triton' cannot run: .*(CUDA tensors|not installed).*"
                                                     "default on this device is 'inplace'"):
        get_step_impl("cpu", "triton")


# ---------------------------------------------------------------------------------------------------
# The whole sampler with each implementation, tiny random U-Net

def _tiny_net(device="cpu"):
    from precipfast.config import EDMConfig, UNetConfig
    from precipfast.train.checkpoint import build_denoiser
    torch.manual_seed(0)
    den = build_denoiser(UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=(), channels_per_head=8),
                         EDMConfig(sigma_data=0.4)).eval()
    with torch.no_grad():  # EDM's zero-initialised output layer would make D = c_skip x
        for p in den.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return torch.no_grad()(den.to(device).forward)


@pytest.mark.parametrize("cfg", [SamplerConfig(num_steps=4, sigma_max=10.0),
                                 SamplerConfig(num_steps=4, sigma_max=10.0, s_churn=2.0),
                                 SamplerConfig(num_steps=3, sigma_max=10.0, solver="euler")],
                         ids=["heun", "heun-churn", "euler"])
def test_sampler_with_each_step_equals_sampler_with_reference(cfg, device, monkeypatch):
    # On a GPU, fp32 convolutions in fp32: cuDNN's default TF32 (10-bit mantissa) would put ~1e-3 between
    # the GPU and CPU denoisers, over the 1e-4 allowed below.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    den = _tiny_net()
    g = torch.Generator().manual_seed(1)
    cond = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 25, 31, generator=g), 5, 1)  # 21 x 27, tiled
    args = (den, cond, [0, 3], "downscaling", 7, cfg, Tiling(tile=16, overlap=4))
    kw = {"base": cond, "origin": Origin(40, 13, 900)}
    ref = sample_ensemble(*args, step_impl=ReferenceStep(), **kw)
    ref_mm_h = sample_ensemble(*args, step_impl=ReferenceStep(), transform=TR, **kw)
    for impl in ("inplace", "triton"):
        dev = "cpu" if impl == "inplace" or device.type == "cpu" else device
        a = (den if dev == "cpu" else _tiny_net(dev), cond.to(dev)) + args[2:]  # the same weights on dev
        kw_dev = {"base": cond.to(dev), "origin": kw["origin"]}
        got = sample_ensemble(*a, step_impl=get_step_impl(dev, impl), **kw_dev).cpu()
        # Exact on the CPU: same denoiser calls, same float32 roundings in the step. (On a GPU the
        # denoiser itself runs in other kernels, so only the step is compared exactly, above.)
        torch.testing.assert_close(got, ref, **(EXACT if dev == "cpu" else {"rtol": 1e-4, "atol": 1e-4}))
        got = sample_ensemble(*a, step_impl=get_step_impl(dev, impl), transform=TR, **kw_dev).cpu()
        torch.testing.assert_close(got, ref_mm_h, **(EXPM1 if dev == "cpu" else {"rtol": 1e-4, "atol": 1e-4}))


def test_sampler_takes_its_step_from_the_registry(monkeypatch):
    """With no step_impl, the sampler asks `get_step_impl(cond.device)`: $PRECIPFAST_STEP reaches it."""
    cond = torch.rand(1, 1, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    args = (_den64, cond, [1], "correction", 2, SamplerConfig(num_steps=3, sigma_max=5.0), Tiling(tile=8, overlap=2))
    monkeypatch.setenv(hr.STEP_ENV, "no-such-step")
    with pytest.raises(ValueError, match=r"'no-such-step' \(\$PRECIPFAST_STEP\)"):
        sample_ensemble(*args)
    monkeypatch.setenv(hr.STEP_ENV, "reference")
    forced = sample_ensemble(*args)
    monkeypatch.delenv(hr.STEP_ENV)
    torch.testing.assert_close(sample_ensemble(*args), forced, **EXACT)  # the default (in place) agrees
