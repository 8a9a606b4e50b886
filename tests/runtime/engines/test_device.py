"""Device names (runtime/engines/device.py): resolved once, in one place, keeping the CUDA index."""
import pytest
import torch

from precipfast.runtime.engines.device import resolve_device


def test_device_resolution_keeps_the_cuda_index(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda:1")) == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match="--device must be auto, cpu, cuda or cuda:N, got 'cpu:1'"):
        resolve_device("cpu:1")
