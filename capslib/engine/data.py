"""Datasets: CIFAR-10, MNIST and Fashion-MNIST through torchvision, held in memory as tensors.

* Root: ``$CAPSLIB_DATA`` when set, else ``~/.cache/capslib/data`` (or under
  ``$XDG_CACHE_HOME``). torchvision's layout: ``MNIST/raw/*.gz``,
  ``FashionMNIST/raw/*.gz``, ``cifar-10-batches-py/``.
* Missing files are downloaded; offline, :class:`DatasetUnavailableError`
  names the dataset, the folder and how to put the files there.
* Splits: a validation set of ``val_size`` images is held out of the training
  set with ``split_seed``; the test set is used only for the final report.
* Normalisation uses the per-channel mean and std of the training split.

* CIFAR-10's python files are pickles, and torchvision's loader unpickles them (unpickling can
  run code). torchvision checks their MD5 sums first; capslib does so itself as well, before
  torchvision is called (:func:`verify_cifar10`, with torchvision's list of the published sums),
  and refuses with a message naming the file: a file planted or damaged in the data folder is
  never unpickled, and the user learns which one it is. MNIST and Fashion-MNIST are plain
  gzipped arrays, not pickles.

Images stay uint8 in memory and are converted and normalised per batch, which
is far faster than torchvision's per-image PIL transforms for these sizes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from .config import DATASETS, DataConfig, canonical_dataset
from .cache_dirs import user_cache_dir

__all__ = ["DatasetUnavailableError", "data_root", "load_raw", "verify_cifar10", "DataSplits", "load_splits"]


class DatasetUnavailableError(RuntimeError):
    """The dataset's files are missing and could not be downloaded."""


def data_root(root: Optional[str | os.PathLike] = None) -> Path:
    """The data folder: ``root`` if given, else ``$CAPSLIB_DATA``, else a user cache folder."""
    if root is not None:
        return Path(root).expanduser()
    return user_cache_dir("data", "CAPSLIB_DATA")


_TV_FOLDER = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py"}


def _torchvision_dataset(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    return cls(str(root), train=train, download=download)


def verify_cifar10(root: str | os.PathLike) -> None:
    """Check the CIFAR-10 pickles under ``root`` against the published MD5 sums before anything loads them.

    Files that are absent are left to torchvision (which downloads them, or reports them missing).

    Raises:
        DatasetUnavailableError: naming the first file that does not match; it is not opened.
    """
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    folder = Path(root) / tvd.CIFAR10.base_folder
    if not folder.is_dir():
        return
    files = [*tvd.CIFAR10.train_list, *tvd.CIFAR10.test_list, [tvd.CIFAR10.meta["filename"], tvd.CIFAR10.meta["md5"]]]
    for fname, md5 in files:
        path = folder / fname
        if path.exists() and not tv_cifar.check_integrity(str(path), md5):  # torchvision's own MD5 check
            raise DatasetUnavailableError(
                f"{path} does not match the published CIFAR-10 checksum (MD5 {md5}); capslib will not load it, "
                f"since torchvision reads these files with pickle, which can run code. Delete {folder} to "
                f"download a fresh copy, or replace the file with the original from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html.")


@lru_cache(maxsize=8)
def _load_raw_cached(name: str, root: str, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    path = Path(root)
    if name == "cifar10":
        verify_cifar10(path)  # before torchvision unpickles anything
    try:
        ds = _torchvision_dataset(name, path, train, download)
    except Exception as err:  # torchvision raises RuntimeError / URLError / OSError
        raise DatasetUnavailableError(
            f"dataset {name!r} ({'train' if train else 'test'} split) is not available in "
            f"{path / _TV_FOLDER[name]} and could not be downloaded ({type(err).__name__}: {err}). "
            f"Put torchvision's files there (for MNIST/Fashion-MNIST the four *-ubyte.gz archives; "
            f"for CIFAR-10 the extracted cifar-10-batches-py folder), or set CAPSLIB_DATA to a folder "
            f"that has them, e.g. a writable copy of ../shared/datasets."
        ) from err
    x = ds.data
    if isinstance(x, np.ndarray):  # CIFAR-10: (N, 32, 32, 3) uint8
        x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    else:  # MNIST family: (N, 28, 28) uint8
        x = x.unsqueeze(1).contiguous()
    y = torch.as_tensor(ds.targets, dtype=torch.long)
    return x, y  # (N, C, H, W) uint8, (N,) int64


def load_raw(name: str, train: bool = True, root: Optional[str | os.PathLike] = None,
             download: Optional[bool] = None) -> tuple[Tensor, Tensor]:
    """All images of one split as ``(uint8 (N, C, H, W), int64 (N,))``.

    ``download`` defaults to True unless ``$CAPSLIB_OFFLINE`` is set.
    """
    name = canonical_dataset(name)
    if download is None:
        download = not os.environ.get("CAPSLIB_OFFLINE")
    return _load_raw_cached(name, str(data_root(root)), train, bool(download))


@dataclass
class DataSplits:
    """Train / validation / test tensors plus the training-set normalisation."""

    name: str
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    mean: Tensor  # (C,)
    std: Tensor  # (C,)

    @property
    def num_classes(self) -> int:
        return DATASETS[self.name][2]

    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)[1]) for k in ("train", "val", "test")}

    def normalise(self, x: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> float32, standardised with the training statistics."""
        x = x.float().div_(255.0)
        return (x - self.mean.view(1, -1, 1, 1).to(x.device)) / self.std.view(1, -1, 1, 1).to(x.device)

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0,
                epoch: int = 0, device: Optional[torch.device] = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield normalised ``(x, y)`` batches. Shuffling depends only on (seed, epoch),
        so a resumed run sees exactly the batches an uninterrupted run would."""
        x, y = getattr(self, split)
        n = len(y)
        if shuffle:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            xb, yb = x[idx], y[idx]
            if device is not None:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            yield self.normalise(xb), yb

    def num_batches(self, split: str, batch_size: int) -> int:
        return -(-len(getattr(self, split)[1]) // batch_size)


def load_splits(cfg: DataConfig, download: Optional[bool] = None) -> DataSplits:
    """Load the dataset of ``cfg`` and cut the seeded train/val split and the subsets."""
    x_all, y_all = load_raw(cfg.dataset, train=True, root=cfg.root, download=download)
    x_test, y_test = load_raw(cfg.dataset, train=False, root=cfg.root, download=download)
    n = len(y_all)
    if cfg.val_size >= n:
        raise ValueError(f"val_size {cfg.val_size} must be smaller than the {n} training images")
    g = torch.Generator().manual_seed(cfg.split_seed)
    perm = torch.randperm(n, generator=g)
    val_idx, train_idx = perm[: cfg.val_size], perm[cfg.val_size :]
    if cfg.train_size is not None:
        if cfg.train_size > len(train_idx):
            raise ValueError(f"train_size {cfg.train_size} exceeds the {len(train_idx)} images left after the validation split")
        train_idx = train_idx[: cfg.train_size]
    test_idx = torch.arange(len(y_test))
    if cfg.test_size is not None:
        if cfg.test_size > len(test_idx):
            raise ValueError(f"test_size {cfg.test_size} exceeds the {len(test_idx)} test images")
        test_idx = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(cfg.split_seed + 1))[: cfg.test_size]
    x_train = x_all[train_idx]
    xf = x_train.float().div_(255.0)
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return DataSplits(
        name=cfg.dataset,
        train=(x_train, y_all[train_idx]),
        val=(x_all[val_idx], y_all[val_idx]),
        test=(x_test[test_idx], y_test[test_idx]),
        mean=mean,
        std=std,
    )
