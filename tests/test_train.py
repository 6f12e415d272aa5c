"""Training: determinism, resume, NaN handling, model selection, CLI, and a real-data accuracy check."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from capslib.engine.config import profile
from capslib.engine.data import load_splits
from capslib.engine.train import TrainingDiverged, fit, load_model


def tiny(**kw):
    base = dict(C=4, D=4, I=1, train_size=512, val_size=256, test_size=256, epochs=2, batch_size=64)
    base.update(kw)
    return profile("smoke", **base)


@pytest.fixture(scope="module")
def tiny_data(real_data_root):
    return load_splits(tiny().data)


def strip_times(history):
    return [{k: v for k, v in h.items() if k != "wall_time"} for h in history]


def test_same_seed_same_metrics(tiny_data):
    r1, _ = fit(tiny(), data=tiny_data, progress=False)
    r2, _ = fit(tiny(), data=tiny_data, progress=False)
    assert strip_times(r1.history) == strip_times(r2.history)
    assert r1.test_acc == r2.test_acc
    r3, _ = fit(tiny(seed=1), data=tiny_data, progress=False)
    assert strip_times(r3.history) != strip_times(r1.history)


def test_resume_gives_identical_final_metrics(tiny_data, tmp_path):
    full, _ = fit(tiny(epochs=3), data=tiny_data, progress=False)
    part, _ = fit(tiny(epochs=3), data=tiny_data, checkpoint_dir=tmp_path, progress=False, stop_after_epochs=1)
    assert len(part.history) == 1
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # plain state_dicts
    assert state["epoch"] == 1
    resumed, model = fit(tiny(epochs=3), data=tiny_data, checkpoint_dir=tmp_path, progress=False)
    assert strip_times(resumed.history) == strip_times(full.history)
    assert resumed.test_acc == full.test_acc and resumed.best_epoch == full.best_epoch
    # best.pt loads into a fresh model with weights_only=True and gives the same accuracy
    again = load_model(tiny(epochs=3), tmp_path / "best.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_resume_refuses_another_config(tiny_data, tmp_path):
    fit(tiny(epochs=1), data=tiny_data, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another config"):
        fit(tiny(epochs=1, lr=0.01), data=tiny_data, checkpoint_dir=tmp_path, progress=False)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tiny_data, tmp_path):
    from capslib.engine.model import CapsNet

    cfg = tiny(epochs=3)
    torch.manual_seed(cfg.train.seed)
    model = CapsNet(cfg.model)
    steps_per_epoch = tiny_data.num_batches("train", cfg.train.batch_size)
    calls = {"n": 0}

    def poison(module, inputs, output):  # a fault injected in epoch 2: the class capsules turn NaN
        if module.training:
            calls["n"] += 1
            if calls["n"] > steps_per_epoch:
                return output * float("nan")
        return output

    model.classcaps.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 1.*last\.pt"):
        fit(cfg, data=tiny_data, model=model, checkpoint_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_select_on_test_is_the_authors_selection(tiny_data):
    r, _ = fit(tiny(epochs=3, select_on="test"), data=tiny_data, progress=False)
    tests = [h["test_acc"] for h in r.history]
    assert r.test_acc == max(tests)
    assert r.best_epoch == tests.index(max(tests)) + 1
    rv, _ = fit(tiny(epochs=3), data=tiny_data, progress=False)
    assert all(h["test_acc"] is None for h in rv.history)  # the default never looks at test while training


def test_history_has_dead_fractions_per_layer(tiny_data):
    r, _ = fit(tiny(epochs=1), data=tiny_data, progress=False)
    h = r.history[0]
    assert set(h["dead"]) == {"primary", "inter1", "class"}
    assert all(0 <= v <= 1 for v in h["dead"].values())
    assert set(r.probe["dead_fraction"]) == {"paper000", "paper002"}


def test_cli_train_writes_result_json(real_data_root, tmp_path):
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "capslib.cli", "train", "--C", "4", "--D", "4", "--I", "1", "--train_size", "256",
         "--val_size", "128", "--test_size", "128", "--epochs", "1", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    res = json.loads(out.read_text())
    for key in ("config", "test_acc", "best_val_acc", "history", "params", "wall_time", "provenance", "probe"):
        assert key in res
    for key in ("device", "torch_version", "capslib_version", "git_sha"):
        assert key in res["provenance"]
    assert res["config"]["model"]["C"] == 4 and res["history"][0]["dead"]


def test_cli_errors_and_help():
    bad = subprocess.run([sys.executable, "-m", "capslib.cli", "train", "--D", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "D must be a positive integer" in bad.stderr
    helptext = subprocess.run([sys.executable, "-m", "capslib.cli", "train", "--help"], capture_output=True,
                              text=True).stdout
    for opt in ("--C", "--D", "--I", "--alpha", "--select_on", "--capsule_layout", "--ccm_detached", "--profile"):
        assert opt in helptext


@pytest.mark.slow
def test_real_fashion_mnist_accuracy(real_data_root):
    """CapsNet[C=8, D=8, I=1], 1 epoch on 5,000 real Fashion-MNIST images: >= 70% on 1,000 test images."""
    cfg = profile("smoke")
    assert (cfg.model.C, cfg.model.D, cfg.model.I, cfg.train.epochs) == (8, 8, 1, 1)
    assert (cfg.data.train_size, cfg.data.test_size) == (5000, 1000)
    r, _ = fit(cfg, progress=False)
    print(f"smoke test accuracy {r.test_acc:.3f} in {r.wall_time:.0f}s")
    assert r.test_acc >= 0.70
