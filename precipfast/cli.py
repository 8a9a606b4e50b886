"""Command line: click commands only; the logic lives in the modules they call.

Every `PrecipfastError` becomes one line on stderr and exit code 1; `--debug` shows the traceback.

Each command imports its job inside its function, the one place in the package that does so
(tests/test_layering.py): `precipfast --help`, `COMMAND --help` and click's usage errors then answer without
importing torch, the jobs or the engines (about 0.2 s instead of several).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
import typing
from pathlib import Path

import click

from precipfast._version import __version__
from precipfast.choices import check_device_name
from precipfast.config import KINDS, RENAMED, STAGES, DataConfig, SamplerConfig, TrainConfig, UNetConfig
from precipfast.errors import PrecipfastError
from precipfast.options import (
    BenchOptions,
    DemoOptions,
    SampleOptions,
    ValidateOptions,
    flag_of,
    fmt_number,
    parse_list,
)
from precipfast.train.recipe_configs import CORRECTION_KIND, DESIGNS, configs


def _friendly(fn):
    """Every way a command ends badly is one line on stderr (`--debug`: the traceback instead):
    expected failures -> exit 1; SIGINT/SIGTERM/SIGHUP -> cleanup, then exit 128 + signo (130/143/129);
    anything unexpected -> exit 1 with its type, asking for --debug. Click's usage errors stay exit 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from precipfast.runtime.files.signals import Interrupted, signal_name, signals_as_exceptions
        ctx = click.get_current_context()
        debug = ctx.find_root().params.get("debug")
        with signals_as_exceptions():
            try:
                return fn(*args, **kwargs)
            except click.ClickException:
                raise
            except KeyboardInterrupt as e:  # Interrupted (TERM/HUP) or a plain Ctrl-C
                if debug:
                    raise
                signo = e.signo if isinstance(e, Interrupted) else 2
                click.echo(f"Error: interrupted by {signal_name(signo)}; stopped, nothing partial was kept",
                           err=True)
                ctx.exit(128 + signo)
            except (PrecipfastError, ValueError, OSError) as e:
                if debug:
                    raise
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise click.ClickException(msg) from None
            except Exception as e:  # a bug: still one line, and the way to the traceback
                if debug:
                    raise
                first = str(e).splitlines()[0] if str(e) else ""
                raise click.ClickException(f"unexpected {type(e).__name__}: {first} (rerun with "
                                           f"`precipfast --debug ...` for the traceback)") from None
    return wrapper


def options_of(cls):
    """Click options generated from a job's options dataclass (precipfast/options.py): one flag per field,
    same name, default and help; the command gets them as keyword arguments of the field names."""
    def deco(fn):
        for f in reversed(dataclasses.fields(cls)):
            m = f.metadata
            decls = [flag_of(f), f.name]
            if m["kind"] is bool:
                fn = click.option(*decls, is_flag=True, default=f.default, help=m["help"])(fn)
            else:
                bounds = f" Range {fmt_number(m['lo'])}..{fmt_number(m['hi'])}{' ' + m['unit'] if m['unit'] else ''}." \
                    if m["lo"] is not None else ""
                fn = click.option(*decls, type=m["kind"], nargs=m["nargs"], default=f.default,
                                  show_default=f.default is not None, help=m["help"] + bounds)(fn)
        return fn
    return deco


def default_of(cls, name: str):
    """A dataclass field's default: the one definition a hand-written flag takes (train)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else value


def _build(cls, kwargs: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kwargs.items() if k in names})


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="precipfast")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug):
    """precipfast: residual diffusion ensembles that correct and downscale satellite rain (IMERG 10 km)
    to 1 km. Run `precipfast COMMAND --help` for each command."""


# ---------------------------------------------------------------------------- train
# `train` takes the recipe's configs of a stage (train/recipe_configs.py) and one flag per field of them,
# named as the field (--batch-size <-> batch_size), default None: the recipe's value. Left out: the stage
# (its own flag), the channels the data fixes, nested configs (transform, degradation) and the sampler's
# settings other than the validation ensemble's schedule.
TRAIN_LEFT_OUT = ("stage", "in_channels", "cond_channels", "out_channels")
TRAIN_SAMPLER = ("num_steps", "sigma_max", "rho")
RECIPE = {design: configs(*design) for design in DESIGNS}


def _train_fields() -> list:
    """(config key, field, type) of every setting `train` takes as a flag."""
    out = []
    for key, cls in (("train", TrainConfig), ("unet", UNetConfig), ("data", DataConfig), ("sampler", SamplerConfig)):
        hints = typing.get_type_hints(cls)
        out += [(key, f, hints[f.name]) for f in dataclasses.fields(cls)
                if (f.name in TRAIN_SAMPLER if cls is SamplerConfig else f.name not in TRAIN_LEFT_OUT)
                and (hints[f.name] in (int, float, str, bool) or typing.get_origin(hints[f.name]) is tuple)]
    return out


def _as_setting(value, f: dataclasses.Field, kind):
    """A flag's value as its field holds it: a list from 'A,B,..' ('none': empty), anything else as given."""
    if typing.get_origin(kind) is not tuple:
        return value
    if value.strip().lower() == "none":
        return ()
    items = parse_list(value, typing.get_args(kind)[0], flag_of(f))
    if not items:
        raise ValueError(f"{flag_of(f)} must be a comma list of {typing.get_args(kind)[0].__name__} values or "
                         f"'none', got {value!r}")
    return items


def _comments(cls) -> dict:
    """Each field's comment in precipfast/config.py (beside it, and the comment lines under it): the one
    description of a setting, shown as its flag's help."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, name = {}, None
    for line in lines:
        field_line, more = re.match(r"    (\w+): [^#]*#\s*(.*)$", line), re.match(r"\s{8,}#\s*(.*)$", line)
        if field_line:
            name, out[field_line[1]] = field_line[1], field_line[2]
        elif more and name:
            out[name] += ("" if out[name].endswith("-") else " ") + more[1]
        else:
            name = None
    return out


def _recipe_note(key: str, name: str) -> str:
    """"Default: the recipe's (...)": a setting's value in the recipe, per stage and correction kind."""
    def show(v):
        return (",".join(map(str, v)) or "none") if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else v
    down = show(getattr(RECIPE["downscaling", None][key], name))
    kinds: dict = {}
    for (stage, kind), c in RECIPE.items():
        if stage == "correction":
            kinds.setdefault(show(getattr(c[key], name)), []).append(kind)
    if list(kinds) == [down]:
        return f"Default: the recipe's ({down})"
    corr = ", ".join(f"{v} (kind {', '.join(k)})" for v, k in kinds.items()) if len(kinds) > 1 else next(iter(kinds))
    return f"Default: the recipe's (downscaling {down}, correction {corr})"


def _refuse_renamed(ctx, param, value):
    """An old flag of `train` (config.RENAMED): a usage error naming the new one."""
    if value is not None:
        why = "optimiser iterations; --steps means sampler steps elsewhere" if "steps" in param.name else \
            "lr means low resolution elsewhere"
        raise click.UsageError(f"{param.opts[0]} is now --{RENAMED[TrainConfig][param.name].replace('_', '-')} "
                               f"({why})", ctx)


def train_settings(fn):
    """Click options generated from the fields of the configs the recipe fills (TrainConfig, UNetConfig,
    DataConfig, and the sampler's TRAIN_SAMPLER), default None = the recipe's; the command gets them as
    keyword arguments of the field names (a list as its text). Old names (config.RENAMED) are refused with
    the new one."""
    notes = {cls: _comments(cls) for cls in (TrainConfig, UNetConfig, DataConfig, SamplerConfig)}
    owner = {"train": TrainConfig, "unet": UNetConfig, "data": DataConfig, "sampler": SamplerConfig}
    for key, f, kind in reversed(_train_fields()):
        what = notes[owner[key]].get(f.name, "").rstrip(".")
        what = ("Validation sampler, kept in the checkpoint: " + what) if key == "sampler" else what
        listed = typing.get_origin(kind) is tuple
        fn = click.option(flag_of(f), f.name, type=str if listed else kind, default=None,
                          metavar="A,B,..|none" if listed else None,
                          help=f"{what[:1].upper() + what[1:]}{'. ' if what else ''}{_recipe_note(key, f.name)}.")(fn)
    for old in RENAMED[TrainConfig]:
        fn = click.option("--" + old.replace("_", "-"), old, hidden=True, is_eager=True, expose_value=False,
                          callback=_refuse_renamed)(fn)
    return click.option("--sigma-data", hidden=True, is_eager=True, expose_value=False, callback=_refuse_gone)(fn)


def _refuse_gone(ctx, param, value):
    """--sigma-data of the old `train`: sigma_data is now always measured, as the recipe did."""
    if value is not None:
        raise click.UsageError("--sigma-data is gone: train measures sigma_data on the stage's own training "
                               "targets (the recipe's rule, written into the checkpoint)", ctx)


@main.command()
@click.option("--stage", type=click.Choice(STAGES), required=True)
@click.option("--out", required=True, help="Checkpoint directory (config.json + safetensors).")
@click.option("--kind", type=click.Choice(KINDS), default=None,
              help=f"The correction stage's model (default: the recipe's, {CORRECTION_KIND}).")
@click.option("--mean", default=None, metavar="CHECKPOINT",
              help="--kind mean+edm: the regression checkpoint whose network is the frozen mean (CorrDiff).")
@click.option("--init", default=None, metavar="CHECKPOINT",
              help="--kind crps: start from this regression checkpoint's network (then train all of it).")
@click.option("--data", default=default_of(ValidateOptions, "data"), show_default=True, help="Radar data directory.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@train_settings
@_friendly
def train(stage, out, kind, mean, init, data, device, resume, quiet, **settings):
    """Train one stage on real radar with the shipped model's recipe (correction: degraded coarse -> coarse;
    downscaling: coarse -> 1 km). Each setting given replaces the recipe's value for the stage."""
    check_device_name(device)
    fields = {f.name: (f, hint) for _, f, hint in _train_fields()}
    overrides = {name: _as_setting(value, *fields[name]) for name, value in settings.items() if value is not None}
    from precipfast.train.recipe import run  # torch: after the flags are checked
    summary = run(stage, out, kind=kind, mean=mean, init=init, overrides=overrides, data_dir=data, device=device,
                  resume=resume, progress=not quiet)
    click.echo(json.dumps({"out": str(out), "stage": stage, "iterations": summary["step"],
                           "sigma_data": summary["edm"]["sigma_data"], "denoised_max": summary["edm"]["denoised_max"],
                           "last_validation": summary["history"][-1] if summary["history"] else {}}))


# ---------------------------------------------------------------------------- export
@main.command()
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, help="Bundle directory to write.")
@click.option("--name", default="precipfast-imerg-mrms", show_default=True)
@click.option("--model-version", default="0.1.0", show_default=True)
@click.option("--overwrite", is_flag=True)
@_friendly
def export(checkpoints, out_dir, name, model_version, overwrite):
    """Export trained stage checkpoints to a bundle: manifest.json, safetensors, ONNX, parity report."""
    from precipfast.export.bundle import export_checkpoints
    path = export_checkpoints(list(checkpoints), out_dir, name=name, model_version=model_version,
                              overwrite=overwrite)
    report = Path(path) / "parity.json"
    if report.is_file():
        click.echo(report.read_text(), err=True)
    click.echo(str(path))


# ---------------------------------------------------------------------------- sample
@main.command()
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", default=None, help="Output HDF5 (default: INPUT stem + '_ens.h5' here).")
@options_of(SampleOptions)
@_friendly
def sample(input_path, output, **settings):
    """Sample a 1 km ensemble from a coarse precipitation file (precipfast HDF5 or IMERG HDF5)."""
    from precipfast.jobs.sample import run_sample
    opts = _build(SampleOptions, settings)
    if output is None:
        output = Path(input_path).stem + "_ens.h5"
    click.echo(json.dumps(run_sample(input_path, output, opts)))


# ---------------------------------------------------------------------------- info
@main.command()
@click.argument("path", required=False)
@click.option("--backends", "show_backends", is_flag=True, help="List backends and why any is unavailable.")
@_friendly
def info(path, show_backends):
    """Print a bundle's or an output file's metadata (default: the shipped bundle) and the backends."""
    from precipfast.jobs.info import describe
    click.echo(json.dumps(describe(path, show_backends), indent=2, default=str))


# ---------------------------------------------------------------------------- demo
@main.command()
@options_of(DemoOptions)
@_friendly
def demo(**settings):
    """Run the shipped model on the demo field (a real IMERG crop beside ../shared/data, a synthetic field
    elsewhere): writes the input, an output file and a quick-look PNG."""
    from precipfast.jobs.demo import run_demo
    click.echo(json.dumps(run_demo(_build(DemoOptions, settings))))


# ---------------------------------------------------------------------------- validate
@main.command()
@options_of(ValidateOptions)
@_friendly
def validate(**settings):
    """Sample held-out radar days the model never trained on and score them: fair CRPS, MAE/RMSE/correlation,
    spread/skill and the 2-20 km power spectrum against bilinear upsampling. Prints the metrics as JSON.
    (`evaluate` scores an ensemble you sampled against your own truth instead.)"""
    from precipfast.jobs.validate import summary
    from precipfast.jobs.validate import validate as run_validate
    opts = _build(ValidateOptions, settings)
    progress = None if opts.quiet else (lambda msg: click.echo(msg, err=True))
    click.echo(json.dumps(summary(run_validate(opts, progress=progress)), indent=2))


# ---------------------------------------------------------------------------- evaluate
@main.command()
@click.argument("ensemble_path", metavar="ENSEMBLE")
@click.option("--truth", "truth_path", required=True, help="1 km truth file on the ensemble's grid (or larger).")
@click.option("--input", "input_path", default=None,
              help="The coarse input (default: the file recorded in ENSEMBLE, refused if it changed).")
@click.option("--variable", default=None, help="Dataset path of the input's precipitation, when not detected.")
@click.option("--truth-variable", default=None, help="Dataset path of the truth's precipitation, when not detected.")
@click.option("--json", "json_path", default=None, help="Also write every score as JSON here.")
@click.option("--plots", "plots_dir", default=None, help="Folder for verification.png.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@_friendly
def evaluate(ensemble_path, truth_path, input_path, variable, truth_variable, json_path, plots_dir, quiet):
    """Verify an ensemble written by `sample` against your own 1 km truth: fair CRPS, MAE/RMSE of the mean,
    bias, correlation, spread/skill, rank histogram, power spectra, fractions skill score, each beside
    bilinear/nearest of the input and bilinear of the mean-pooled truth. Prints a table. (`validate` samples
    and scores the held-out radar days instead.)"""
    from precipfast.verify.evaluate import format_table, run
    progress = None if quiet else (lambda msg: click.echo(msg, err=True))
    result = run(ensemble_path, truth_path, json_path=json_path, plots_dir=plots_dir, input_path=input_path,
                 variable=variable, truth_variable=truth_variable, progress=progress)
    click.echo(format_table(result))


# ---------------------------------------------------------------------------- bench
@main.command()
@options_of(BenchOptions)
@_friendly
def bench(**settings):
    """Benchmarks as JSON lines on stdout: batched runtime vs a plain one-member-at-a-time PyTorch loop
    (same weights, same run), and denoiser throughput per backend against the machine's matmul rate."""
    from precipfast.benchmarks._emit import emit
    from precipfast.runtime.engines.bundle import default_bundle_path
    from precipfast.runtime.engines.device import resolve_device
    opts = _build(BenchOptions, settings)
    bundle = opts.model or default_bundle_path()
    device = str(resolve_device(opts.device))
    if opts.what in ("sample", "all"):
        from precipfast.benchmarks.bench_sample import bench as bench_sample
        for rec in bench_sample(bundle, lr_hw=opts.lr_hw, members=opts.members, steps=opts.steps, seed=opts.seed,
                                backend=opts.backend, device=device, data_dir=opts.data):
            emit(rec)
    if opts.what in ("backends", "all"):
        from precipfast.benchmarks.bench_backends import bench as bench_backends
        bench_backends(bundle, None, opts.max_batch, opts.hw, opts.repeat, device)  # emits its own lines


if __name__ == "__main__":  # pragma: no cover
    main()
