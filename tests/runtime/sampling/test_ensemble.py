"""Batched ensemble sampler: equals the plain EDM reference, independent of batch size and seedable;
tiled runs agree with untiled ones and show no seams."""
import pytest
import torch

from precipfast import edm, noise
from precipfast.config import EDMConfig, SamplerConfig, UNetConfig
from precipfast.denoiser import build_denoiser
from precipfast.runtime.sampling.ensemble import Tiling, denoise_domain, evaluations, member_runs, sample_ensemble
from precipfast.runtime.sampling.tiling import plan_tiles

CFG = SamplerConfig(num_steps=4, sigma_max=10.0)


def _net(seed=0, attn=()):
    torch.manual_seed(seed)
    den = build_denoiser(UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=attn, channels_per_head=8),
                         EDMConfig(sigma_data=0.4)).eval()
    with torch.no_grad():  # zero-initialised output layers would make the net the identity
        for p in den.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return torch.no_grad()(den.forward)


def _cond(h=24, w=28, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(1, 1, h + 4, w + 4, generator=g), 5, 1)


def test_matches_edm_reference_sampler():
    den, cond = _net(), _cond()
    members = [0, 3]
    got = sample_ensemble(den, cond, members, "downscaling", 7, CFG, Tiling(tile=64, overlap=8))
    for k, m in enumerate(members):
        eps = lambda i: noise.normal_members(7, [m], "downscaling", i, 0, 24, 0, 28, 28)  # noqa: E731
        ref = edm.sample(den, cond, eps, edm.karras_sigmas(4, CFG.sigma_min, CFG.sigma_max, CFG.rho, torch.float32))
        # float32 both ways; only the batch composition differs (1 vs 2 images per call)
        torch.testing.assert_close(got[k:k + 1], ref, rtol=1e-5, atol=1e-5)


def test_noise_clip_truncates_the_starting_noise_as_the_reference_does():
    """SamplerConfig.noise_clip: the runtime and the EDM reference clip the same starting draws; with a
    denoiser linear in x (D = x / 2) the sample is a fixed multiple of the starting noise, so the clipped
    run is the unclipped one with its draws beyond +-1.5 sigma held at +-1.5."""
    from dataclasses import replace
    den, cond = _net(), _cond()
    clipped = replace(CFG, noise_clip=1.5)
    got = sample_ensemble(den, cond, [1], "downscaling", 9, clipped, Tiling(tile=64, overlap=8))
    eps = lambda i: noise.normal_members(9, [1], "downscaling", i, 0, 24, 0, 28, 28)  # noqa: E731
    sig = edm.karras_sigmas(4, CFG.sigma_min, CFG.sigma_max, CFG.rho, torch.float32)
    torch.testing.assert_close(got, edm.sample(den, cond, eps, sig, noise_clip=1.5), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, edm.sample(den, cond, eps, sig), rtol=1e-3, atol=1e-3)  # 13 % of draws clipped
    half = lambda x, s, c: x / 2  # noqa: E731
    z = eps(0)
    free, cut = (sample_ensemble(half, cond, [1], "downscaling", 9, c, Tiling(tile=64, overlap=8)) for c in (CFG, clipped))
    k = free / z  # D = x/2 makes every step linear: the sample is k * z with one k for all pixels
    assert float(k.std() / k.abs().mean()) < 1e-4
    torch.testing.assert_close(cut, k.mean() * z.clamp(-1.5, 1.5), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="noise_clip must be >= 1 standard deviation"):
        SamplerConfig(noise_clip=0.5)


def test_batch_size_does_not_change_members():
    den, cond = _net(), _cond()
    a = sample_ensemble(den, cond, [0, 1, 2, 3], "correction", 3, CFG, Tiling(tile=64, overlap=8, max_batch=1))
    b = sample_ensemble(den, cond, [0, 1, 2, 3], "correction", 3, CFG, Tiling(tile=64, overlap=8, max_batch=4))
    c = sample_ensemble(den, cond, [2], "correction", 3, CFG, Tiling(tile=64, overlap=8))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[2:3], c, rtol=1e-5, atol=1e-5)


def test_seed_and_member_change_the_sample():
    den, cond = _net(), _cond()
    a = sample_ensemble(den, cond, [0, 1], "downscaling", 1, CFG, Tiling(tile=64, overlap=8))
    b = sample_ensemble(den, cond, [0, 1], "downscaling", 2, CFG, Tiling(tile=64, overlap=8))
    assert (a - b).abs().mean() > 0.1
    assert (a[0] - a[1]).abs().mean() > 0.1


def test_base_is_added_at_the_end():
    den, cond = _net(), _cond()
    r = sample_ensemble(den, cond, [0], "downscaling", 1, CFG, Tiling(tile=64, overlap=8))
    full = sample_ensemble(den, cond, [0], "downscaling", 1, CFG, Tiling(tile=64, overlap=8), base=cond)
    torch.testing.assert_close(full, r + cond)


def test_tiled_matches_untiled_within_member_spread():
    """Tiles see less context than the whole domain, so tiled and untiled members are not bit-equal;
    with blending they must be far closer to each other than two different members are."""
    den, cond = _net(), _cond(60, 72)
    members = [0, 1]
    whole = sample_ensemble(den, cond, members, "downscaling", 5, CFG, Tiling(tile=128, overlap=8))
    tiled = sample_ensemble(den, cond, members, "downscaling", 5, CFG, Tiling(tile=32, overlap=12, max_batch=3))
    assert len(plan_tiles(60, 72, 32, 12)) > 4
    diff = (whole - tiled).abs().mean()
    spread = (whole[0] - whole[1]).abs().mean()
    assert diff < 0.1 * spread, (float(diff), float(spread))


def test_denoise_domain_blends_exactly_for_a_pointwise_denoiser():
    """A denoiser that acts pixel by pixel gives the same field tiled or not (partition of unity)."""
    den = lambda x, s, c: 0.5 * x + c  # noqa: E731
    x, cond = torch.randn(3, 1, 50, 61), torch.randn(1, 1, 50, 61)
    tiles = plan_tiles(50, 61, 16, 6)
    got = denoise_domain(den, x, 1.0, cond, Tiling(tile=16, overlap=6, max_batch=5), tiles)
    torch.testing.assert_close(got, 0.5 * x + cond)


def test_evaluation_count():
    assert evaluations(SamplerConfig(num_steps=18)) == 35  # EDM: 18 Heun steps, 35 evaluations
    assert evaluations(SamplerConfig(num_steps=18, solver="euler")) == 18


def test_tiling_validation():
    with pytest.raises(ValueError, match="overlap < tile"):
        Tiling(tile=16, overlap=16)


def test_member_runs_group_consecutive_members_of_a_tile():
    part = [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 2)]
    assert member_runs(part) == [[0, 0, 1, 2], [2, 1, 0, 3], [5, 2, 0, 1], [6, 2, 2, 1]]


@pytest.mark.parametrize("max_batch", [1, 2, 4, 7, 100])
def test_any_micro_batch_gives_the_same_field(max_batch):
    """Runs of members are copied out of each call whatever the batch cuts: the same bits for every batch."""
    den = lambda x, s, c: torch.tanh(x) * s.view(-1, 1, 1, 1) + c  # noqa: E731  (pixel by pixel)
    x, cond = torch.randn(3, 1, 50, 61), torch.randn(3, 1, 50, 61)
    tiles = plan_tiles(50, 61, 24, 6)
    want = denoise_domain(den, x, 0.7, cond, Tiling(tile=24, overlap=6, max_batch=3), tiles)
    got = denoise_domain(den, x, 0.7, cond, Tiling(tile=24, overlap=6, max_batch=max_batch), tiles)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got, torch.tanh(x) * 0.7 + cond)  # and the blend is a partition of unity


HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__array__")


@pytest.mark.parametrize("step", ["inplace", "reference"])
def test_the_step_loop_never_reads_a_tensor_on_the_host(step, monkeypatch):
    """On a GPU each of these reads waits for the device. From the first denoiser evaluation to the
    returned field (churn noise, tiling, blending, steps, the fused finish) none may happen; checked on
    the CPU by making each of them raise (tests/runtime/test_cuda_graphs.py checks the CUDA path with
    torch's sync debug mode)."""
    from precipfast.config import TransformConfig
    from precipfast.kernels.heun_residual import get_step_impl
    armed = []

    def refuse(name, original):
        def read(self, *a, **k):
            if armed:
                raise AssertionError(f"Tensor.{name} inside the step loop")
            return original(self, *a, **k)
        return read
    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse(name, getattr(torch.Tensor, name)))
    net = _net(attn=(1,))

    def backend(x, sigma, cond):
        armed.append(True)  # the schedule and the initial noise (before the loop) may use the host
        return net(x, sigma, cond)
    cond = _cond(40, 52)
    cfg = SamplerConfig(num_steps=4, sigma_max=10.0, s_churn=2.0)  # churn: noise drawn inside the loop
    out = sample_ensemble(backend, cond, [0, 2], "downscaling", 3, cfg, Tiling(tile=24, overlap=8, max_batch=3),
                          base=cond, step_impl=get_step_impl("cpu", step), transform=TransformConfig())
    assert armed and out.shape == (2, 1, 40, 52)
    armed.clear()
    with pytest.raises(AssertionError, match="inside the step loop"):  # the trap works
        armed.append(True)
        bool(out.sum() > 0)
