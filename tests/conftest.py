"""Suite-wide fixtures: where the shared data lives, and a tiny two-stage bundle with random weights."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter. The variable must be set before anything
# imports triton.language (its helpers such as tl.zeros are jitted at import, in the mode set then), and
# this root conftest is imported before every test module (tests/benchmarks imports the kernels too).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from precipfast.config import EDMConfig, SamplerConfig, TransformConfig, UNetConfig, to_dict
from precipfast.denoiser import build_denoiser

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHIPPED = Path(__file__).resolve().parents[1] / "precipfast" / "bundles" / "default"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The test machine has 2 shared cores: two OpenMP threads fighting another process for one core
    run ~5x slower than one thread, and the tensors here are small."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data, or skip: real-data tests need the shared directory beside the checkout."""
    if not DATA.is_dir():
        pytest.skip(f"real-data test: {DATA} is absent")
    return DATA


@pytest.fixture(scope="session")
def shipped_bundle():
    """The bundle that ships in the package (trained on real radar)."""
    if not (SHIPPED / "manifest.json").is_file():
        pytest.skip(f"no shipped bundle at {SHIPPED}")
    return SHIPPED


@pytest.fixture
def shipped_with(shipped_bundle, tmp_path):
    """shipped_with(name, **entries) -> a copy of the shipped bundle whose correction stage's manifest entries are
    replaced by `entries` (None removes one), e.g. shipped_with("plain", amplitude=None)."""
    def make(name="b", **entries):
        copy = tmp_path / name
        shutil.copytree(shipped_bundle, copy)
        m = json.loads((copy / "manifest.json").read_text())
        for k, v in entries.items():
            if v is None:
                m["stages"]["correction"].pop(k, None)
            else:
                m["stages"]["correction"][k] = v
        (copy / "manifest.json").write_text(json.dumps(m))
        return copy
    return make


def _tiny_stage(seed, attn=(1,), kind="edm"):
    torch.manual_seed(seed)
    unet = UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=attn, channels_per_head=8)
    edm = EDMConfig(sigma_data=0.5, denoised_max=1.0, kind=kind)   # bounded like a trained stage (EDMConfig)
    den = build_denoiser(unet, edm)
    with torch.no_grad():  # EDM's zero init would make D = c_skip x: re-draw so F matters
        for p in den.parameters():
            p.normal_(0.0, 0.1)
    cfg = {"unet": to_dict(unet), "edm": to_dict(edm),
           "sampler": to_dict(SamplerConfig(num_steps=1 if kind == "crps" else 4, sigma_max=10.0))}
    return den.eval(), cfg


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Both stages, tiny random U-Nets, ONNX included (parity checked in tests/export). The fine stage has
    no attention: full-tile attention on 2 shared cores would dominate the suite's time."""
    from precipfast.export.bundle import write_bundle
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return write_bundle(out, {"correction": _tiny_stage(1), "downscaling": _tiny_stage(2, attn=())}, name="tiny-test",
                        model_version="0.0.1", scale_factor=10, pooling="max",
                        transform=to_dict(TransformConfig()), parity=False)


@pytest.fixture(scope="session")
def crps_bundle(tmp_path_factory):
    """tiny_bundle with a CRPS generator (one evaluation a member) as its correction stage."""
    from precipfast.export.bundle import write_bundle
    out = tmp_path_factory.mktemp("bundle") / "crps"
    return write_bundle(out, {"correction": _tiny_stage(1, kind="crps"), "downscaling": _tiny_stage(2, attn=())},
                        name="tiny-crps", model_version="0.0.1", scale_factor=10, pooling="max",
                        transform=to_dict(TransformConfig()), parity=False)


@pytest.fixture()
def coarse_file(tmp_path):
    """A precipfast input: 2 times of a 12 x 14 coarse field at 0.1 deg with a rain blob and a NaN."""
    from precipfast.runtime.files.input_writer import write_precipfast_input
    lat = 40.95 - 0.1 * np.arange(12)
    lon = -100.95 + 0.1 * np.arange(14)
    yy, xx = np.mgrid[0:12, 0:14]
    blob = 8.0 * np.exp(-((yy - 5) ** 2 + (xx - 7) ** 2) / 8.0)
    precip = np.stack([blob, 0.5 * blob]).astype(np.float32)
    precip[:, 0, 0] = np.nan
    return write_precipfast_input(tmp_path / "coarse.h5", precip, lat, lon,
                                  times=np.array([1_500_000_000, 1_500_001_800]))
