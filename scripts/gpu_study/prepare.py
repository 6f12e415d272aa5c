"""Prepare `.devcarry/`, the folder a device call carries, for `device_run.sh` (how the plateau selection arms,
the plateau remedy at I = 11 and the remedies at I = 30 ran on a lent H200 on 2026-12-04).

    python scripts/gpu_study/prepare.py --old c80483a --head HEAD

* `src_old`, `src_head`: shallow clones of the library at two commits (only `.git`, `capslib/`, `tests/`,
  `benchmarks/`, `pyproject.toml` travel; `device_run.sh` restores the rest with `git reset --hard`). The
  plateau points must run the library version that wrote their base and CCM stages (a stage's key holds the
  capslib version), here c80483a (capslib 0.1.0+63db80c1).
* `data/`: Fashion-MNIST with every image that the `cpu` profile's split does not use set to 0, gzipped (2 MB
  instead of 31): `load_splits` gives bit-identical tensors on it (checked here before writing).
* `ckpt/collapse_plateau/`: the finished base and CCM stages (`best.pt`, `config.json`, `result.json`) of
  every seed, so that the selection arms prune the very backbone the CCM + CHIP point pruned.

Add `/.devcarry/` to `.git/info/exclude`; carry it with `run(carry=[".devcarry"])`; run
`bash .devcarry/device_run.sh`; append the returned rows to the stores point by point
(`ResultsStore.append_many`), skipping point keys already stored.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from capslib.engine.config import profile
from capslib.engine.data import data_root, load_splits

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / ".devcarry"
KEEP = {".git", "capslib", "tests", "benchmarks", "pyproject.toml"}


def clone(commit: str, dest: Path) -> None:
    branch = f"devcarry-{dest.name}"
    subprocess.run(["git", "branch", "-f", branch, commit], cwd=ROOT, check=True)
    try:
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", branch, f"file://{ROOT}", str(dest)],
                       check=True)
    finally:
        subprocess.run(["git", "branch", "-D", branch], cwd=ROOT, check=True, capture_output=True)
    for p in dest.iterdir():
        if p.name not in KEEP:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def data_subset(dest: Path) -> None:
    cfg = profile("cpu").data
    src = data_root() / "FashionMNIST" / "raw"
    out = dest / "FashionMNIST" / "raw"
    out.mkdir(parents=True, exist_ok=True)
    keep = {"train": torch.randperm(60000, generator=torch.Generator().manual_seed(cfg.split_seed))
            [: cfg.val_size + cfg.train_size].numpy(),
            "t10k": torch.randperm(10000, generator=torch.Generator().manual_seed(cfg.split_seed + 1))
            [: cfg.test_size].numpy()}
    for split, idx in keep.items():
        raw = (src / f"{split}-images-idx3-ubyte").read_bytes()
        img = np.frombuffer(raw[16:], dtype=np.uint8).reshape(-1, 784).copy()
        mask = np.zeros(len(img), bool)
        mask[idx] = True
        img[~mask] = 0
        (out / f"{split}-images-idx3-ubyte").write_bytes(raw[:16] + img.tobytes())
        shutil.copy(src / f"{split}-labels-idx1-ubyte", out / f"{split}-labels-idx1-ubyte")
    a, b = load_splits(cfg), load_splits(dataclasses.replace(cfg, root=str(dest)))
    assert all(torch.equal(u, v) for k in ("train", "val", "test") for u, v in zip(getattr(a, k), getattr(b, k)))
    for f in out.glob("*-ubyte"):
        with open(f, "rb") as fin, gzip.open(f"{f}.gz", "wb") as fout:
            shutil.copyfileobj(fin, fout)
        f.unlink()


def checkpoints(dest: Path) -> None:
    for stage in sorted((ROOT / "runs" / "sweeps" / "collapse_plateau").glob("pipeline-*/[bc]*-*")):
        if (stage / "result.json").is_file() and stage.name.split("-")[0] in ("base", "ccm"):
            d = dest / stage.parent.name / stage.name
            d.mkdir(parents=True, exist_ok=True)
            for f in ("best.pt", "config.json", "result.json"):
                shutil.copy(stage / f, d / f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="commit whose library wrote the plateau stages")
    ap.add_argument("--head", default="HEAD", help="commit for the remedies_deep points")
    args = ap.parse_args()
    shutil.rmtree(CARRY, ignore_errors=True)
    CARRY.mkdir()
    clone(args.old, CARRY / "src_old")
    clone(args.head, CARRY / "src_head")
    data_subset(CARRY / "data")
    checkpoints(CARRY / "ckpt" / "collapse_plateau")
    for f in ("only_sweep.py", "device_run.sh"):
        shutil.copy(Path(__file__).with_name(f), CARRY / f)
    print(f"{CARRY}: {sum(p.stat().st_size for p in CARRY.rglob('*') if p.is_file()) / 2**20:.1f} MiB "
          f"(the call's limit is 64 MiB with the working tree)")


if __name__ == "__main__":
    main()
