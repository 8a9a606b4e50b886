"""What a user chooses by name or number, checked without importing torch (the options are built, and their
errors said, before anything heavy loads): backends, precisions, devices, a bounding box."""
from __future__ import annotations

import re

from precipfast.errors import InputFormatError, PrecipfastError

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


def check_bbox(bbox):
    """(south, north, west, east) as floats, or None; refuses malformed boxes."""
    if bbox is None:
        return None
    try:
        s, n, w, e = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise InputFormatError(f"bbox must be 4 numbers (south, north, west, east) in degrees, got {bbox!r}") from None
    if not (-90 <= s < n <= 90):
        raise InputFormatError(f"bbox south {s:g} must be < north {n:g}, both within [-90, 90] degrees")
    if not (-180 <= w < e <= 180):
        raise InputFormatError(f"bbox west {w:g} must be < east {e:g}, both within [-180, 180] degrees "
                               f"(boxes across the antimeridian are not supported)")
    return s, n, w, e
