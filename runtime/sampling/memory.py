"""The memory model of a run: the budget, one member's sampler state, members sampled together, images
per backend call, and the refusal of inputs that cannot fit before anything is allocated.

A run holds one group of members' full-domain state (`STATE_FIELDS[step]` float32 fields per member,
by the step implementation of `kernels/heun_residual.py` in use) plus the backend's working set for one
call (`image_bytes` per image); both are sized to the same budget (`--memory-gb`, default
`default_budget_bytes`).
"""
from __future__ import annotations

import torch

from precipfast.errors import PrecipfastError

GIB = 1024 ** 3
FLOAT32 = 4

# Full-domain float32 fields per member at the peak of a stage, by step implementation. The reference holds
# x_hat, both denoised estimates, the Euler point, the conditioning/base and its allocating step's temporaries;
# the in-place and Triton steps update x_hat, D(x_hat), the Euler point and its D in place. Each bound is its
# measured peak plus a field of margin for the backend's buffers (benchmarks/RESULTS.md, "Memory").
STATE_FIELDS = {"reference": 14, "inplace": 6, "triton": 6}

# Pixels per backend call on the CPU: past a few 128 px tiles a 2-core CPU gains no throughput, only memory,
# since ONNX Runtime keeps every intermediate of a call in its arena (benchmarks/RESULTS.md, images per call).
CPU_PIXELS_PER_CALL = 8 * 128 * 128


class MemoryBudgetError(PrecipfastError):
    """A run that cannot fit the memory budget, found before anything is allocated."""


def budget_bytes(memory_gb: float | None, device: torch.device) -> int:
    """The run's budget in bytes: `memory_gb` GiB, or the device's default when None."""
    return int(memory_gb * GIB) if memory_gb is not None else default_budget_bytes(device)


def default_budget_bytes(device: torch.device) -> int:
    """A third of free GPU memory, or 2 GiB on the CPU (past a few 128 px tiles per call a CPU gains
    no throughput from larger batches, only memory)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free / 3)
    return 2 * GIB


def state_fields(step: str) -> int:
    """Full-domain float32 fields per member with step implementation `step` (STATE_FIELDS)."""
    if step not in STATE_FIELDS:
        raise ValueError(f"unknown step implementation {step!r}; the memory model knows {sorted(STATE_FIELDS)}")
    return STATE_FIELDS[step]


def member_state_bytes(pixels: int, step: str) -> int:
    """Sampler state of one member over a domain of `pixels` (the stage's grid) with step `step`."""
    return state_fields(step) * FLOAT32 * pixels


def member_group_size(pixels: int, budget: int, step: str) -> int:
    """Members sampled together so their full-domain state fits the budget (at least one)."""
    return max(1, int(budget // member_state_bytes(pixels, step)))


def image_bytes(unet_cfg, height: int, width: int, dtype_bytes: int = FLOAT32) -> int:
    """Rough peak activation memory of one (H, W) image through the U-Net at inference: the kept skip
    activations plus a few working buffers per level, plus the attention matrices, doubled for what the
    framework holds besides (ONNX Runtime's arena keeps every intermediate of a call alive: a CONUS run
    with the undoubled estimate peaked at 12 GiB)."""
    ch, levels = unet_cfg.model_channels, len(unet_cfg.channel_mult)
    px, total = height * width, 0.0
    for lvl, mult in enumerate(unet_cfg.channel_mult):
        n = px / 4 ** lvl
        total += n * ch * mult * (unet_cfg.num_blocks + 1 + 6)
        if lvl in unet_cfg.attn_levels or lvl == levels - 1:
            heads = max(1, ch * mult // unet_cfg.channels_per_head)
            total += 2 * heads * n * n
    return int(2 * total * dtype_bytes)


def auto_max_batch(unet_cfg, tile: int, budget: int, *, device_type: str) -> int:
    """Images per backend call: as many as the budget holds, and on the CPU no more than
    CPU_PIXELS_PER_CALL pixels."""
    n = max(1, int(budget // max(1, image_bytes(unet_cfg, tile, tile))))
    return min(n, max(1, CPU_PIXELS_PER_CALL // (tile * tile))) if device_type == "cpu" else n


def check_fits(what: str, nbytes: int, budget: int) -> None:
    """Refuse, before allocating, `what` needing more than the budget (one line naming --memory-gb)."""
    if nbytes > budget:
        raise MemoryBudgetError(f"{what} needs {nbytes / GIB:.3g} GiB, more than the memory budget of "
                                f"{budget / GIB:.3g} GiB; raise --memory-gb or crop the input with --bbox")


def check_domain(times: int, height: int, width: int, scale_factor: int, budget: int, step: str) -> None:
    """The input field (times, height, width) as float32 and one member's state on the fine grid (with
    step implementation `step`) must each fit the budget: checked from the sizes a file declares,
    before reading or sampling."""
    check_fits(f"the input field ({times} x {height} x {width} float32)", FLOAT32 * times * height * width, budget)
    fine = height * width * scale_factor ** 2
    check_fits(f"one member's sampler state ({height * scale_factor} x {width * scale_factor} px, "
               f"{state_fields(step)} float32 fields)", member_state_bytes(fine, step), budget)
