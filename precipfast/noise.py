"""Member noise as a pure function: Philox4x32-10 counters and Box-Muller normals.

Philox4x32-10 is the counter-based generator of Salmon, Moraes, Dror & Shaw (2011), "Parallel random
numbers: as easy as 1, 2, 3" (SC'11), as shipped in Random123. A counter-based generator has no state:
the noise of a pixel is computed from its coordinates, so member k's field is identical for any batch
size, tiling, backend or language. A port to another language reproduces the layout below bit for bit.

Layout (version 1; changing any line changes every sample):

  key      k0 = seed & 0xFFFFFFFF, k1 = seed >> 32            (seed: unsigned 64-bit)
  pixel    p  = row * width + col                              (global grid of `width` columns)
  pair     n  = p >> 1,  lane = p & 1                          (two normals per Philox block)
  counter  c0 = n & 0xFFFFFFFF, c1 = n >> 32, c2 = member,
           c3 = (STAGE_IDS[stage] << 16) | step                (member < 2^32, step < 2^16)
  block    (x0, x1, x2, x3) = Philox4x32-10(counter, key)      (Random123 word order)
  uniforms a = (x0 << 20) | (x1 >> 12), b = (x2 << 20) | (x3 >> 12)        (52-bit integers)
           u1 = (2a + 1) * 2^-53, u2 = (2b + 1) * 2^-53      (float64, exact, in (0, 1) open)
  normals  r = sqrt(-2 log(u1)), theta = 2pi * u2   (2pi = 6.283185307179586 as a double)
           lane 0: r cos(theta), lane 1: r sin(theta), computed in float64, rounded to float32.

The uint32 words are exact everywhere. The float64 log/cos/sin of different math libraries (SLEEF in
torch, glibc, CUDA) may differ in their last bit, which survives the rounding to float32 only for a
value sitting on a float32 rounding boundary: expect such 1-ulp differences in roughly one sample per
hundred million, never more than 1 float32 ulp. The 52-bit uniforms bound |z| by
sqrt(2 * 53 * ln 2) = 8.57, i.e. the tail is exact to probability ~1e-17.

`philox4x32_reference` and `normal_reference` are the plain scalar twins (Python ints and `math`),
the spec a port to another language follows; the vectorised functions are tested against them.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from precipfast.errors import InputFormatError

STAGE_IDS = {"correction": 0, "downscaling": 1}

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, sqrt(3) - 1)
_MASK32 = 0xFFFFFFFF
_TWO_PI = 6.283185307179586  # float64 nearest to 2pi, written out so a port uses the same double
_CHUNK_PAIRS = 1 << 16  # Philox blocks per vectorised chunk: ~10 live int64 buffers stay in L2


@dataclass(frozen=True)
class Origin:
    """Where a field sits on the global grid of its pixel size, so its noise is keyed by global pixel: the
    row and column of its north-west pixel counted from (90N, 180W), and the grid's width in pixels (0 = the
    field's own width, for an array without geolocation)."""
    row0: int = 0
    col0: int = 0
    width: int = 0

    @staticmethod
    def from_coords(lat_north: float, lon_west: float, pixel_deg: float) -> "Origin":
        """Global 0-based pixel of the north-west centre on a grid of pixel_deg from (90N, 180W)."""
        return Origin(int(round((90.0 - lat_north) / pixel_deg - 0.5)),
                      int(round((lon_west + 180.0) / pixel_deg - 0.5)), int(round(360.0 / pixel_deg)))

    @staticmethod
    def from_latlon(lat, lon) -> "Origin":
        """The origin of a north-up field from its 1-D pixel-centre coordinates (lat descending)."""
        lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
        if lat.ndim != 1 or lon.ndim != 1 or lat.size < 2 or lon.size < 2 or not lat[0] > lat[1]:
            raise InputFormatError(f"lat/lon must be 1-D pixel centres, lat descending (north-up), with at least 2 "
                                   f"values each; got lat {lat.shape}, lon {lon.shape}")
        return Origin.from_coords(float(lat[0]), float(lon[0]), float(lon[1] - lon[0]))

    def scaled(self, factor: int) -> "Origin":
        """The same corner on the grid `factor` times finer."""
        return Origin(self.row0 * factor, self.col0 * factor, self.width * factor)

    def with_width(self, width: int) -> "Origin":
        """This origin on a grid of `width` pixels when it has no width of its own (an array without geolocation
        is keyed as its own grid)."""
        return Origin(self.row0, self.col0, self.width or width)

    def shifted(self, rows: int, cols: int) -> "Origin":
        """The origin `rows` and `cols` pixels further south-east on the same grid."""
        return Origin(self.row0 + rows, self.col0 + cols, self.width)


# ---------------------------------------------------------------------------------------------------
# Plain scalar reference (the spec)

def philox4x32_reference(counter: Sequence[int], key: Sequence[int], rounds: int = 10) -> tuple:
    """Philox4x32-R on one block with Python ints: counter 4 words, key 2 words, all uint32."""
    c0, c1, c2, c3 = (int(w) & _MASK32 for w in counter)
    k0, k1 = (int(w) & _MASK32 for w in key)
    for r in range(rounds):
        if r > 0:  # the key is bumped before every round but the first
            k0, k1 = (k0 + PHILOX_W0) & _MASK32, (k1 + PHILOX_W1) & _MASK32
        p0, p1 = PHILOX_M0 * c0, PHILOX_M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK32
    return c0, c1, c2, c3


def normal_reference(seed: int, member: int, stage: str, step: int, pixel: int) -> float:
    """The standard normal of one global pixel index, as a float64 (round it to float32 to compare)."""
    check_ids(seed, [member], stage, step)
    n, lane = pixel >> 1, pixel & 1
    counter = (n & _MASK32, n >> 32, member, (STAGE_IDS[stage] << 16) | step)
    x0, x1, x2, x3 = philox4x32_reference(counter, (seed & _MASK32, seed >> 32))
    u1 = (2 * ((x0 << 20) | (x1 >> 12)) + 1) * 2.0 ** -53
    u2 = (2 * ((x2 << 20) | (x3 >> 12)) + 1) * 2.0 ** -53
    r, theta = math.sqrt(-2.0 * math.log(u1)), _TWO_PI * u2
    return r * (math.sin(theta) if lane else math.cos(theta))


# ---------------------------------------------------------------------------------------------------
# Vectorised generator (int64 tensors holding uint32 values)

def _mulhilo(m: int, x):
    """(hi, lo) 32-bit halves of m * x for a constant uint32 m and uint32 x (int or int64 tensor).

    m * x needs 64 unsigned bits, one more than int64 holds, so m is split into 16-bit halves: each
    partial product is < 2^48 and every intermediate below stays far from 2^63."""
    if not torch.is_tensor(x):
        p = m * x
        return p >> 32, p & _MASK32
    p_lo = x * (m & 0xFFFF)  # < 2^48
    p_hi = x * (m >> 16)  # < 2^48; m * x = p_hi * 2^16 + p_lo
    t = (p_hi & 0xFFFF).bitwise_left_shift_(16).add_(p_lo)  # low 16 bits of p_hi moved up, < 2^49
    hi = p_hi.bitwise_right_shift_(16).add_(t >> 32)
    return hi, t.bitwise_and_(_MASK32)


def _philox_words(c0, c1, c2, c3, k0: int, k1: int, rounds: int):
    """Philox rounds on counter words that are ints or int64 tensors (broadcastable)."""
    for r in range(rounds):
        if r > 0:
            k0, k1 = (k0 + PHILOX_W0) & _MASK32, (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = _xor3(hi1, c1, k0), lo1, _xor3(hi0, c3, k1), lo0
    return c0, c1, c2, c3


def _xor3(a, b, k: int):
    """a ^ b ^ k, in place on a when a is a tensor."""
    if torch.is_tensor(a):
        return a.bitwise_xor_(b).bitwise_xor_(k)
    return (b ^ a) ^ k if torch.is_tensor(b) else a ^ b ^ k


def philox4x32(counter: torch.Tensor, key: Sequence[int], rounds: int = 10) -> torch.Tensor:
    """Philox4x32-R on N blocks: counter (4, N) int64 with values in [0, 2^32), key 2 uint32 words.

    Returns (4, N) int64 in [0, 2^32), word order as Random123's philox4x32."""
    if not torch.is_tensor(counter) or counter.dtype != torch.int64 or counter.ndim != 2 \
            or counter.shape[0] != 4:
        raise ValueError(f"counter must be an int64 tensor shaped (4, N), got "
                         f"{getattr(counter, 'dtype', type(counter))} {tuple(getattr(counter, 'shape', ()))}")
    if counter.numel() and (int(counter.min()) < 0 or int(counter.max()) > _MASK32):
        raise ValueError("counter values must lie in [0, 2^32)")
    if len(key) != 2 or any(not 0 <= int(k) <= _MASK32 for k in key):
        raise ValueError(f"key must be 2 words in [0, 2^32), got {list(key)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    words = _philox_words(*(counter[i] for i in range(4)), int(key[0]), int(key[1]), rounds)
    return torch.stack(words)


def _box_muller(x0, x1, x2, x3) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 standard normals (r cos, r sin) from one Philox block, as in the module docstring."""
    scale = 2.0 ** -53
    u1 = x0.bitwise_left_shift_(20).bitwise_or_(x1.bitwise_right_shift_(12)).mul_(2).add_(1).double()
    u2 = x2.bitwise_left_shift_(20).bitwise_or_(x3.bitwise_right_shift_(12)).mul_(2).add_(1).double()
    r = u1.mul_(scale).log_().mul_(-2.0).sqrt_()
    theta = u2.mul_(scale).mul_(_TWO_PI)
    return r * theta.cos(), r.mul_(theta.sin_())


def _as_int(name: str, value) -> int:
    """value as a Python int (numpy and 0-d torch integers accepted, floats and bools refused)."""
    if isinstance(value, bool) or (torch.is_tensor(value) and value.is_floating_point()):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def check_ids(seed: int, members, stage: str, step: int) -> None:
    if not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")
    if stage not in STAGE_IDS:
        raise ValueError(f"unknown stage {stage!r}; available: {sorted(STAGE_IDS)}")
    if not isinstance(step, int) or not 0 <= step < 2 ** 16:
        raise ValueError(f"step must be an int in [0, 65536), got {step!r}")
    for m in members:
        if not 0 <= m < 2 ** 32:
            raise ValueError(f"member must be in [0, 2^32), got {m}")


def _members(member) -> tuple[bool, list[int]]:
    """(is a single member, member ids) from an int, a 0-d/1-D integer tensor or a sequence of ints."""
    if torch.is_tensor(member):
        if member.is_floating_point() or member.ndim > 1:
            raise ValueError(f"member tensor must be 0-d or 1-D integer, got {member.dtype} "
                             f"{tuple(member.shape)}")
        return member.ndim == 0, [int(m) for m in member.reshape(-1).tolist()]
    if isinstance(member, (list, tuple, range)):
        return False, [_as_int("member", m) for m in member]
    return True, [_as_int("member", member)]


def _window(name: str, s, limit: int | None) -> tuple[int, int]:
    """(start, stop) of a slice or range with unit step, checked against [0, limit]."""
    if not isinstance(s, (slice, range)) or s.step not in (None, 1):
        raise ValueError(f"{name} must be a slice or range with step 1, got {s!r}")
    start, stop = s.start or 0, s.stop
    if stop is None or start < 0 or stop < start or (limit is not None and stop > limit):
        bound = f"0 <= start <= stop <= {limit}" if limit is not None else "0 <= start <= stop"
        raise ValueError(f"{name} window must satisfy {bound}, got {s!r}")
    return start, stop


def _fill_member(out: torch.Tensor, seed: int, member: int, stage: str, step: int,
                 row0: int, col0: int, width: int) -> None:
    """Write the noise of window (row0.., col0..) of member into out (H, W), chunk by chunk."""
    h, w = out.shape
    k0, k1 = seed & _MASK32, seed >> 32
    c2, c3 = member, (STAGE_IDS[stage] << 16) | step
    n_pairs = w // 2 + 1  # blocks per row: enough for W pixels starting on either lane
    rows_per_chunk = max(1, _CHUNK_PAIRS // n_pairs)
    j = torch.arange(n_pairs, dtype=torch.int64, device=out.device)
    i = torch.arange(w, device=out.device)
    for r0 in range(0, h, rows_per_chunk):
        r1 = min(h, r0 + rows_per_chunk)
        p_first = (torch.arange(row0 + r0, row0 + r1, dtype=torch.int64, device=out.device) * width
                   + col0)  # global index of each row's first pixel
        n = (p_first >> 1)[:, None] + j  # (rows, n_pairs) block indices
        # The chunk's largest block index, from Python ints (reading it off the tensor would wait for the
        # device): below 2^32, the common case, the high counter word is 0 everywhere.
        n_max = (((row0 + r1 - 1) * width + col0) >> 1) + n_pairs - 1
        c1 = n >> 32 if n_max >> 32 else 0
        x = _philox_words(n.bitwise_and_(_MASK32), c1, c2, c3, k0, k1, 10)
        z0, z1 = _box_muller(*x)
        pairs = torch.stack((z0, z1), dim=-1).flatten(1)  # (rows, 2 n_pairs): pixels 2 n_first ...
        lane = (p_first & 1)[:, None]  # rows whose first pixel is an odd index start at lane 1
        out[r0:r1] = pairs.gather(1, lane + i).to(out.dtype)


def normal(seed: int, member, stage: str, step: int, rows, cols, width: int, *,
           dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Standard normal noise for window (rows, cols) of a global grid with `width` columns.

    member: an int -> (H, W); a sequence or 1-D tensor of E members -> (E, H, W). rows, cols: slices
    or ranges with step 1. Values are float64 Box-Muller normals rounded to `dtype` (float32 default)."""
    seed, step, width = _as_int("seed", seed), _as_int("step", step), _as_int("width", width)
    single, members = _members(member)
    check_ids(seed, members, stage, step)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    row0, row1 = _window("rows", rows, None)
    col0, col1 = _window("cols", cols, width)
    out = torch.empty((len(members), row1 - row0, col1 - col0), dtype=dtype, device=device)
    for e, m in enumerate(members):
        if out[e].numel():
            _fill_member(out[e], seed, m, stage, step, row0, col0, width)
    return out[0] if single else out


def normal_members(seed: int, members: Sequence[int], stage: str, step: int, row0: int, row1: int,
                   col0: int, col1: int, width: int, *, dtype: torch.dtype = torch.float32,
                   device=None) -> torch.Tensor:
    """Noise of several members for window [row0:row1, col0:col1], shaped (E, 1, H, W)."""
    return normal(seed, list(members), stage, step, range(row0, row1), range(col0, col1), width,
                  dtype=dtype, device=device).unsqueeze(1)


def time_seed(seed: int, t: int) -> int:
    """The seed of time slice t of a run seeded `seed`: seed + t * 2^32, so slices get independent
    noise while a seed below 2^32 (the CLI's range) keys slice 0 exactly as a single-time run."""
    seed, t = _as_int("seed", seed), _as_int("t", t)
    if not (0 <= seed < 2 ** 32 and 0 <= t < 2 ** 32):
        raise ValueError(f"time_seed needs seed and t in [0, 2^32), got seed {seed}, t {t}")
    return seed + (t << 32)
