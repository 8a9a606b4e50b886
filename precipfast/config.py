"""Frozen configuration dataclasses: one per concept, one name per setting.

A field has the same name in the dataclass, the CLI flag (`--s-churn` -> `s_churn`), `config.json`
beside every checkpoint, the bundle manifest and (later) the C struct. Validation happens here, in
`__post_init__`, so deeper code can trust its inputs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

WET_MM_H = 0.1   # a pixel at or above this rate is wet, below it dry (shared/data/README.md)
STAGES = ("correction", "downscaling")
POOLINGS = ("mean", "max")   # how the coarse field pools the fine one (grid.coarsen)

# Tile edge and overlap (pixels of the stage's grid). 128 px: attention's cost per pixel grows with the
# tile's area, and 128 px is the fastest per useful pixel (benchmarks/RESULTS.md) and the nearest to the
# 80 px training crops.
DEFAULT_TILE = 128
DEFAULT_OVERLAP = 32


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass(frozen=True)
class UNetConfig:
    """DDPM++/SongUNet-style denoiser backbone (Song et al. 2021; Karras et al. 2022, Appendix F)."""
    in_channels: int = 1                    # channels of the noisy residual x
    cond_channels: int = 1                  # conditioning channels concatenated to x (input field + aux)
    out_channels: int = 1                   # channels of the denoised residual
    model_channels: int = 32                # channels at the finest level
    channel_mult: tuple[int, ...] = (1, 2, 2)  # per-level multiplier; len = number of levels
    num_blocks: int = 1                     # residual blocks per level (encoder; decoder has one more)
    attn_levels: tuple[int, ...] = (2,)     # level indices (0 = finest) with self-attention
    channels_per_head: int = 32             # attention head width
    emb_mult: int = 4                       # noise-embedding width = emb_mult * model_channels
    dropout: float = 0.0                    # dropout inside residual blocks (training only)

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attn_levels", tuple(int(a) for a in self.attn_levels))
        _check(self.in_channels >= 1, f"unet.in_channels must be >= 1, got {self.in_channels}")
        _check(self.cond_channels >= 0, f"unet.cond_channels must be >= 0, got {self.cond_channels}")
        _check(4 <= self.model_channels <= 4096 and self.model_channels % 4 == 0,
               f"--model-channels (unet.model_channels) must be a positive multiple of 4, got {self.model_channels}")
        _check(1 <= len(self.channel_mult) <= 8 and all(1 <= m <= 64 for m in self.channel_mult),
               f"--channel-mult (unet.channel_mult) must be a non-empty list of ints in [1, 64], "
               f"got {self.channel_mult}")
        _check(1 <= self.num_blocks <= 64, f"--num-blocks (unet.num_blocks) must be in [1, 64], got {self.num_blocks}")
        _check(all(0 <= a < len(self.channel_mult) for a in self.attn_levels),
               f"--attn-levels (unet.attn_levels) must index levels 0..{len(self.channel_mult) - 1}, "
               f"got {self.attn_levels}")
        _check(0.0 <= self.dropout < 1.0, f"--dropout (unet.dropout) must be in [0, 1), got {self.dropout}")

    @property
    def downsample_factor(self) -> int:
        """Inputs are padded to a multiple of this internally (one halving per level below the first)."""
        return 2 ** (len(self.channel_mult) - 1)


KINDS = ("edm", "regression", "mean+edm", "crps")


@dataclass(frozen=True)
class EDMConfig:
    """EDM preconditioning and training noise distribution (Karras et al. 2022, Table 1).

    Training and sampling agree: ln(sigma) ~ N(p_mean, p_std^2) puts ~2 % of training draws above the
    sampler's sigma_max (8), so the first sampling steps run at noise levels the net was trained on (EDM's
    image defaults, P_mean -1.2 with sigma_max 80, start 4.6 std above the training centre).
    The stage kinds (KINDS: diffusion, regression mean, CorrDiff's mean plus diffusion, CRPS generator) are
    described where they are built, edm.Preconditioned; a "mean+edm" stage's sigma_data is its remainder's std."""
    sigma_data: float = 0.5                 # std of the (residual) data in transformed units
    p_mean: float = -0.8                    # mean of ln(sigma) during training
    p_std: float = 1.4                      # std of ln(sigma) during training
    kind: str = "edm"                       # one of KINDS (edm.Preconditioned says what each is)
    # The denoised residual is clamped to [-cond[:, 0], denoised_max] at inference (working space): the
    # rate is never negative and never beyond the largest residual seen in training plus a margin
    # (set per stage from its training targets; inf = no upper bound).
    denoised_max: float = math.inf

    def __post_init__(self):
        _check(0 < self.sigma_data < math.inf, f"--sigma-data (edm.sigma_data) must be a finite number > 0, "
                                               f"got {self.sigma_data}")
        _check(self.p_std > 0, f"edm.p_std must be > 0, got {self.p_std}")
        _check(self.kind in KINDS, f"edm.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        _check(self.denoised_max > 0, f"edm.denoised_max must be > 0, got {self.denoised_max}")


@dataclass(frozen=True)
class SamplerConfig:
    """EDM sampler settings (Karras et al. 2022, Algorithm 2 and Eq. 5)."""
    num_steps: int = 18                     # number of noise levels before the final 0 (1: a one-
                                            # evaluation stage, kind regression or crps)
    sigma_min: float = 0.002                # smallest nonzero noise level
    sigma_max: float = 8.0                  # largest noise level (start of sampling; see EDMConfig)
    rho: float = 7.0                        # schedule curvature
    s_churn: float = 0.0                    # stochasticity strength (0 = deterministic ODE)
    s_min: float = 0.0                      # churn only for sigma in [s_min, s_max]
    s_max: float = math.inf
    s_noise: float = 1.0                    # churn noise scale
    solver: str = "heun"                    # "heun" (2nd order) or "euler"
    noise_clip: float = math.inf            # the starting noise clipped to +-noise_clip standard deviations
                                            # (truncation, Brock et al. 2019; MODEL_CARD.md: isolated spikes)

    def __post_init__(self):
        _check(self.num_steps >= 1, f"--num-steps (sampler.num_steps) must be >= 1, got {self.num_steps}")
        _check(self.noise_clip >= 1.0, f"sampler.noise_clip must be >= 1 standard deviation (inf: none), got "
                                       f"{self.noise_clip!r}")
        _check(0 < self.sigma_min < self.sigma_max,
               f"sampler needs 0 < sigma_min < sigma_max (--sigma-max), got {self.sigma_min}, {self.sigma_max}")
        _check(self.rho > 0, f"--rho (sampler.rho) must be > 0, got {self.rho}")
        _check(self.s_churn >= 0, f"sampler.s_churn must be >= 0, got {self.s_churn}")
        _check(self.solver in ("heun", "euler"), f"sampler.solver must be 'heun' or 'euler', got {self.solver!r}")


@dataclass(frozen=True)
class TransformConfig:
    """Precipitation transform: y = log1p(rate / scale_mm_h) / norm. Inverse clips at 0 mm/h."""
    kind: str = "log1p"                     # only "log1p" for now
    scale_mm_h: float = 1.0                 # rate unit inside the log
    norm: float = 1.0                       # divisor after the log (keeps values O(1))

    def __post_init__(self):
        _check(self.kind == "log1p", f"transform.kind must be 'log1p', got {self.kind!r}")
        _check(self.scale_mm_h > 0 and self.norm > 0, "transform.scale_mm_h and transform.norm must be > 0")


@dataclass(frozen=True)
class DegradationConfig:
    """Satellite-error model turning coarsened radar into IMERG-like input (train/degrade.py).

    r_sat = blur(shift(b * r^gamma_exp)) * lognormal noise, then rain below detect_mm_h removed
    with probability p_miss. Defaults are fitted to the IMERG fields in imerg_samples.h5 against
    mean-pooled radar (experiments/fit_degradation.py, docs/degradation.md, "mean pooling" column)."""
    bias_a: float = 1.13                    # multiplicative bias factor b at 1 mm/h
    gamma_exp: float = 1.09                 # intensity exponent (<1 would underestimate heavy rain)
    detect_mm_h: float = 0.5                # rates below this are the "light rain" satellites miss (not fitted)
    p_miss: float = 0.3                     # probability a light-rain coarse pixel is zeroed
    shift_px: float = 2.0                   # std of the random displacement, coarse pixels
    blur_px: float = 0.55                   # Gaussian blur std, coarse pixels
    noise_std: float = 0.20                 # std of the multiplicative log-normal noise (log space)
    enabled: bool = True                    # False = clean coarsened radar (downscaling-only work)

    def __post_init__(self):
        _check(self.bias_a > 0, f"degradation.bias_a must be > 0, got {self.bias_a}")
        _check(self.gamma_exp > 0, f"degradation.gamma_exp must be > 0, got {self.gamma_exp}")
        _check(0 <= self.p_miss <= 1, f"degradation.p_miss must be in [0, 1], got {self.p_miss}")
        _check(self.shift_px >= 0 and self.blur_px >= 0 and self.noise_std >= 0,
               "degradation.shift_px, blur_px and noise_std must be >= 0")


@dataclass(frozen=True)
class AmplitudeConfig:
    """A correction stage's amplitude rule, the manifest's "amplitude" entry (runtime/sampling/amplitude.py):
    each member keeps `keep` times the input's rain in every Gaussian window of `window_px` coarse pixels:
    the correction moves rain, it does not guess the satellite's unknown bias (issue 33)."""
    keep: float = 1.0             # the member's rain over the input's in every window
    window_px: float = 4.0        # Gaussian window std, coarse px
    max_gain: float = 4.0         # the largest factor a window's rain is scaled by (1 / max_gain the smallest)

    def __post_init__(self):
        num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        _check(all(num(getattr(self, f.name)) for f in dataclasses.fields(self)),
               f"amplitude values must be finite numbers, got {dataclasses.asdict(self)}")
        _check(0.25 <= self.keep <= 4, f"amplitude.keep must be in [0.25, 4], got {self.keep}")
        _check(0.5 <= self.window_px <= 64, f"amplitude.window_px must be in [0.5, 64], got {self.window_px}")
        _check(1 <= self.max_gain <= 100, f"amplitude.max_gain must be in [1, 100], got {self.max_gain}")


# The ranges a training crop draws its own satellite-error model from under `DataConfig.error_prior` "wide"
# (train/degrade.py draw_error_model): nobody knows which way IMERG errs on a given day and place, so the
# correction learns what the field itself reveals and leaves the rest as spread. bias_a is log-uniform, the
# others uniform; the parameters not named keep the fitted model's values.
WIDE_ERROR_PRIOR = {
    # IMERG over- and underestimates by tens of percent by region and season (Tan et al. 2016, J. Hydrometeor.
    # 17; O et al. 2017, HESS 21), and the fit itself moved from 0.54 to 1.13 with the pooling
    "bias_a": (0.6, 1.6),
    # retrievals saturate in convective cores (gamma < 1, the literature) up to the fit's 1.09
    "gamma_exp": (0.8, 1.12),
    # IR parallax and the half-hour timing error: 5-30 km rms per axis (the fit: 20 km)
    "shift_px": (0.5, 3.0),
    # PMW footprints and morphing: a quarter to a whole coarse pixel
    "blur_px": (0.3, 1.0),
    # random retrieval error, log-space std (the fit: 0.20)
    "noise_std": (0.1, 0.35),
    # light rain missed: none to most of it (the fit: 0.3)
    "p_miss": (0.0, 0.6),
}
ERROR_PRIORS = ("fit", "wide")


@dataclass(frozen=True)
class DataConfig:
    """Training data: real radar, coarsened, cropped and augmented (train/data.py)."""
    scale_factor: int = 10                  # HR pixels per LR pixel (1 km -> 10 km)
    pooling: str = "mean"                   # "mean" (an IMERG pixel is an areal mean) or "max" (PrecipDiff)
    hr_pixel_km: float = 1.0                # HR pixel edge, km
    patch_hr: int = 80                      # HR patch edge (multiple of scale_factor), downscaling stage
    patch_lr: int = 24                      # LR patch edge, correction stage
    period_min: int = 30                    # the 1 km target is the mean rate over this period (train/sources.py)
    # Whole days and places: validation never sees a frame next to a training frame (train/sources.py).
    train_sources: tuple[str, ...] = (  # the training days, source/day (train/sources.py)
        "qpe/20160920", "qpe/20160921", "fmi/fmi_20160928", "bom/bom_66_20201031")
    val_sources: tuple[str, ...] = ("qpe/20160922",)  # the validation day, source/day
    min_wet_fraction: float = 0.05          # patches drier than this are resampled (most of the time)
    error_prior: str = "fit"                # correction crops: "fit" degrades every crop with `degradation`;
                                            # "wide" draws each crop's error model from WIDE_ERROR_PRIOR
    transform: TransformConfig = field(default_factory=TransformConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)

    def __post_init__(self):
        _check(self.scale_factor >= 1, f"--scale-factor (data.scale_factor) must be >= 1, got {self.scale_factor}")
        _check(self.pooling in POOLINGS, f"--pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        _check(isinstance(self.patch_hr, int) and 0 < self.patch_hr <= 4096 and self.patch_hr % self.scale_factor == 0,
               f"--patch-hr must be a positive multiple of scale_factor={self.scale_factor} up to 4096, "
               f"got {self.patch_hr}")
        _check(isinstance(self.patch_lr, int) and 4 <= self.patch_lr <= 4096,
               f"--patch-lr must be an integer in [4, 4096], got {self.patch_lr}")
        _check(self.period_min >= 1, f"--period-min (data.period_min) must be >= 1, got {self.period_min}")
        _check(self.error_prior in ERROR_PRIORS, f"--error-prior must be one of {', '.join(ERROR_PRIORS)}, "
                                                 f"got {self.error_prior!r}")
        object.__setattr__(self, "train_sources", tuple(self.train_sources))
        object.__setattr__(self, "val_sources", tuple(self.val_sources))
        if isinstance(self.transform, dict):
            object.__setattr__(self, "transform", TransformConfig(**self.transform))
        if isinstance(self.degradation, dict):
            object.__setattr__(self, "degradation", DegradationConfig(**self.degradation))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for one stage (train/loop.py). The optimiser counts iterations; "steps" are
    sampler steps only (val_steps)."""
    stage: str = "downscaling"              # "correction" or "downscaling"
    iterations: int = 2000                  # optimiser iterations
    batch_size: int = 16                    # training crops per iteration
    learning_rate: float = 2e-3             # AdamW peak learning rate
    weight_decay: float = 1e-4              # AdamW weight decay
    warmup_iterations: int = 100            # linear warm-up to learning_rate
    grad_clip: float = 1.0                  # max global gradient norm
    ema_halflife_iterations: float = 200.0  # EMA of weights, half-life in optimiser iterations
    seed: int = 0                           # seeds the weights, each iteration's crops and the validation
    val_every: int = 250                    # optimiser iterations between validation CRPS evaluations
    val_members: int = 4                    # ensemble members for validation CRPS
    val_steps: int = 8                      # sampler steps of the validation ensemble
    checkpoint_every: int = 250             # optimiser iterations between checkpoints (the shipped model: 250)
    threads: int = 0                        # torch CPU threads (0 = all cores)
    # kind "crps" stages (train/loss.py crps_loss): the loss is the fair CRPS averaged over these scores.
    crps_scales: tuple[int, ...] = (1,)     # block-mean scales the CRPS scores, coarse px (1 = the pixels; kind crps)
    crps_space: str = "rate"                # CRPS of rates ("rate", mm/h) or of log1p rates ("log") (kind crps)
    crps_max_scales: tuple[int, ...] = ()   # block-maximum scales the CRPS scores, coarse px (kind crps)

    def __post_init__(self):
        object.__setattr__(self, "crps_scales", tuple(self.crps_scales))
        object.__setattr__(self, "crps_max_scales", tuple(self.crps_max_scales))
        _check(len(self.crps_scales) > 0 and all(isinstance(k, int) and k >= 1 for k in self.crps_scales),
               f"--crps-scales must be block sizes >= 1 in coarse px, like 1,2,4,8; got {self.crps_scales!r}")
        _check(all(isinstance(k, int) and k >= 2 for k in self.crps_max_scales),
               f"--crps-max-scales must be 'none' or block sizes >= 2 in coarse px, like 4,8,32; got "
               f"{self.crps_max_scales!r}")
        _check(self.crps_space in ("rate", "log"), f"--crps-space must be 'rate' or 'log', got {self.crps_space!r}")
        # Messages name the CLI flag: one name per setting (--batch-size <-> batch_size).
        _check(self.stage in STAGES, f"--stage must be one of {STAGES}, got {self.stage!r}")
        for name, lo, hi in (("iterations", 1, 10 ** 9), ("batch_size", 1, 65536), ("warmup_iterations", 0, 10 ** 9),
                             ("val_every", 1, 10 ** 9), ("checkpoint_every", 1, 10 ** 9), ("seed", 0, 2 ** 63 - 1),
                             ("threads", 0, 4096), ("val_members", 2, 10000), ("val_steps", 1, 1000)):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
                   f"--{name.replace('_', '-')} must be an integer in [{lo}, {hi}], got {v!r}")
        for name in ("learning_rate", "ema_halflife_iterations"):
            v = getattr(self, name)
            _check(0 < v < math.inf, f"--{name.replace('_', '-')} must be a finite number > 0, got {v!r}")
        _check(0 <= self.weight_decay < math.inf and 0 < self.grad_clip < math.inf,
               f"--weight-decay must be >= 0 and --grad-clip > 0 (finite), got {self.weight_decay}, {self.grad_clip}")


def to_dict(cfg: Any) -> dict:
    """JSON-ready dict of a (nested) config; inf is written as the string 'inf'."""
    def fix(v):
        if isinstance(v, float) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v
    return fix(dataclasses.asdict(cfg))


# Keys renamed since a config.json was written, {class: {old: new}}: a checkpoint trained before the rename
# (issue 27: the optimiser counts "iterations", the learning rate is "learning_rate") still loads.
RENAMED = {TrainConfig: {"steps": "iterations", "lr": "learning_rate", "warmup_steps": "warmup_iterations",
                         "ema_halflife_steps": "ema_halflife_iterations"}}


def from_dict(cls, d: dict):
    """Build `cls` from a dict, refusing unknown keys (a config from another version); old names in RENAMED
    are read as their new ones."""
    renamed = RENAMED.get(cls, {})
    d = {renamed.get(k, k): v for k, v in d.items()}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; expected a subset of {sorted(names)}")
    fixed = {k: (float(v) if v in ("inf", "-inf") else v) for k, v in d.items()}
    return cls(**fixed)
