"""Data loading: real Fashion-MNIST, seeded splits, normalisation, CIFAR-10 format, offline errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision

from capslib.engine.config import DataConfig
from capslib.engine.data import DatasetUnavailableError, load_splits


def test_fashion_mnist_splits(real_data_root):
    cfg = DataConfig(dataset="fashion-mnist", train_size=2000, val_size=500, test_size=300)
    d = load_splits(cfg)
    assert d.sizes() == {"train": 2000, "val": 500, "test": 300}
    assert d.train[0].shape == (2000, 1, 28, 28) and d.train[0].dtype == torch.uint8
    # seeded: same split twice, another seed gives another split
    d2 = load_splits(cfg)
    assert torch.equal(d.val[0], d2.val[0])
    d3 = load_splits(cfg.replace(split_seed=1))
    assert not torch.equal(d.val[0], d3.val[0])
    # normalisation uses the training split: normalised train pixels have mean 0, std 1
    x = torch.cat([xb for xb, _ in d.batches("train", 512)])
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    assert set(d.train[1].unique().tolist()) == set(range(10))


def test_validation_is_disjoint_from_training(real_data_root):
    d = load_splits(DataConfig(dataset="fashion-mnist", val_size=1000))
    assert d.sizes()["train"] + d.sizes()["val"] == 60000
    flat_train = {bytes(t.numpy()) for t in d.train[0][:5000]}
    # Fashion-MNIST has a few duplicate images; almost no validation image should be a training image
    overlap = sum(bytes(v.numpy()) in flat_train for v in d.val[0])
    assert overlap < 10


def test_shuffle_depends_on_seed_and_epoch_only(real_data_root):
    d = load_splits(DataConfig(dataset="fashion-mnist", train_size=300, val_size=100, test_size=100))
    a = [y for _, y in d.batches("train", 64, shuffle=True, seed=3, epoch=2)]
    b = [y for _, y in d.batches("train", 64, shuffle=True, seed=3, epoch=2)]
    c = [y for _, y in d.batches("train", 64, shuffle=True, seed=3, epoch=3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_missing_dataset_offline_error(tmp_path):
    cfg = DataConfig(dataset="mnist", root=str(tmp_path), val_size=10)
    with pytest.raises(DatasetUnavailableError) as err:
        load_splits(cfg, download=False)
    msg = str(err.value)
    assert "'mnist'" in msg and str(tmp_path) in msg and "CAPSLIB_DATA" in msg


def _write_fake_cifar(root, n_per_batch=20, seed=0):
    """Five training batches + a test batch in CIFAR-10's python pickle format."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return batches


def test_cifar10_loading_from_files_in_the_real_format(tmp_path, monkeypatch):
    batches = _write_fake_cifar(tmp_path)
    # torchvision's CIFAR10 checks the md5 of the *real* batch files; our files are tiny stand-ins in the
    # same format, so the md5 checks (and only they) are switched off here. Parsing is torchvision's own.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    d = load_splits(DataConfig(dataset="cifar10", root=str(tmp_path), val_size=10, split_seed=0), download=False)
    assert d.sizes() == {"train": 90, "val": 10, "test": 20}
    assert d.train[0].shape == (90, 3, 32, 32)
    # the first test image is the first row of test_batch, reshaped (3, 32, 32) channel-first
    data, labels = batches["test_batch"]
    all_test = torch.cat([d.test[0]])  # test_size=None keeps the file order
    assert torch.equal(all_test[0], torch.from_numpy(data[0].reshape(3, 32, 32)))
    assert d.test[1][0].item() == labels[0]
    assert d.mean.shape == (3,)
