"""Members recorded before the code moved into its rooms (issue 27): the same input, seed and bundle give the
same members bit for bit through the public API, on every backend and tiling recorded. Conv kernels differ
between CPU instruction sets, so on a machine of another capability than the recording's the members are held
to float32 round-off instead (the noise itself is integer Philox and exact everywhere: tests/test_noise.py).

Re-record (only when a change is meant to change members, and say so in CHANGELOG.md):
    python tests/test_golden_members.py
"""
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import precipfast

GOLDEN = Path(__file__).parent / "data" / "golden_members.npz"
CASES = {  # name: (backend, sample settings)
    "torch": ("torch", {}),
    "onnxruntime": ("onnxruntime", {}),
    "torch_tiled": ("torch", {"tile": 64, "overlap": 16}),
}
BBOX = (39.25, 40.45, -100.85, -99.55)   # a crop inside the file: the reader adds the correction's context


def _input(path: Path) -> Path:
    """A 16 x 18 coarse field at 0.1 deg: smooth rain with a cell and one missing pixel, fixed seed."""
    rng = np.random.default_rng(27)
    yy, xx = np.mgrid[0:16, 0:18]
    z = rng.standard_normal((16, 18)).cumsum(0).cumsum(1) / 20.0
    precip = (1.5 * np.exp(0.3 * (z - z.mean())) + 9.0 * np.exp(-((yy - 6) ** 2 + (xx - 11) ** 2) / 6.0))
    precip = precip.astype(np.float32)[None]
    precip[0, 2, 3] = np.nan
    with h5py.File(path, "w") as f:
        f["precip"] = precip
        f["lat"] = (40.95 - 0.1 * np.arange(16)).astype(np.float64)
        f["lon"] = (-100.95 + 0.1 * np.arange(18)).astype(np.float64)
    return path


def _members(tmp: Path, backend: str, settings: dict) -> dict:
    torch.set_num_threads(1)
    pipe = precipfast.Pipeline.from_bundle(backend=backend, device="cpu", **settings)
    field = precipfast.read_input(_input(tmp / "in.h5"), bbox=BBOX)
    res = pipe.sample(field, members=2, steps=3, seed=11)
    return {"precip": np.asarray(res["precip"], np.float32), "corrected_lr": np.asarray(res["corrected_lr"], np.float32)}


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_members_match_the_recording(case, tmp_path, shipped_bundle):
    rec = np.load(GOLDEN)
    out = _members(tmp_path, *CASES[case])
    assert out["precip"].shape == tuple(rec[f"{case}/shape"])
    if str(rec["cpu_capability"]) == torch.backends.cpu.get_cpu_capability():
        assert _sha(out["precip"]) == str(rec[f"{case}/precip_sha256"]), f"{case}: members changed"
        assert _sha(out["corrected_lr"]) == str(rec[f"{case}/corrected_sha256"]), f"{case}: corrected field changed"
    np.testing.assert_allclose(out["precip"][..., ::9, ::9], rec[f"{case}/precip_sub"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["corrected_lr"], rec[f"{case}/corrected_lr"], rtol=1e-4, atol=1e-4)


def _record() -> None:
    import tempfile
    data = {"cpu_capability": np.array(torch.backends.cpu.get_cpu_capability())}
    with tempfile.TemporaryDirectory() as tmp:
        for case, (backend, settings) in sorted(CASES.items()):
            out = _members(Path(tmp), backend, settings)
            data.update({f"{case}/shape": np.array(out["precip"].shape),
                         f"{case}/precip_sha256": np.array(_sha(out["precip"])),
                         f"{case}/corrected_sha256": np.array(_sha(out["corrected_lr"])),
                         f"{case}/precip_sub": out["precip"][..., ::9, ::9],
                         f"{case}/corrected_lr": out["corrected_lr"]})
            print(case, out["precip"].shape, _sha(out["precip"])[:16], float(np.nanmean(out["precip"])))
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **data)


if __name__ == "__main__":
    _record()
