"""Device names: "auto", "cpu", "cuda" or "cuda:N", resolved once to a torch.device that keeps its index."""
from __future__ import annotations

import torch

from precipfast.choices import check_device_name


def resolve_device(name) -> torch.device:
    """`name` as a torch.device: "auto" is the current CUDA device when torch sees one, else the CPU;
    "cuda:1" stays "cuda:1". Refuses a CUDA device that this machine does not have."""
    if isinstance(name, torch.device):
        name = str(name)
    name = check_device_name(name)
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} requested but torch sees no CUDA GPU; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev
