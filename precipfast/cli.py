"""Command line: click commands only; the logic lives in the modules they call.

Every `PrecipfastError` becomes one line on stderr and exit code 1; `--debug` shows the traceback.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from precipfast._version import __version__
from precipfast.config import DEFAULT_OVERLAP, DEFAULT_TILE
from precipfast.errors import PrecipfastError


def _friendly(fn):
    """Every way a command ends badly is one line on stderr (`--debug`: the traceback instead):
    expected failures -> exit 1; SIGINT/SIGTERM/SIGHUP -> cleanup, then exit 128 + signo (130/143/129);
    anything unexpected -> exit 1 with its type, asking for --debug. Click's usage errors stay exit 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from precipfast.runtime.signals import Interrupted, signal_name, signals_as_exceptions
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


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip() != "")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="precipfast")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug):
    """precipfast: residual diffusion ensembles that correct and downscale satellite rain (IMERG 10 km)
    to 1 km. Run `precipfast COMMAND --help` for each command."""


# ---------------------------------------------------------------------------- train
@main.command()
@click.option("--stage", type=click.Choice(["correction", "downscaling"]), required=True)
@click.option("--data", "data_dir", default="../shared/data", show_default=True, help="Radar data directory.")
@click.option("--out", "out_dir", required=True, help="Checkpoint directory (config.json + safetensors).")
@click.option("--steps", default=2000, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--warmup-steps", default=100, show_default=True)
@click.option("--ema-halflife-steps", default=200.0, show_default=True)
@click.option("--model-channels", default=32, show_default=True)
@click.option("--channel-mult", default="1,2,2", show_default=True)
@click.option("--num-blocks", default=1, show_default=True)
@click.option("--attn-levels", default="2", show_default=True)
@click.option("--pooling", type=click.Choice(["max", "mean"]), default="max", show_default=True)
@click.option("--patch-hr", default=80, show_default=True)
@click.option("--patch-lr", default=24, show_default=True)
@click.option("--sigma-data", default="auto", show_default=True,
              help="EDM sigma_data; 'auto' = std of the stage's residual targets.")
@click.option("--val-every", default=250, show_default=True)
@click.option("--checkpoint-every", default=250, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch CPU threads (0 = all cores).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out.")
@click.option("--quiet", is_flag=True)
@_friendly
def train(stage, data_dir, out_dir, steps, batch_size, lr, warmup_steps, ema_halflife_steps, model_channels,
          channel_mult, num_blocks, attn_levels, pooling, patch_hr, patch_lr, sigma_data, val_every,
          checkpoint_every, seed, threads, device, resume, quiet):
    """Train one stage on real radar (correction: degraded coarse -> coarse; downscaling: coarse -> 1 km)."""
    import torch
    from precipfast.config import DataConfig, EDMConfig, SamplerConfig, TrainConfig, UNetConfig
    from precipfast.train.data import PairDataset, residual_std
    from precipfast.train.loop import train as run_train

    if threads:
        torch.set_num_threads(threads)
    data_cfg = DataConfig(pooling=pooling, patch_hr=patch_hr, patch_lr=patch_lr)
    unet_cfg = UNetConfig(model_channels=model_channels, channel_mult=_ints(channel_mult), num_blocks=num_blocks,
                          attn_levels=_ints(attn_levels), cond_channels=1)
    train_cfg = TrainConfig(stage=stage, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                            ema_halflife_steps=ema_halflife_steps, val_every=val_every,
                            checkpoint_every=checkpoint_every, seed=seed, threads=threads)
    train_data = PairDataset(data_cfg, stage, "train", data_dir)
    val_data = PairDataset(data_cfg, stage, "val", data_dir)
    if sigma_data == "auto":
        sd = residual_std(train_data, n=256, generator=torch.Generator().manual_seed(seed))
        click.echo(f"sigma_data (std of {stage} residuals) = {sd:.4f}", err=True)
    else:
        sd = float(sigma_data)
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
def _bbox(text):
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise click.BadParameter(f"expected S,N,W,E in degrees (e.g. 35,40,-100,-95), got {text!r}")
    return vals


def _stages(text):
    if text is None:
        return None
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in ("correction", "downscaling")]
    if bad or not names:
        raise click.BadParameter(f"stages must be a comma list of correction,downscaling; got {text!r}")
    return names


@main.command()
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", default=None, help="Output HDF5 (default: INPUT stem + '_ens.h5' here).")
@click.option("--model", default=None, help="Bundle directory (default: the bundle shipped in the package).")
@click.option("--members", default=30, show_default=True, type=int)
@click.option("--steps", default=None, type=int, help="Sampler steps per stage (default: the bundle's).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--backend", default="auto", show_default=True, help="auto, torch, onnxruntime, tensorrt.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--stages", default=None, help="Comma list, e.g. 'downscaling' for a bias-free coarse input.")
@click.option("--bbox", default=None, help="S,N,W,E in degrees: crop the input first.")
@click.option("--variable", default=None, help="Dataset path when the file is in none of the known layouts.")
@click.option("--tile", default=DEFAULT_TILE, show_default=True, help="Tile edge (pixels) for large domains.")
@click.option("--overlap", default=DEFAULT_OVERLAP, show_default=True, help="Tile overlap (pixels), blended smoothly.")
@click.option("--max-batch", default=None, type=int, help="(member, tile) images per call (default: memory budget).")
@click.option("--memory-gb", default=None, type=float,
              help="Memory budget in GiB for denoiser activations and for the members sampled together "
                   "(default: 2 on the CPU, a third of free GPU memory).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@_friendly
def sample(input_path, output, model, members, steps, seed, backend, device, stages, bbox, variable, tile,
           overlap, max_batch, memory_gb, overwrite, quiet):
    """Sample a 1 km ensemble from a coarse precipitation file (precipfast HDF5 or IMERG HDF5)."""
    from precipfast.runtime.job import SampleOptions, run_sample
    if output is None:
        output = Path(input_path).stem + "_ens.h5"
    opts = SampleOptions(members=members, steps=steps, seed=seed, backend=backend, device=device,
                         stages=_stages(stages), bbox=_bbox(bbox), tile=tile, overlap=overlap,
                         max_batch=max_batch, memory_gb=memory_gb, variable=variable, overwrite=overwrite)
    summary = run_sample(input_path, output, model, opts, quiet=quiet)
    click.echo(json.dumps(summary))


# ---------------------------------------------------------------------------- info
@main.command()
@click.argument("path", required=False)
@click.option("--backends", "show_backends", is_flag=True, help="List backends and why any is unavailable.")
@_friendly
def info(path, show_backends):
    """Print a bundle's or an output file's metadata (default: the shipped bundle) and the backends."""
    from precipfast.runtime.inspect import describe
    click.echo(json.dumps(describe(path, show_backends), indent=2, default=str))


# ---------------------------------------------------------------------------- demo
@main.command()
@click.option("--out", "out_dir", default="out/demo", show_default=True)
@click.option("--data", "data_dir", default="../shared/data", show_default=True,
              help="Where imerg_samples.h5 (real IMERG) lives.")
@click.option("--members", default=8, show_default=True)
@click.option("--steps", default=10, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--backend", default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
@_friendly
def demo(out_dir, data_dir, members, steps, seed, backend, quiet):
    """Run the shipped model on a real IMERG field: writes an output file and a quick-look PNG."""
    from precipfast.runtime.demo import run_demo
    click.echo(json.dumps(run_demo(out_dir, data_dir, members=members, steps=steps, seed=seed,
                                   backend=backend, quiet=quiet)))


# ---------------------------------------------------------------------------- evaluate
@main.command()
@click.option("--model", default=None, help="Bundle directory (default: the bundle shipped in the package).")
@click.option("--data", "data_dir", default="../shared/data", show_default=True, help="Radar data directory.")
@click.option("--source", default="mrms/region_3", show_default=True,
              help="Held-out radar source: mrms/region_N, fmi/fmi_*, bom/bom_* (see train/data.py).")
@click.option("--frames", default="0,17,35", show_default=True,
              help="Comma list of frame indices (negative counts from the end).")
@click.option("--members", default=8, show_default=True, type=int)
@click.option("--steps", default=10, show_default=True, type=int, help="Sampler steps per stage.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--mode", type=click.Choice(["downscaling", "full"]), default="downscaling", show_default=True,
              help="downscaling: fine stage on the clean coarse radar; full: degrade it like a satellite "
                   "and run both stages.")
@click.option("--backend", default="auto", show_default=True, help="auto, torch, onnxruntime, tensorrt.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--crop", default=None, type=int,
              help="Window edge in 1 km pixels (the wettest NaN-free one per frame). Default: whole frame.")
@click.option("--tile", default=DEFAULT_TILE, show_default=True, help="Tile edge (pixels), as in sample.")
@click.option("--out", "out_dir", default=None, help="Folder for metrics.json and evaluate.png.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@_friendly
def evaluate(model, data_dir, source, frames, members, steps, seed, mode, backend, device, crop, tile, out_dir,
             quiet):
    """Verify the ensemble on held-out real radar: CRPS, MAE/RMSE/correlation, spread/skill and the
    2-20 km power spectrum against bilinear upsampling. Prints the metrics as JSON."""
    from precipfast.runtime.evaluate import evaluate as run_evaluate, summary
    progress = None if quiet else (lambda msg: click.echo(msg, err=True))
    result = run_evaluate(model, data_dir, source=source, frames=_ints(frames), members=members, steps=steps,
                          seed=seed, mode=mode, backend=backend, device=device, crop=crop, tile=tile,
                          out_dir=out_dir,
                          progress=progress)
    click.echo(json.dumps(summary(result), indent=2))


# ---------------------------------------------------------------------------- bench
@main.command()
@click.option("--model", default=None, help="Bundle directory (default: the shipped bundle).")
@click.option("--what", type=click.Choice(["sample", "backends", "all"]), default="all", show_default=True)
@click.option("--members", default=8, show_default=True)
@click.option("--steps", default=8, show_default=True)
@click.option("--lr-hw", nargs=2, type=int, default=(20, 20), show_default=True, help="Coarse field size.")
@click.option("--batch", default=8, show_default=True, help="Images per call in the backend benchmark.")
@click.option("--hw", nargs=2, type=int, default=(128, 128), show_default=True, help="Tile size, backend bench.")
@click.option("--repeat", default=5, show_default=True)
@click.option("--backend", default="auto", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--data", "data_dir", default="../shared/data", show_default=True)
@_friendly
def bench(model, what, members, steps, lr_hw, batch, hw, repeat, backend, device, data_dir):
    """Benchmarks as JSON lines on stdout: batched runtime vs a plain one-member-at-a-time PyTorch loop
    (same weights, same run), and denoiser throughput per backend against the machine's matmul rate."""
    from precipfast.benchmarks._emit import emit
    from precipfast.export.bundle import default_bundle_path
    bundle = model or default_bundle_path()
    if what in ("sample", "all"):
        from precipfast.benchmarks.bench_sample import bench as bench_sample
        for rec in bench_sample(bundle, lr_hw=lr_hw, members=members, steps=steps, backend=backend,
                                device=device, data_dir=data_dir):
            emit(rec)
    if what in ("backends", "all"):
        from precipfast.benchmarks.bench_backends import bench as bench_backends
        bench_backends(bundle, None, batch, tuple(hw), repeat, device)  # emits its own lines


if __name__ == "__main__":  # pragma: no cover
    main()
