"""Triton plumbing shared by the kernels: whether Triton can run on a device, and kernels compiled on
their first launch.

Why compile lazily: `triton.jit` decides at decoration time whether a kernel runs compiled or in the
Triton interpreter (TRITON_INTERPRET=1, numpy on CPU tensors). The runtime imports the kernel modules
long before a test sets the variable, so each kernel is kept as its Python function and handed to
`triton.jit` when it is first launched, under the setting of that moment.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # the CPU paths need no Triton; the kernels are then never compiled
    triton = libdevice = None
    tl = SimpleNamespace(constexpr=None)  # so `BLOCK: tl.constexpr` annotations still evaluate


def interpreting() -> bool:
    """True when Triton kernels run in the interpreter (numpy on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on `device`, or None when they can."""
    if triton is None:
        return "triton is not installed (pip install 'precipfast[triton]')"
    if device.type == "cuda" or interpreting():
        return None
    return (f"the Triton kernels run on CUDA tensors, got a {device.type} tensor (TRITON_INTERPRET=1 runs "
            "them in Triton's interpreter on the CPU, for tests)")


class LazyKernel:
    """A Triton kernel compiled (or interpreted) on first launch: `kernel[grid](*args)` as usual."""

    def __init__(self, fn, do_not_specialize=()):
        self.fn, self.do_not_specialize, self._jit = fn, tuple(do_not_specialize), None

    def __getitem__(self, grid):
        if self._jit is None:
            if triton is None:
                raise RuntimeError(unavailable_reason(torch.device("cpu")))
            self._jit = triton.jit(self.fn, do_not_specialize=self.do_not_specialize)
        return self._jit[grid]


def lazy_jit(do_not_specialize=()):
    """Decorator: `@lazy_jit(do_not_specialize=("step",))` in place of `@triton.jit(...)`.

    Integer arguments that change from call to call (noise step, key words) are kept out of Triton's
    specialisation on the value 1, so one compiled kernel serves every step."""
    return lambda fn: LazyKernel(fn, do_not_specialize)


# Launch options shared by the step kernels. fp fusion off: each multiply and add rounds on its own, as
# torch's element-wise ops do, so the kernels repeat the reference's arithmetic operation for operation
# (a contracted a + h * d would round once and differ in the last bit).
LAUNCH = {"num_warps": 4, "enable_fp_fusion": False}
BLOCK = 1024  # elements per program: 4 warps x 32 threads x 8 fp32
