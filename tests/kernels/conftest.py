"""Kernel tests run the Triton kernels in Triton's interpreter (numpy, CPU tensors) wherever no GPU is
present, so CI checks them on the CPU. The kernels are handed to `triton.jit` on their first launch
(`kernels/_triton.py`), so setting the variable here takes effect even though the runtime imported the
kernel modules earlier in the session. With a GPU, the same tests run the compiled kernels on it."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def device():
    """Where the kernels run: the GPU when there is one, else the CPU under the interpreter."""
    pytest.importorskip("triton", reason="the Triton kernels need the 'triton' extra")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
