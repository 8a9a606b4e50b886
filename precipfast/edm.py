"""EDM: schedule, preconditioning, training loss and samplers (Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", NeurIPS).

The spec the rest of precipfast follows. Pure torch, float64-capable; the runtime's batched sampler
and the fused kernels are checked against the functions here. A denoiser is any callable
`D(x, sigma, cond) -> x_denoised` with `sigma` shaped (B,).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from precipfast.config import KINDS

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[int], torch.Tensor]  # step index -> standard normal tensor shaped like x


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  dtype=torch.float64) -> torch.Tensor:
    """Noise levels t_0 > ... > t_{N-1} = sigma_min, then t_N = 0 (Eq. 5). Shape (num_steps + 1,).

    num_steps 1 gives (sigma_max, 0): one Euler step from sigma_max to 0 returns D(sigma_max n) exactly,
    the whole sampler of a one-evaluation stage (kind "regression" or "crps", Preconditioned)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_steps == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64).to(dtype)
    i = torch.arange(num_steps, dtype=torch.float64)
    inv_rho = 1.0 / rho
    t = (sigma_max ** inv_rho + i / (num_steps - 1) * (sigma_min ** inv_rho - sigma_max ** inv_rho)) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)]).to(dtype)


def preconditioning(sigma: torch.Tensor, sigma_data: float):
    """c_skip, c_out, c_in, c_noise of EDM (Table 1): D = c_skip x + c_out F(c_in x; c_noise)."""
    s2, d2 = sigma * sigma, sigma_data * sigma_data
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1.0 / (d2 + s2).sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Table 1): unit effective weight."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def training_sigmas(n: int, p_mean: float, p_std: float, generator: torch.Generator | None = None,
                    device=None) -> torch.Tensor:
    """ln(sigma) ~ N(P_mean, P_std^2) (Table 1, training noise distribution). Shape (n,)."""
    z = torch.randn(n, generator=generator, device=device)
    return (z * p_std + p_mean).exp()


def edm_loss(denoiser: Denoiser, y: torch.Tensor, cond: torch.Tensor, sigma: torch.Tensor,
             noise: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Per-sample EDM loss lambda(sigma) ||D(y + sigma n; sigma) - y||^2 averaged over pixels (Eq. 2/8).

    y: clean target (B, C, H, W); sigma: (B,); noise: standard normal like y. Returns (B,)."""
    s = sigma.view(-1, *([1] * (y.ndim - 1)))
    denoised = denoiser(y + s * noise, sigma, cond)
    per_pixel = (denoised - y) ** 2
    return loss_weight(sigma, sigma_data) * per_pixel.flatten(1).mean(dim=1)


def churn_gamma(t_cur: float, num_steps: int, s_churn: float, s_min: float, s_max: float) -> float:
    """gamma_i of Algorithm 2: min(S_churn / N, sqrt(2) - 1) inside [S_min, S_max], else 0."""
    if s_churn > 0 and s_min <= t_cur <= s_max:
        return min(s_churn / num_steps, math.sqrt(2.0) - 1.0)
    return 0.0


def churn(x: torch.Tensor, t_cur: float, gamma: float, s_noise: float, eps: torch.Tensor):
    """Raise the noise level to t_hat = (1 + gamma) t_cur by adding fresh noise (Algorithm 2, lines 5-6)."""
    t_hat = t_cur + gamma * t_cur
    if gamma == 0.0:
        return x, t_hat
    return x + math.sqrt(t_hat ** 2 - t_cur ** 2) * s_noise * eps, t_hat


def euler_update(x_hat: torch.Tensor, denoised: torch.Tensor, t_hat: float, t_next: float) -> torch.Tensor:
    """x_next = x_hat + (t_next - t_hat) d, d = (x_hat - D(x_hat)) / t_hat (Algorithm 2, lines 7-8)."""
    d_cur = (x_hat - denoised) / t_hat
    return x_hat + (t_next - t_hat) * d_cur


def heun_update(x_hat: torch.Tensor, denoised_hat: torch.Tensor, x_next: torch.Tensor,
                denoised_next: torch.Tensor, t_hat: float, t_next: float) -> torch.Tensor:
    """2nd-order correction (Algorithm 2, lines 9-11): average the slopes at t_hat and t_next."""
    d_cur = (x_hat - denoised_hat) / t_hat
    d_prime = (x_next - denoised_next) / t_next
    return x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)


def heun_step(denoiser: Denoiser, x_hat: torch.Tensor, t_hat: float, t_next: float,
              cond: torch.Tensor) -> torch.Tensor:
    """One EDM step from t_hat to t_next: Euler, then Heun's correction unless t_next == 0."""
    sig = lambda t: torch.full((x_hat.shape[0],), t, dtype=x_hat.dtype, device=x_hat.device)  # noqa: E731
    denoised = denoiser(x_hat, sig(t_hat), cond)
    x_next = euler_update(x_hat, denoised, t_hat, t_next)
    if t_next > 0:
        x_next = heun_update(x_hat, denoised, x_next, denoiser(x_next, sig(t_next), cond), t_hat, t_next)
    return x_next


def clip_start(x: torch.Tensor, t0: float, noise_clip: float) -> torch.Tensor:
    """The starting state t0 * z with z truncated to [-noise_clip, noise_clip] (in place; x as given when
    noise_clip is inf). The probability-flow ODE carries a pixel's starting draw almost one to one into
    its log rate, so a far-tail draw can end as an isolated spike (docs/experiments.md); truncating the
    starting noise (the truncation trick, Brock et al. 2019) bounds that tail."""
    if math.isfinite(noise_clip):
        x.clamp_(-noise_clip * t0, noise_clip * t0)
    return x


def sample(denoiser: Denoiser, cond: torch.Tensor, noise: NoiseFn, sigmas: torch.Tensor, *,
           s_churn: float = 0.0, s_min: float = 0.0, s_max: float = math.inf, s_noise: float = 1.0,
           solver: str = "heun", noise_clip: float = math.inf) -> torch.Tensor:
    """EDM sampler (Algorithm 2): x_0 = t_0 * noise(0); step i adds churn noise(i + 1) when gamma > 0.
    noise_clip truncates the starting noise to +-noise_clip (SamplerConfig.noise_clip).

    The plain reference loop: one denoiser call per evaluation, float64-capable. Returns x at t_N = 0."""
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    ts = [float(t) for t in sigmas]
    num_steps = len(ts) - 1
    x = clip_start(noise(0) * ts[0], ts[0], noise_clip)
    for i, (t_cur, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        gamma = churn_gamma(t_cur, num_steps, s_churn, s_min, s_max)
        x_hat, t_hat = churn(x, t_cur, gamma, s_noise, noise(i + 1) if gamma > 0 else None)
        if solver == "heun":
            x = heun_step(denoiser, x_hat, t_hat, t_next, cond)
        else:
            sig = torch.full((x.shape[0],), t_hat, dtype=x.dtype, device=x.device)
            x = euler_update(x_hat, denoiser(x_hat, sig, cond), t_hat, t_next)
    return x


class Preconditioned(torch.nn.Module):
    """D(x, sigma, cond) = c_skip x + c_out F(c_in x; c_noise, cond) around a raw network F (Karras et al.
    2022, Table 1), for each stage kind (config.KINDS):

    "edm": the EDM denoiser itself.
    "regression": D = F(0; 0, cond), a deterministic mean that ignores x and sigma (CorrDiff's regression stage).
    "mean+edm" (CorrDiff, Mardani et al. 2025, Sec. 2): a frozen regression mean mu = M(0; 0, cond) plus EDM
        on the remainder, D(x) = mu + c_skip (x - mu) + c_out F(c_in (x - mu); c_noise, cond). The
        probability-flow ODE is translation-equivariant, so sampling x gives mu + a sample of the remainder.
    "crps": a generator D = F(x / sigma; 0, cond) trained on the fair CRPS (Lang et al. 2024, AIFS-CRPS; Alet
        et al. 2025, FGN). Its latent is the sampler's starting noise and one Euler step from sigma_max to 0
        returns D, so a member costs one evaluation with the diffusion stages' seeds, tiles and backends.

    In eval mode D is clamped to [-cond[:, :1], denoised_max]: the residual never makes a rate negative nor
    exceeds the largest residual of the training data (EDMConfig)."""

    def __init__(self, net: torch.nn.Module, sigma_data: float, kind: str = "edm",
                 denoised_max: float = math.inf, mean_net: torch.nn.Module | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        if (kind == "mean+edm") != (mean_net is not None):
            raise ValueError("kind 'mean+edm' needs a mean_net, and only it takes one")
        self.net = net
        if mean_net is not None:
            self.mean_net = mean_net
        self.sigma_data = float(sigma_data)
        self.kind = kind
        self.denoised_max = float(denoised_max)

    def mean(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """mu = M(0; 0, cond) of a "mean+edm" denoiser, shaped like x."""
        return self.mean_net(torch.zeros_like(x), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device),
                             cond).to(x.dtype)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor,
                mu: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma, cond); mu: the "mean+edm" stage's mean when the caller computed it (the ONNX
        export pads inputs itself and passes mu computed at the real size, edge-padded like x)."""
        sigma = sigma.to(x.dtype).reshape(-1)
        b = (-1,) + (1,) * (x.ndim - 1)
        if self.kind == "regression":
            out = self.net(torch.zeros_like(x), torch.zeros_like(sigma), cond).to(x.dtype)
        elif self.kind == "crps":
            out = self.net(x / sigma.view(b), torch.zeros_like(sigma), cond).to(x.dtype)
        else:
            if self.kind == "mean+edm" and mu is None:
                mu = self.mean(x, cond)
            r = x if mu is None else x - mu
            c_skip, c_out, c_in, c_noise = preconditioning(sigma, self.sigma_data)
            f = self.net(r * c_in.view(b), c_noise, cond)
            out = c_skip.view(b) * r + c_out.view(b) * f.to(x.dtype)
            if mu is not None:
                out = out + mu
        if self.training:
            return out
        out = torch.maximum(out, -cond[:, : out.shape[1]].to(out.dtype))
        return out.clamp_max(self.denoised_max) if math.isfinite(self.denoised_max) else out
