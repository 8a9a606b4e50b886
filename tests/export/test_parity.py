"""parity_report: passes for a faithful export, fails loudly for a wrong one."""
import copy

import torch

from precipfast.runtime.engines.parity import PARITY_TOL_REL, SIGMA_PROBE, parity_report


def test_faithful_export_passes(tiny, tiny_onnx):
    rep = parity_report(tiny, tiny_onnx, batch_sizes=(1, 3, 8), hw_list=((37, 53),), seed=3)
    assert rep["passed"] and rep["tolerance_rel"] == PARITY_TOL_REL
    assert [(c["batch"], c["hw"]) for c in rep["cases"]] == [(1, [37, 53]), (3, [37, 53]), (8, [37, 53])]
    for c in rep["cases"]:
        assert c["sigmas"] == sorted(SIGMA_PROBE)  # every case spans 0.002 .. 80
        assert c["max_rel_err"] < PARITY_TOL_REL
        assert 0 < c["torch_fp32_rel_err"] < 1e-5  # float32 rounding floor, measured against float64
    assert rep["max_rel_err"] == max(c["max_rel_err"] for c in rep["cases"])


def test_real_inputs_are_reported(tiny, tiny_onnx):
    x, cond = torch.randn(2, 1, 24, 30), torch.randn(2, 2, 24, 30)
    rep = parity_report(tiny, tiny_onnx, batch_sizes=(), hw_list=(), real_inputs=[(x, torch.tensor([0.1, 9.0]), cond)])
    assert [c["kind"] for c in rep["cases"]] == ["real"] and rep["cases"][0]["sigmas"] == [0.1, 9.0]
    assert rep["passed"]


def test_wrong_export_fails(tiny, tiny_onnx):
    """Weights that differ by 1% must blow the tolerance by orders of magnitude."""
    other = copy.deepcopy(tiny)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.01)
    rep = parity_report(other, tiny_onnx, batch_sizes=(3,), hw_list=((20, 24),))
    assert not rep["passed"] and rep["max_rel_err"] > 100 * PARITY_TOL_REL
