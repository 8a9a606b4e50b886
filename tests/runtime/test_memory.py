"""The memory model (runtime/memory.py): images per call, member groups, and refusals before allocation."""
import pytest

from precipfast.config import UNetConfig
from precipfast.runtime import memory
from precipfast.runtime.memory import CPU_PIXELS_PER_CALL, STATE_FIELDS, auto_max_batch, image_bytes


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
    one = STATE_FIELDS * 4 * pixels
    assert memory.member_group_size(pixels, int(2.5 * one)) == 2
    assert memory.member_group_size(pixels, one // 3) == 1  # at least one member, whatever the budget


def test_declared_sizes_are_refused_before_allocation():
    gib = memory.GIB
    memory.check_domain(1, 350, 700, 10, 2 * gib)  # CONUS at 0.1 deg: one member's state is 1.28 GiB
    with pytest.raises(memory.MemoryBudgetError, match=r"input field \(1 x 150000 x 150000 float32\) needs 83.8 GiB.*"
                                                         r"--memory-gb"):
        memory.check_domain(1, 150000, 150000, 10, 2 * gib)
    with pytest.raises(memory.MemoryBudgetError, match="one member's sampler state .*--memory-gb"):
        memory.check_domain(1, 1000, 1000, 10, 2 * gib)
