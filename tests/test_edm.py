"""EDM math in closed form (Karras et al. 2022): preconditioning, schedule, loss weight, samplers."""
import math

import pytest
import torch

from precipfast import edm

SIGMAS = torch.logspace(-3, 2, 50, dtype=torch.float64)


@pytest.mark.parametrize("sigma_data", [0.1, 0.5, 1.7])
def test_preconditioning_closed_forms(sigma_data):
    c_skip, c_out, c_in, c_noise = edm.preconditioning(SIGMAS, sigma_data)
    # Unit variance of the network input: c_in^2 (sigma^2 + sigma_data^2) = 1.
    torch.testing.assert_close(c_in ** 2 * (SIGMAS ** 2 + sigma_data ** 2), torch.ones_like(SIGMAS))
    # Unit variance of the training target (Eq. 123): c_out^2 = ... and c_skip + ... identities.
    torch.testing.assert_close(c_skip, sigma_data ** 2 / (SIGMAS ** 2 + sigma_data ** 2))
    torch.testing.assert_close(c_out ** 2, (SIGMAS * sigma_data) ** 2 / (SIGMAS ** 2 + sigma_data ** 2))
    torch.testing.assert_close(c_noise, SIGMAS.log() / 4)
    # Limits: pure skip at sigma -> 0, pure network at sigma -> inf.
    assert c_skip[0] > 0.99 and c_skip[-1] < 1e-3


def test_loss_weight_makes_effective_weight_one():
    # lambda(sigma) * c_out(sigma)^2 = 1 (Eq. 144): every noise level contributes equally at init.
    for sd in (0.3, 0.5):
        _, c_out, _, _ = edm.preconditioning(SIGMAS, sd)
        torch.testing.assert_close(edm.loss_weight(SIGMAS, sd) * c_out ** 2, torch.ones_like(SIGMAS))


def test_schedule_endpoints_and_monotone():
    t = edm.karras_sigmas(18, 0.002, 80.0, 7.0)
    assert t.shape == (19,)
    assert t[0].item() == pytest.approx(80.0) and t[-2].item() == pytest.approx(0.002) and t[-1] == 0
    assert bool((t[:-1] > t[1:]).all())
    # rho = 1 gives a linear schedule.
    lin = edm.karras_sigmas(5, 1.0, 5.0, 1.0)
    torch.testing.assert_close(lin[:-1], torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        edm.karras_sigmas(-3)


def test_heun_exact_on_linear_ode():
    """With D(x; sigma) = a x the probability-flow ODE dx/dsigma = (1 - a) x / sigma has the solution
    x(t) = x0 (t / t0)^(1-a). Heun integrates it to 2nd order: error shrinks ~4x when steps double."""
    a = 0.3
    den = lambda x, s, c: a * x  # noqa: E731
    x0 = torch.tensor([[1.5]], dtype=torch.float64)
    errs = []
    for n in (8, 16, 32):
        t = edm.karras_sigmas(n, 0.5, 10.0, 7.0)[:-1]  # stop at sigma_min (t_N = 0 is singular here)
        x = x0.clone()
        for tc, tn in zip(t[:-1], t[1:]):
            x = edm.heun_step(den, x, float(tc), float(tn), None)
        exact = x0 * (t[-1] / t[0]) ** (1 - a)
        errs.append(float((x - exact).abs()))
    assert errs[0] < 1e-2
    assert errs[0] / errs[1] > 3.5 and errs[1] / errs[2] > 3.5  # second order


def test_heun_exact_when_slope_is_linear_in_sigma():
    """D(x; sigma) = x - c sigma^2 gives dx/dsigma = c sigma: the trapezoid rule (Heun) integrates it
    exactly in ONE step, x(t1) = x0 + c (t1^2 - t0^2) / 2, where Euler is off by -c (t1 - t0)^2 / 2."""
    c = 0.8
    den = lambda x, s, cond: x - c * s.view(-1, 1) ** 2  # noqa: E731
    x0 = torch.tensor([[0.25], [-1.0]], dtype=torch.float64)
    t0, t1 = 3.0, 0.5
    exact = x0 + c * (t1 ** 2 - t0 ** 2) / 2
    torch.testing.assert_close(edm.heun_step(den, x0, t0, t1, None), exact, rtol=1e-14, atol=1e-14)
    euler = edm.euler_update(x0, den(x0, torch.full((2,), t0, dtype=torch.float64), None), t0, t1)
    torch.testing.assert_close(euler - exact, torch.full_like(x0, -c * (t1 - t0) ** 2 / 2))


def test_sampler_recovers_point_mass():
    """Data = a point mass at mu: the ideal denoiser is mu for all sigma, and sampling lands on mu."""
    mu = torch.full((2, 1, 3, 3), 0.7, dtype=torch.float64)
    den = lambda x, s, c: mu  # noqa: E731
    g = torch.Generator().manual_seed(0)
    noise = lambda i: torch.randn(mu.shape, generator=g, dtype=torch.float64)  # noqa: E731
    for solver in ("heun", "euler"):
        out = edm.sample(den, None, noise, edm.karras_sigmas(10), solver=solver)
        torch.testing.assert_close(out, mu)
    out = edm.sample(den, None, noise, edm.karras_sigmas(10), s_churn=10.0)
    torch.testing.assert_close(out, mu)


def test_churn_gamma_and_noise_level():
    assert edm.churn_gamma(1.0, 10, 0.0, 0, math.inf) == 0.0
    # gamma = min(S_churn / N, sqrt(2) - 1) (Karras et al. 2022, Algorithm 2): 1/10 is below the cap,
    # 5/10 = 0.5 is above it, so the cap 0.41421356... binds.
    assert edm.churn_gamma(1.0, 10, 1.0, 0, math.inf) == pytest.approx(0.1)
    assert edm.churn_gamma(1.0, 10, 5.0, 0, math.inf) == pytest.approx(0.41421356237309503)
    assert edm.churn_gamma(1.0, 10, 1.0, 2.0, 3.0) == 0.0  # outside [s_min, s_max]
    x = torch.zeros(20000, dtype=torch.float64)
    eps = torch.randn(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_hat, t_hat = edm.churn(x, 2.0, 0.25, 1.0, eps)
    assert t_hat == pytest.approx(2.5)
    # Added noise std is sqrt(t_hat^2 - t^2) = 1.5, so x_hat has noise level t_hat given x at level t.
    assert float(x_hat.std()) == pytest.approx(1.5, rel=0.02)


def test_preconditioned_wraps_network():
    class Ident(torch.nn.Module):
        def forward(self, x, c_noise, cond):
            return torch.zeros_like(x)
    d = edm.Preconditioned(Ident(), 0.5)
    x = torch.randn(3, 1, 4, 4)
    s = torch.tensor([0.1, 1.0, 10.0])
    # F = 0 leaves D = c_skip x.
    c_skip = 0.25 / (s ** 2 + 0.25)
    torch.testing.assert_close(d(x, s, None), c_skip.view(-1, 1, 1, 1) * x)


class _Affine(torch.nn.Module):
    """F(x; c_noise, cond) = a * x + b * cond: enough structure to check how Preconditioned composes it."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x, c_noise, cond):
        return self.a * x + self.b * cond


def test_mean_plus_edm_is_edm_of_the_remainder_shifted_by_the_mean():
    """CorrDiff's design: D(x) = mu + D_r(x - mu), mu = M(0; 0, cond), so the probability-flow ODE
    samples mu + r exactly when started from mu + sigma_max n (translation equivariance)."""
    g = torch.Generator().manual_seed(3)
    x, cond = torch.randn(3, 1, 5, 6, generator=g), torch.rand(3, 1, 5, 6, generator=g)
    s = torch.tensor([0.05, 0.8, 6.0])
    composite = edm.Preconditioned(_Affine(0.3, -0.7), 0.2, "mean+edm", mean_net=_Affine(5.0, 1.5))
    plain = edm.Preconditioned(_Affine(0.3, -0.7), 0.2)
    mu = 1.5 * cond                                   # M(0; 0, cond) of the mean net
    torch.testing.assert_close(composite(x, s, cond), mu + plain(x - mu, s, cond))
    sig = edm.karras_sigmas(6, 0.002, 8.0, 7.0, torch.float64)
    n = torch.randn(3, 1, 5, 6, generator=g, dtype=torch.float64)
    c64 = cond.double()
    composite.double(), plain.double()
    a = edm.sample(lambda y, t, c: composite(y, t, c), c64, lambda i: n + (1.5 * c64 / 8.0 if i == 0 else 0), sig)
    b = edm.sample(lambda y, t, c: plain(y, t, c), c64, lambda i: n, sig)
    torch.testing.assert_close(a, 1.5 * c64 + b, rtol=0, atol=1e-12)


def test_mean_plus_edm_needs_its_mean_net():
    with pytest.raises(ValueError, match="mean_net"):
        edm.Preconditioned(_Affine(1, 0), 0.2, "mean+edm")
    with pytest.raises(ValueError, match="mean_net"):
        edm.Preconditioned(_Affine(1, 0), 0.2, "edm", mean_net=_Affine(1, 0))


def test_one_step_schedule_returns_the_denoised_start_exactly():
    """karras_sigmas(1) = (sigma_max, 0): the sampler's one Euler step gives D(sigma_max n) (to rounding)."""
    torch.testing.assert_close(edm.karras_sigmas(1, 0.002, 8.0), torch.tensor([8.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=">= 1"):
        edm.karras_sigmas(0)
    g = torch.Generator().manual_seed(5)
    n, cond = torch.randn(2, 1, 4, 7, generator=g, dtype=torch.float64), torch.rand(2, 1, 4, 7, generator=g, dtype=torch.float64)
    den = lambda x, s, c: torch.sin(3 * x) + c * s.view(-1, 1, 1, 1)   # noqa: E731  any function of x and sigma
    got = edm.sample(den, cond, lambda i: n, edm.karras_sigmas(1, 0.002, 8.0))
    torch.testing.assert_close(got, den(8.0 * n, torch.full((2,), 8.0, dtype=torch.float64), cond), rtol=0, atol=1e-14)


def test_crps_generator_reads_its_latent_as_x_over_sigma():
    """kind "crps": D = F(x / sigma; 0, cond), so at the sampler's start x / sigma_max is the noise itself
    and one sample is F(n; 0, cond) whatever sigma_max is; the eval clamp keeps rates >= 0."""
    g = torch.Generator().manual_seed(6)
    n, cond = torch.randn(3, 1, 5, 6, generator=g), torch.rand(3, 1, 5, 6, generator=g)
    d = edm.Preconditioned(_Affine(0.4, -0.9), 0.2, "crps").train()
    for sigma_max in (1.0, 8.0, 80.0):
        torch.testing.assert_close(d(sigma_max * n, torch.full((3,), sigma_max), cond), 0.4 * n - 0.9 * cond)
    d.eval()
    assert torch.equal(d(8.0 * n, torch.full((3,), 8.0), cond), torch.maximum(0.4 * n - 0.9 * cond, -cond))
    with pytest.raises(ValueError, match="'crps'"):
        edm.Preconditioned(_Affine(1, 0), 0.2, "gan")
