"""Every numeric option at and beyond its range (issue 16 item 5).

Beyond the range: `precipfast COMMAND --option VALUE` prints one line naming the option and exits 1 (2 for
click's own usage errors, such as a word where a number goes), and the run leaves nothing behind. At the
range: the options object accepts the bounds, and a real run at the lower bounds succeeds. An input whose
declared size cannot fit the memory budget is refused before anything is read.
"""
import dataclasses
import math
import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from precipfast.cli import main
from precipfast.options import JOB_OPTIONS, SEED_MAX, SampleOptions

SAMPLE_BASE = ["--backend", "torch", "--device", "cpu", "--quiet"]

# (option, value beyond the range, fragment of the one-line message)
SAMPLE_BEYOND = [
    ("--members", "0", "--members must be in [1, 10000]"),
    ("--members", "10001", "--members must be in [1, 10000]"),
    ("--steps", "1", "--steps must be in [2, 1000]"),
    ("--steps", "1001", "--steps must be in [2, 1000]"),
    ("--seed", "-1", "--seed must be in [0, 4294967295]"),
    ("--seed", str(2 ** 32), "--seed must be in [0, 4294967295]"),
    ("--seed", str(2 ** 64), "--seed must be in [0, 4294967295]"),
    ("--tile", "0", "--tile must be in [16, 4096] px"),
    ("--tile", "15", "--tile must be in [16, 4096] px"),
    ("--tile", "4097", "--tile must be in [16, 4096] px"),
    ("--overlap", "-1", "--overlap must be in [0, 4095] px"),
    ("--overlap", "128", "--overlap must be smaller than --tile (128 px)"),
    ("--max-batch", "0", "--max-batch must be in [1, 65536]"),
    ("--max-batch", "65537", "--max-batch must be in [1, 65536]"),
    ("--memory-gb", "0", "--memory-gb must be in [0.0001, 100000] GiB"),
    ("--memory-gb", "-2", "--memory-gb must be in [0.0001, 100000] GiB"),
    ("--memory-gb", "inf", "--memory-gb must be in [0.0001, 100000] GiB, got inf"),
    ("--memory-gb", "nan", "--memory-gb must be in [0.0001, 100000] GiB, got nan"),
    ("--memory-gb", "1e6", "--memory-gb must be in [0.0001, 100000] GiB"),
    ("--bbox", "abc", "--bbox must be a comma list of float values"),
    ("--bbox", "1,2,3", "--bbox must be S,N,W,E"),
    ("--bbox", "40,35,-100,-95", "bbox south 40 must be < north 35"),
    ("--stages", "bogus", "--stages must be a comma list of correction,downscaling"),
    ("--backend", "bogus", "unknown backend 'bogus' (--backend)"),
    ("--device", "gpu", "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("--precision", "fp64", "--precision must be one of fp32, bf16, fp16, got 'fp64'"),
]

OTHER_BEYOND = [
    ("validate", "--members", "1", "--members must be in [2, 10000]"),
    ("validate", "--steps", "1", "--steps must be in [2, 1000]"),
    ("validate", "--seed", "-1", "--seed must be in [0, 4294967295]"),
    ("validate", "--crop", "0", "--crop must be in [1, 100000] px"),
    ("validate", "--tile", "0", "--tile must be in [16, 4096] px"),
    ("validate", "--max-batch", "0", "--max-batch must be in [1, 65536]"),
    ("validate", "--memory-gb", "inf", "--memory-gb must be in [0.0001, 100000] GiB"),
    ("validate", "--frames", "a,b", "--frames must be a comma list of int values"),
    ("validate", "--stages", "correction", "--stages must include downscaling"),
    ("demo", "--members", "0", "--members must be in [1, 10000]"),
    ("demo", "--steps", "1", "--steps must be in [2, 1000]"),
    ("demo", "--seed", str(2 ** 64), "--seed must be in [0, 4294967295]"),
    ("demo", "--device", "cuda:x", "--device must be auto, cpu, cuda or cuda:N"),
    ("bench", "--members", "0", "--members must be in [1, 10000]"),
    ("bench", "--steps", "1", "--steps must be in [2, 1000]"),
    ("bench", "--max-batch", "0", "--max-batch must be in [1, 65536]"),
    ("bench", "--repeat", "0", "--repeat must be in [1, 10000]"),
    ("bench", "--what", "everything", "--what must be sample, backends or all"),
    ("bench", "--backend", "bogus", "unknown backend 'bogus' (--backend)"),
]

# nargs=2 options take two values.
PAIR_BEYOND = [
    ("bench", "--lr-hw", ("-5", "20"), "--lr-hw must be in [1, 10000] px, got -5"),
    ("bench", "--lr-hw", ("20", "10001"), "--lr-hw must be in [1, 10000] px, got 10001"),
    ("bench", "--hw", ("0", "0"), "--hw must be in [8, 4096] px, got 0"),
]

TRAIN_BEYOND = [
    ("--iterations", "0", "--iterations must be an integer in [1, 1000000000]"),
    ("--batch-size", "0", "--batch-size must be an integer in [1, 65536]"),
    ("--learning-rate", "0", "--learning-rate must be a finite number > 0"),
    ("--learning-rate", "nan", "--learning-rate must be a finite number > 0"),
    ("--learning-rate", "inf", "--learning-rate must be a finite number > 0"),
    ("--warmup-iterations", "-1", "--warmup-iterations must be an integer in [0, 1000000000]"),
    ("--ema-halflife-iterations", "0", "--ema-halflife-iterations must be a finite number > 0"),
    ("--model-channels", "6", "--model-channels (unet.model_channels) must be a positive multiple of 4"),
    ("--channel-mult", "1,0", "--channel-mult (unet.channel_mult) must be a non-empty list of ints in [1, 64]"),
    ("--channel-mult", "x", "--channel-mult must be a comma list of int values"),
    ("--num-blocks", "0", "--num-blocks (unet.num_blocks) must be in [1, 64]"),
    ("--attn-levels", "5", "--attn-levels (unet.attn_levels) must index levels 0..2"),
    ("--patch-hr", "15", "--patch-hr must be a positive multiple of scale_factor=10"),
    ("--patch-lr", "0", "--patch-lr must be an integer in [4, 4096]"),
    ("--val-every", "0", "--val-every must be an integer in [1, 1000000000]"),
    ("--checkpoint-every", "0", "--checkpoint-every must be an integer in [1, 1000000000]"),
    ("--seed", "-1", "--seed must be an integer in [0, 9223372036854775807]"),
    ("--threads", "-1", "--threads must be an integer in [0, 4096]"),
    ("--device", "tpu", "--device must be auto, cpu, cuda or cuda:N"),
]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res, fragment, code=1):
    assert res.exit_code == code, (res.exit_code, res.output)
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert fragment in lines[0], (fragment, lines[0])


def listing(d):
    return sorted(os.listdir(d))


@pytest.mark.parametrize("option,value,fragment", SAMPLE_BEYOND, ids=lambda v: str(v)[:24])
def test_sample_option_beyond_its_range(option, value, fragment, tiny_bundle, coarse_file, tmp_path):
    out = tmp_path / "out.h5"
    before = listing(tmp_path)
    one_line_error(run("sample", coarse_file, "-o", out, "--model", tiny_bundle, *SAMPLE_BASE, option, value),
                   fragment)
    assert listing(tmp_path) == before  # no output, no temporary


# Settings of the torch backend's CUDA path asked for where they cannot run: one line, nothing written.
CUDA_ONLY = [
    (["--precision", "fp16"], "--precision fp16 runs on CUDA only"),
    (["--cuda-graphs"], "--cuda-graphs needs a CUDA device; this run is on cpu"),
    (["--torch-compile"], "--torch-compile runs on CUDA only"),
]


@pytest.mark.parametrize("args,fragment", CUDA_ONLY, ids=lambda v: str(v)[:24])
def test_cuda_only_settings_on_the_cpu(args, fragment, tiny_bundle, coarse_file, tmp_path):
    out = tmp_path / "out.h5"
    before = listing(tmp_path)
    one_line_error(run("sample", coarse_file, "-o", out, "--model", tiny_bundle, *SAMPLE_BASE, *args), fragment)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("command,option,value,fragment", OTHER_BEYOND + PAIR_BEYOND, ids=lambda v: str(v)[:24])
def test_other_job_option_beyond_its_range(command, option, value, fragment, tmp_path):
    out = tmp_path / "out"
    values = value if isinstance(value, tuple) else (value,)
    extra = {"validate": ["--out", out], "demo": ["--out", out], "bench": ["--data", tmp_path / "none"]}[command]
    one_line_error(run(command, option, *values, *extra), fragment)
    assert listing(tmp_path) == []  # nothing written, not even the output folder


@pytest.mark.parametrize("option,value,fragment", TRAIN_BEYOND, ids=lambda v: str(v)[:24])
def test_train_option_beyond_its_range(option, value, fragment, tmp_path):
    out = tmp_path / "run"
    one_line_error(run("train", "--stage", "downscaling", "--out", out, "--data", tmp_path / "nodata",
                       option, value), fragment)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("args", [["--members", "abc"], ["--tile", "1.5"], ["--seed", "1e3"]])
def test_a_word_where_a_number_goes_is_clicks_usage_error(args, tiny_bundle, coarse_file, tmp_path):
    res = run("sample", coarse_file, "-o", tmp_path / "o.h5", "--model", tiny_bundle, *args)
    assert res.exit_code == 2 and f"Invalid value for '{args[0]}'" in res.output, res.output
    assert listing(tmp_path) == ["coarse.h5"]


@pytest.mark.parametrize("command", sorted(JOB_OPTIONS))
def test_every_bound_is_accepted(command):
    """Each numeric setting at its lower and at its upper bound builds (inclusive ranges)."""
    cls = JOB_OPTIONS[command]
    for f in dataclasses.fields(cls):
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        if lo is None:
            continue
        for v in (lo, hi):
            value = (v, v) if f.metadata["nargs"] == 2 else v
            extra = {"overlap": 0} if f.name == "tile" else {"tile": 4096} if f.name == "overlap" else {}
            cls(**{f.name: value, **extra})


def test_a_run_at_the_lower_bounds_and_the_largest_seed(tiny_bundle, coarse_file, tmp_path):
    out = tmp_path / "low.h5"
    res = run("sample", coarse_file, "-o", out, "--model", tiny_bundle, *SAMPLE_BASE, "--members", "1",
              "--steps", "2", "--tile", "16", "--overlap", "0", "--max-batch", "1", "--seed", SEED_MAX,
              "--memory-gb", "0.01")
    assert res.exit_code == 0, res.output
    with h5py.File(out, "r") as f:  # both time slices (the second keyed by seed + 2^32) are finite
        assert f["precip"].shape == (2, 1, 120, 140) and int(f.attrs["seed"]) == SEED_MAX
        assert np.isfinite(f["precip"][:, :, 10:, 10:]).all()


def test_declared_size_beyond_the_budget_is_refused_before_reading(tiny_bundle, tmp_path):
    """A (1, 150000, 150000) input is 84 GiB as float32: refused from its declared shape, nothing read."""
    src = tmp_path / "huge.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("precip", shape=(1, 150000, 150000), dtype="f4", chunks=(1, 512, 512))  # never written
        f["lat"] = 89.9995 - 0.001 * np.arange(150000)
        f["lon"] = -179.9995 + 0.001 * np.arange(150000)
    out = tmp_path / "o.h5"
    one_line_error(run("sample", src, "-o", out, "--model", tiny_bundle, *SAMPLE_BASE),
                   "the input field (1 x 150000 x 150000 float32) needs 83.8 GiB, more than the memory budget")
    assert listing(tmp_path) == ["huge.h5"]
    # A bbox that fits is read (and then refused for its 0.001 deg pixel, after the size check passed).
    one_line_error(run("sample", src, "-o", out, "--model", tiny_bundle, *SAMPLE_BASE, "--bbox", "40,40.05,-100,-99.95"),
                   "the model expects 0.1 deg")


def test_member_state_beyond_the_budget_is_refused_before_sampling(tiny_bundle, coarse_file, tmp_path):
    out = tmp_path / "o.h5"
    one_line_error(run("sample", coarse_file, "-o", out, "--model", tiny_bundle, *SAMPLE_BASE,
                       "--memory-gb", "0.0001"), "one member's sampler state (120 x 140 px")
    assert not out.exists()


def test_sample_options_refuse_nan_everywhere():
    for name in ("members", "steps", "tile", "max_batch", "memory_gb"):
        with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} must be"):
            SampleOptions(**{name: math.nan})
