"""ONNX export of D(x, sigma, cond): names, dynamic axes, and onnxruntime parity at awkward shapes."""
import numpy as np
import onnx
import pytest
import torch

from precipfast.export.onnx import export_onnx
from precipfast.runtime.engines.bundle import onnx_io_shapes
from precipfast.runtime.engines.onnxruntime_backend import ort_session
from precipfast.runtime.engines.parity import PARITY_TOL_REL


def test_graph_has_named_dynamic_io(tiny_onnx):
    onnx.checker.check_model(str(tiny_onnx), full_check=True)
    assert onnx_io_shapes(tiny_onnx) == {
        "x": ["batch", 1, "height", "width"], "sigma": ["batch"],
        "cond": ["batch", 2, "height", "width"], "denoised": ["batch", 1, "height", "width"]}


@pytest.mark.parametrize("batch,hw", [(1, (40, 56)), (3, (40, 56)), (8, (40, 56)), (3, (37, 53)),
                                      (2, (21, 8)), (1, (1, 1))])
def test_onnxruntime_matches_torch(tiny, tiny_onnx, batch, hw):
    """Odd sizes need the edge padding to a multiple of 2: it must be computed in the graph."""
    g = torch.Generator().manual_seed(batch * 100 + hw[0])
    x = torch.randn(batch, 1, *hw, generator=g) * 3
    sigma = torch.logspace(np.log10(0.002), np.log10(80.0), batch) if batch > 1 else torch.tensor([0.7])
    cond = torch.randn(batch, 2, *hw, generator=g)
    with torch.inference_mode():
        ref = tiny(x, sigma, cond)
        skip_only = tiny.sigma_data ** 2 / (sigma ** 2 + tiny.sigma_data ** 2)
    out = ort_session(tiny_onnx, threads=1).run(None, {"x": x.numpy(), "sigma": sigma.numpy(),
                                                        "cond": cond.numpy()})[0]
    assert out.shape == (batch, 1, *hw)
    rel = np.abs(out - ref.numpy()).max() / np.abs(ref.numpy()).max()
    assert rel < PARITY_TOL_REL
    # The network term matters: D is far from c_skip x, so agreement is not trivial.
    assert (ref - skip_only.view(-1, 1, 1, 1) * x).abs().max() > 0.05


def test_export_refuses_wrong_channel_count(tiny, tmp_path):
    with pytest.raises(ValueError, match="cond_channels=2.*got cond_channels=3"):
        export_onnx(tiny, tmp_path / "bad.onnx", cond_channels=3)
    assert not (tmp_path / "bad.onnx").exists()
