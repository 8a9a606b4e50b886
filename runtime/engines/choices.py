"""The names a user may choose for an engine, checked without importing torch or any engine (the options
are built, and their errors said, before anything heavy loads): backends, precisions, devices."""
from __future__ import annotations

import re

from precipfast.errors import PrecipfastError

BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")      # the registry's rows (runtime/engines/backends.py)
AUTO_ORDER = {"cuda": ("tensorrt", "onnxruntime", "torch"), "cpu": ("onnxruntime", "torch")}
PRECISION_NAMES = ("fp32", "bf16", "fp16")               # the torch backend's denoiser precision
_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


class UnknownBackendError(PrecipfastError, ValueError):
    """A backend name that is not in the registry (a ValueError too: it is bad input)."""


def check_backend_name(name: str) -> str:
    """The name itself, or UnknownBackendError naming --backend and the registry."""
    if name != "auto" and name not in BACKEND_NAMES:
        raise UnknownBackendError(f"unknown backend {name!r} (--backend); available: {sorted(BACKEND_NAMES)} or 'auto'")
    return name


def check_precision(name: str) -> str:
    """The name itself, or ValueError naming --precision and the choices."""
    if name not in PRECISION_NAMES:
        raise ValueError(f"--precision must be one of {', '.join(PRECISION_NAMES)}, got {name!r}")
    return name


def check_device_name(name: str) -> str:
    """The name itself, or ValueError naming --device: auto, cpu, cuda or cuda:N."""
    m = _DEVICE.match(str(name))
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return str(name)
