"""Job options (precipfast/options.py): one default per setting, shared by the CLI and the Python API;
ranges checked once."""
import dataclasses

import pytest

from precipfast.cli import TRAIN_LEFT_OUT, TRAIN_SAMPLER, main
from precipfast.config import DataConfig, SamplerConfig, TrainConfig, UNetConfig
from precipfast.options import JOB_OPTIONS, SampleOptions, ValidateOptions, flag_of

# The train command's flags come from the training configs (one definition: the dataclass field).
TRAIN_CONFIGS = (TrainConfig, DataConfig, UNetConfig, SamplerConfig)


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


def test_every_train_setting_is_a_flag_defaulting_to_the_recipe():
    """train's flags are generated from the fields of the configs the recipe fills (one name per setting),
    default None (the recipe's value, which the help states); old names are refused."""
    params = {p.name: p for p in main.commands["train"].params}
    checked = 0
    for cls in TRAIN_CONFIGS:
        for f in dataclasses.fields(cls):
            if f.name in TRAIN_LEFT_OUT or dataclasses.is_dataclass(f.default_factory) or \
                    (cls is SamplerConfig and f.name not in TRAIN_SAMPLER):
                continue
            p = params[f.name]
            assert p.opts == [flag_of(f)] and p.default is None and "Default: the recipe's (" in p.help, f.name
            checked += 1
    assert checked >= 30
    assert "(downscaling 2500, correction 1500)" in params["iterations"].help
    assert {"steps", "lr", "warmup_steps", "ema_halflife_steps"} <= {p.name for p in params.values() if p.hidden}


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
