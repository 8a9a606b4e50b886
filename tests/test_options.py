"""Job options (precipfast/options.py): one default per setting, shared by the CLI and the Python API;
ranges checked once."""
import dataclasses

import pytest

from precipfast.cli import main
from precipfast.config import DataConfig, TrainConfig, UNetConfig
from precipfast.options import JOB_OPTIONS, SampleOptions, ValidateOptions, flag_of

# The train command's flags come from the training configs (one definition: the dataclass field).
TRAIN_CONFIGS = (TrainConfig, DataConfig, UNetConfig)


def _as_field_value(cls, name, cli_default):
    """A CLI default in the form the dataclass holds it (comma lists and nargs pairs are tuples)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    want = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(want, tuple) and isinstance(cli_default, str):
        return tuple(type(want[0])(v) for v in cli_default.split(",")), want
    if isinstance(want, tuple):
        return tuple(cli_default), want
    return cli_default, want


@pytest.mark.parametrize("command", sorted(JOB_OPTIONS))
def test_every_job_flag_has_the_options_default(command):
    cls = JOB_OPTIONS[command]
    params = {p.name: p for p in main.commands[command].params if isinstance(p, type(main.params[0]))}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) <= set(params), f"{command} lacks flags for {set(fields) - set(params)}"
    for name, f in fields.items():
        assert params[name].opts[0] == flag_of(f)
        got, want = _as_field_value(cls, name, params[name].default)
        assert got == want, (command, name, got, want)
    # Built from the defaults alone, the options object parses them (e.g. validate's "0,17,35" frames).
    cls()


def test_every_train_flag_has_the_config_default():
    checked = 0
    for p in main.commands["train"].params:
        owner = next((c for c in TRAIN_CONFIGS if p.name in {f.name for f in dataclasses.fields(c)}), None)
        if owner is None or p.required:
            continue
        got, want = _as_field_value(owner, p.name, p.default)
        assert got == want, (p.name, got, want)
        checked += 1
    assert checked >= 16  # every training setting the CLI exposes, checkpoint_every included
    assert TrainConfig().checkpoint_every == 250


def test_shared_settings_have_one_default():
    s, v = SampleOptions(), ValidateOptions()
    for name in ("steps", "seed", "backend", "device", "stages", "tile", "overlap", "max_batch", "memory_gb"):
        assert getattr(s, name) == getattr(v, name), name


def test_options_are_checked_once_when_built_and_when_replaced():
    with pytest.raises(ValueError, match=r"--tile must be in \[16, 4096\] px, got 0"):
        SampleOptions(tile=0)
    with pytest.raises(ValueError, match=r"--overlap must be smaller than --tile \(64 px\), got 64"):
        SampleOptions(tile=64, overlap=64)
    with pytest.raises(ValueError, match=r"--steps must be in \[2, 1000\], got 1"):
        SampleOptions().replace(steps=1)
    assert SampleOptions(stages="downscaling,correction").stages == ("correction", "downscaling")
    assert SampleOptions(bbox="35,40,-100,-95").bbox == (35.0, 40.0, -100.0, -95.0)
