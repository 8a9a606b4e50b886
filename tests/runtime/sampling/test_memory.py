"""The memory model (runtime/sampling/memory.py): images per call, member groups, and refusals before allocation."""
import pytest

from precipfast.config import UNetConfig
from precipfast.kernels.heun_residual import STEP_IMPLS
from precipfast.runtime.sampling import memory
from precipfast.runtime.sampling.memory import (
    CPU_PIXELS_PER_CALL,
    STATE_FIELDS,
    auto_max_batch,
    image_bytes,
    state_fields,
)


def test_auto_max_batch_follows_budget_and_cpu_cap():
    unet = UNetConfig(model_channels=16, channel_mult=(1, 2, 2), attn_levels=(2,))
    one = image_bytes(unet, 128, 128)
    assert auto_max_batch(unet, 128, 3 * one, device_type="cuda") == 3          # the budget alone on a GPU
    assert auto_max_batch(unet, 128, 3 * one, device_type="cpu") == 3
    assert auto_max_batch(unet, 128, 1000 * one, device_type="cpu") == CPU_PIXELS_PER_CALL // 128 ** 2 == 8
    assert auto_max_batch(unet, 256, 1000 * one, device_type="cpu") == 2
    assert auto_max_batch(unet, 128, one // 2, device_type="cpu") == 1           # never below one image


def test_member_groups_hold_whole_members_within_the_budget():
    pixels = 120 * 140
    for step in STEP_IMPLS:
        one = state_fields(step) * 4 * pixels
        assert memory.member_group_size(pixels, int(2.5 * one), step) == 2
        assert memory.member_group_size(pixels, one // 3, step) == 1  # at least one member, whatever the budget


def test_state_per_member_follows_the_step_implementation():
    # Every step of the registry has a figure; the in-place and Triton steps hold 4 fields where the
    # allocating reference peaked at 13.7 (benchmarks/RESULTS.md), so a budget sized for 2 reference
    # members holds 4 of theirs.
    assert set(STATE_FIELDS) == set(STEP_IMPLS)
    assert STATE_FIELDS == {"reference": 14, "inplace": 6, "triton": 6}
    pixels = 1500 * 1500
    budget = 2 * memory.member_state_bytes(pixels, "reference")
    assert [memory.member_group_size(pixels, budget, s) for s in ("reference", "inplace", "triton")] == [2, 4, 4]
    with pytest.raises(ValueError, match=r"unknown step implementation 'fused'; the memory model knows \['inplace'"):
        state_fields("fused")


def test_declared_sizes_are_refused_before_allocation():
    gib = memory.GIB
    memory.check_domain(1, 350, 700, 10, 2 * gib, "reference")  # CONUS at 0.1 deg: one member's state is 1.28 GiB
    with pytest.raises(memory.MemoryBudgetError, match=r"input field \(1 x 150000 x 150000 float32\) needs 83.8 GiB.*"
                                                         r"--memory-gb"):
        memory.check_domain(1, 150000, 150000, 10, 2 * gib, "inplace")
    with pytest.raises(memory.MemoryBudgetError, match="one member's sampler state .*--memory-gb"):
        memory.check_domain(1, 1000, 1000, 10, 2 * gib, "inplace")
    # 6500 x 6500 px at 1 km: 2.20 GiB of reference state (14 fields) refused, 0.94 GiB in place accepted.
    with pytest.raises(memory.MemoryBudgetError, match=r"\(6500 x 6500 px, 14 float32 fields\) needs 2.2 GiB"):
        memory.check_domain(1, 650, 650, 10, 2 * gib, "reference")
    memory.check_domain(1, 650, 650, 10, 2 * gib, "inplace")
