"""Dry pixels inside rain: how often a 10 km pixel is dry (< 0.1 mm/h) where the satellite input and its
8 neighbours all rain at least 1 mm/h, at least 2 pixels from the domain's edge (docs/experiments.md, failure
modes). Measured on the radar truth of training pairs (what the satellite-error model implies,
train/degrade.py) and on the corrected members of a `precipfast sample` output (what the correction does).

    python -m experiments.dry_pixels --data ../shared/data
    python -m experiments.dry_pixels --sample OUT.h5 --input IN.h5 [--variable V]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from precipfast.runtime.files.ensemble_file import open_ensemble
from precipfast.runtime.files.reader import read_input
from precipfast.train.data import PairDataset
from precipfast.train.recipe import configs
from precipfast.verify.scores import dry_share

WET_MM_H = 1.0      # the input and its 8 neighbours at least this: inside rain
EDGE_PX = 2         # the outermost coarse pixels are left out (the crop-edge failure mode)


def inside_rain(lr: np.ndarray, wet_mm_h: float = WET_MM_H, edge_px: int = EDGE_PX) -> np.ndarray:
    """(h, w) input -> bool mask of pixels whose 3x3 neighbourhood (edges repeated) is all >= wet_mm_h
    (NaN is not wet), at least edge_px pixels from the border."""
    padded = np.pad(np.nan_to_num(np.asarray(lr, np.float64), nan=-1.0), 1, mode="edge")
    h, w = lr.shape
    lowest = np.min([padded[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)
    mask = lowest >= wet_mm_h
    if edge_px:
        mask[:edge_px] = mask[-edge_px:] = False
        mask[:, :edge_px] = mask[:, -edge_px:] = False
    return mask


def pairs_share(data_dir: str, split: str, batches: int = 20, batch_size: int = 64, seed: int = 0) -> dict:
    """Dry share of the radar truth over `batches` batches of the correction stage's pairs of a split."""
    import torch


    data = PairDataset(configs("correction")["data"], "correction", split, data_dir)
    gen = torch.Generator().manual_seed(seed)
    truths, masks = [], []
    for _ in range(batches):
        b = data.batch(batch_size, gen)
        truths.append(b["truth_mm_h"][:, 0].numpy())
        masks.append(np.stack([inside_rain(sat) for sat in b["sat_mm_h"][:, 0].numpy()]))
    share, n = dry_share(np.concatenate(truths), np.concatenate(masks))
    return {"split": split, "sources": data.source_names, "dry_percent": share, "pixels": n}


def members_share(sample_path: str, input_path: str, variable: str | None = None) -> dict:
    """Dry share of each corrected member (first time) of a `precipfast sample` output, inside the rain of
    the input it was made from (read on the output's coarse grid)."""
    with open_ensemble(sample_path) as ens:
        if not ens.has("corrected_lr"):
            raise ValueError(f"{sample_path} has no corrected_lr: run `precipfast sample` with the correction stage")
        corrected, lat, lon = ens.field("corrected_lr", 0), ens.lat_lr, ens.lon_lr
    field = read_input(input_path, variable=variable)
    half = field.pixel_deg / 2
    rows = [int(np.argmin(np.abs(field.lat - y))) for y in lat]
    cols = [int(np.argmin(np.abs(field.lon - x))) for x in lon]
    if np.abs(field.lat[rows] - lat).max() > half or np.abs(field.lon[cols] - lon).max() > half:
        raise ValueError(f"{sample_path}'s coarse grid is not on {input_path}'s grid: pass the input it was made from")
    mask = inside_rain(field.precip[0][np.ix_(rows, cols)])
    shares = [dry_share(m, mask)[0] for m in corrected]
    return {"sample": sample_path, "pixels": int(mask.sum()), "dry_percent": shares}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="radar data folder: the truth's share in training pairs")
    ap.add_argument("--sample", default=None, help="a precipfast sample output: its members' share")
    ap.add_argument("--input", default=None, help="the input file --sample was made from")
    ap.add_argument("--variable", default=None)
    args = ap.parse_args(argv)
    if (args.sample is None) != (args.input is None) or (args.sample is None and args.data is None):
        ap.error("pass --data DIR, or --sample OUT.h5 with --input IN.h5")
    if args.data:
        for split in ("train", "val"):
            print(json.dumps(pairs_share(args.data, split)), flush=True)
    if args.sample:
        print(json.dumps(members_share(args.sample, args.input, args.variable)), flush=True)


if __name__ == "__main__":
    main()
