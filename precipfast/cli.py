"""Command line: click commands only; the logic lives in the modules they call.

Every `PrecipfastError` becomes one line on stderr and exit code 1; `--debug` shows the traceback.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import click

from precipfast._version import __version__
from precipfast.config import DataConfig, TrainConfig, UNetConfig
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
@main.command()
@click.option("--stage", type=click.Choice(["correction", "downscaling"]), required=True)
@click.option("--data", "data_dir", default=default_of(ValidateOptions, "data"), show_default=True,
              help="Radar data directory.")
@click.option("--out", "out_dir", required=True, help="Checkpoint directory (config.json + safetensors).")
@click.option("--steps", default=default_of(TrainConfig, "steps"), show_default=True)
@click.option("--batch-size", default=default_of(TrainConfig, "batch_size"), show_default=True)
@click.option("--lr", default=default_of(TrainConfig, "lr"), show_default=True)
@click.option("--warmup-steps", default=default_of(TrainConfig, "warmup_steps"), show_default=True)
@click.option("--ema-halflife-steps", default=default_of(TrainConfig, "ema_halflife_steps"), show_default=True)
@click.option("--model-channels", default=default_of(UNetConfig, "model_channels"), show_default=True)
@click.option("--channel-mult", default=default_of(UNetConfig, "channel_mult"), show_default=True)
@click.option("--num-blocks", default=default_of(UNetConfig, "num_blocks"), show_default=True)
@click.option("--attn-levels", default=default_of(UNetConfig, "attn_levels"), show_default=True)
@click.option("--pooling", type=click.Choice(["max", "mean"]), default=default_of(DataConfig, "pooling"),
              show_default=True)
@click.option("--patch-hr", default=default_of(DataConfig, "patch_hr"), show_default=True)
@click.option("--patch-lr", default=default_of(DataConfig, "patch_lr"), show_default=True)
@click.option("--sigma-data", default="auto", show_default=True,
              help="EDM sigma_data; 'auto' = std of the stage's residual targets.")
@click.option("--val-every", default=default_of(TrainConfig, "val_every"), show_default=True)
@click.option("--checkpoint-every", default=default_of(TrainConfig, "checkpoint_every"), show_default=True)
@click.option("--seed", default=default_of(TrainConfig, "seed"), show_default=True)
@click.option("--threads", default=default_of(TrainConfig, "threads"), show_default=True,
              help="torch CPU threads (0 = all cores).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out.")
@click.option("--quiet", is_flag=True)
@_friendly
def train(stage, data_dir, out_dir, steps, batch_size, lr, warmup_steps, ema_halflife_steps, model_channels,
          channel_mult, num_blocks, attn_levels, pooling, patch_hr, patch_lr, sigma_data, val_every,
          checkpoint_every, seed, threads, device, resume, quiet):
    """Train one stage on real radar (correction: degraded coarse -> coarse; downscaling: coarse -> 1 km)."""
    import torch

    from precipfast.config import EDMConfig, SamplerConfig
    from precipfast.runtime.engines.choices import check_device_name
    from precipfast.train.data import PairDataset, residual_std
    from precipfast.train.loop import train as run_train

    # Every setting is checked before any data is read.
    data_cfg = DataConfig(pooling=pooling, patch_hr=patch_hr, patch_lr=patch_lr)
    unet_cfg = UNetConfig(model_channels=model_channels, channel_mult=parse_list(channel_mult, int, "--channel-mult"),
                          num_blocks=num_blocks, attn_levels=parse_list(attn_levels, int, "--attn-levels"),
                          cond_channels=1)
    train_cfg = TrainConfig(stage=stage, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                            ema_halflife_steps=ema_halflife_steps, val_every=val_every,
                            checkpoint_every=checkpoint_every, seed=seed, threads=threads)
    check_device_name(device)
    sd = None if sigma_data == "auto" else EDMConfig(sigma_data=parse_list(sigma_data, float, "--sigma-data")[0]).sigma_data
    if threads:
        torch.set_num_threads(threads)
    train_data = PairDataset(data_cfg, stage, "train", data_dir)
    val_data = PairDataset(data_cfg, stage, "val", data_dir)
    if sd is None:
        sd = residual_std(train_data, n=256, generator=torch.Generator().manual_seed(seed))
        click.echo(f"sigma_data (std of {stage} residuals) = {sd:.4f}", err=True)
    summary = run_train(train_cfg, data_cfg, unet_cfg, EDMConfig(sigma_data=round(sd, 4)), SamplerConfig(),
                        train_data, val_data, out_dir, device=device, resume=resume, progress=not quiet)
    last = summary["history"][-1] if summary["history"] else {}
    click.echo(json.dumps({"out": str(out_dir), "step": summary["step"], **last}))


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
    """Run the shipped model on the real IMERG field shipped in the package: writes an output file and a
    quick-look PNG."""
    from precipfast.jobs.demo import run_demo
    click.echo(json.dumps(run_demo(_build(DemoOptions, settings))))


# ---------------------------------------------------------------------------- validate
@main.command()
@options_of(ValidateOptions)
@_friendly
def validate(**settings):
    """Verify the ensemble on held-out real radar: CRPS, MAE/RMSE/correlation, spread/skill and the
    2-20 km power spectrum against bilinear upsampling. Prints the metrics as JSON."""
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
    bilinear/nearest of the input and bilinear of the mean-pooled truth. Prints a table."""
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
