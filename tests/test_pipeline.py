"""The §3.5 pipeline, its resume, the depth search and the ``capslib prune`` / ``capslib depth`` commands,
on a tiny real Fashion-MNIST subset on CPU.

One tiny config serves every test: CapsNet[C=8, D=4, I=0] (widths 8/16/32), 256 training images, 1 epoch
per stage. Its capsule matrices start at init_std 1e-3: I=0 still learns in one epoch, while one
IntermediateCaps makes the activations vanish and the run collapse to chance - a real collapse for the
depth search to find. The validation set is large (1,000) so that a collapsed run's accuracy (one class
predicted) sits within 2 points of chance. Stage folders are shared between the tests through one module
checkpoint directory, which is itself what resuming is about.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import capslib.experiments.pipeline as pipeline
from capslib.cli import build_parser
from capslib.engine.config import profile
from capslib.engine.data import load_splits
from capslib.experiments.pipeline import depth_search, prune_pipeline
from capslib.pruning.prune import count_macs, params_of
from capslib.experiments.results import ResultsStore
from capslib.engine.train import evaluate, load_model

TINY = dict(C=8, D=4, I=0, train_size=256, val_size=1000, test_size=128, epochs=1, batch_size=64,
            init_std=1e-3, collapse_epochs=1)
CI = dict(ci_batches=2, ci_batch_size=64)
TINY_CLI = ["--C", "8", "--D", "4", "--I", "0", "--train_size", "256", "--val_size", "1000", "--test_size", "128",
            "--epochs", "1", "--batch_size", "64", "--init_std", "0.001", "--collapse_epochs", "1",
            "--ci-batches", "2", "--ci-batch-size", "64"]


def tiny():
    return profile("smoke", **TINY)


@pytest.fixture(scope="module")
def data(real_data_root):
    return load_splits(tiny().data)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def first_run(data, ckpt):
    """The pipeline at PR 0.25, run once for the module."""
    store = ResultsStore(ckpt / "rows.csv")
    res = prune_pipeline(tiny(), 0.25, data=data, checkpoint_dir=ckpt, store=store, progress=False, **CI)
    return res, store


def stage_dir(res, stage):
    return res.stages[stage].path


def test_pipeline_records_every_stage(first_run, data):
    res, store = first_run
    assert list(res.stages) == ["base", "ccm", "pruned", "retrain"]
    assert not any(r.resumed for r in res.stages.values())
    rows = store.read()
    assert list(rows["stage"]) == ["base", "ccm", "pruned", "retrain"]
    assert rows["run_key"].is_unique
    assert (rows["pr"] == 0.25).all() and (rows["prune_mode"] == "channel").all()
    assert (rows["ci_estimator"] == "per_image").all() and (rows["ccm_alpha"] == 0.01).all()
    by = rows.set_index("stage")
    # the loss of each stage: margin, margin − 0.01·CCM, margin
    assert list(by["train.alpha"]) == [0.0, 0.01, 0.0, 0.0]
    assert res.stages["ccm"].result.history[0]["ccm"] > 0 and res.stages["base"].result.history[0]["ccm"] == 0
    # sizes: the plan's numbers are the rebuilt model's
    plan = res.plan
    assert (plan.C_before, plan.C_after) == (8, 6) and plan.after.backbone_widths == (4, 12, 24)
    assert list(by["model.C"]) == [8, 8, 6, 6]
    assert by.loc["base", "params"] == by.loc["ccm", "params"] == plan.params_before
    assert by.loc["pruned", "params"] == by.loc["retrain", "params"] == plan.params_after == params_of(plan.after)
    assert by.loc["retrain", "macs"] == plan.macs_after == count_macs(plan.after) < by.loc["base", "macs"]
    assert by.loc["retrain", "params"] < by.loc["base", "params"]
    # accuracies, dead fractions, wall times are real numbers
    for stage in res.stages:
        assert 0 <= by.loc[stage, "test_acc"] <= 1 and 0 <= by.loc[stage, "best_val_acc"] <= 1
        assert by.loc[stage, "wall_time"] > 0
        dead = json.loads(by.loc[stage, "dead_000"])
        assert set(dead) == {"primary", "class"} and all(0 <= v <= 1 for v in dead.values())
    assert by.loc["pruned", "epochs_run"] == 0 and by.loc["retrain", "epochs_run"] == 1
    assert res.stages["retrain"].val_acc > 0.2  # it learned something in one epoch (chance is 0.1)
    assert isinstance(res.to_frame(), pd.DataFrame) and "retrain" in str(res)


def test_stage_checkpoints_hold_the_selected_models(first_run, data):
    res, _ = first_run
    for stage in ("base", "ccm", "pruned", "retrain"):
        d = stage_dir(res, stage)
        assert {"best.pt", "config.json", "result.json"} <= {p.name for p in d.iterdir()}
        model = load_model((d / "config.json").read_text(), d / "best.pt")
        acc, _ = evaluate(model, data, "test", probe=False)
        assert acc == res.stages[stage].test_acc, stage
    assert (stage_dir(res, "pruned") / "plan.json").exists()
    final, _ = evaluate(res.model, data, "test", probe=False)
    assert final == res.stages["retrain"].test_acc


def test_second_call_skips_finished_stages(first_run, data, ckpt, monkeypatch):
    res, store = first_run

    def no_training(*a, **k):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(pipeline, "fit", no_training)
    monkeypatch.setattr(pipeline, "ci_layer_scores", no_training)
    again = prune_pipeline(tiny(), 0.25, data=data, checkpoint_dir=ckpt, store=store, progress=False, **CI)
    assert all(r.resumed for r in again.stages.values())
    for stage in again.stages:
        assert again.stages[stage].test_acc == res.stages[stage].test_acc
        assert again.stages[stage].row["run_key"] == res.stages[stage].row["run_key"]
    assert again.plan == res.plan
    assert len(store.read()) == 4  # no duplicate rows


def test_interrupted_pipeline_resumes_from_the_next_stage(first_run, data, ckpt, monkeypatch):
    res, store = first_run
    shutil.rmtree(stage_dir(res, "retrain"))  # as if the run died right after the pruned stage
    calls = []
    real_fit = pipeline.fit
    monkeypatch.setattr(pipeline, "fit", lambda cfg, **k: calls.append(cfg.model.C) or real_fit(cfg, **k))
    again = prune_pipeline(tiny(), 0.25, data=data, checkpoint_dir=ckpt, store=store, progress=False, **CI)
    assert calls == [6]  # only the retrain stage trained, on the pruned C'=6 model
    assert [r.resumed for r in again.stages.values()] == [True, True, True, False]
    assert again.stages["retrain"].test_acc == res.stages["retrain"].test_acc  # deterministic on CPU


def test_bad_pipeline_arguments_fail_before_training():
    for kw, msg in [(dict(pr=1.0), r"PR must be in \[0, 1\)"), (dict(pr=-0.5), r"PR must be in \[0, 1\)"),
                    (dict(pr=0.25, mode="types"), "prune mode"), (dict(pr=0.25, estimator="svd"), "CHIP estimator"),
                    (dict(pr=0.25, epochs_base=0), "epochs_base must be"), (dict(pr=0.25, alpha=-1.0), "alpha > 0"),
                    (dict(pr=0.25, I=-1), "I .IntermediateCaps after pruning. must be"),
                    (dict(pr=0.25, I=2, slice_capsule_weights=True), "I must stay 0"),
                    (dict(pr=0.25, mode="capsule", cfg=profile("smoke", capsule_layout="reshape")),
                     "capsule mode needs capsule_layout='channel'")]:
        with pytest.raises(ValueError, match=msg):
            cfg = kw.pop("cfg", tiny())
            prune_pipeline(cfg, data=None, checkpoint_dir=None, store=None, progress=False, **kw)


def test_depth_search_without_pruning_stops_at_the_first_collapse(data, ckpt):
    store = ResultsStore(ckpt / "depth.csv")
    res = depth_search(tiny(), None, max_I=3, start_I=0, data=data, checkpoint_dir=ckpt, store=store,
                       progress=False)
    assert [t.I for t in res.trials] == [0, 1]  # I=2, 3 never tried
    assert [t.collapsed for t in res.trials] == [False, True]
    assert res.max_depth == 0 and res.collapsed_at == 1
    assert abs(res.trials[1].val_acc - 0.1) <= 0.02 < res.trials[0].val_acc - 0.1
    assert res.trials[1].dead["inter1"] == 1.0  # the IntermediateCaps is dead: vanishing activations
    rows = store.read()
    assert list(rows["stage"]) == ["depth", "depth"] and list(rows["depth_I"]) == [0, 1]
    assert list(rows["collapsed"]) == [False, True] and list(rows["model.I"]) == [0, 1]
    assert "max depth without collapse = 0" in str(res)


def test_depth_search_with_pruning_reuses_stages_1_to_3(first_run, data, ckpt, monkeypatch):
    store = ResultsStore(ckpt / "depth-pruned.csv")
    res = depth_search(tiny(), 0.25, max_I=2, start_I=0, data=data, checkpoint_dir=ckpt, store=store,
                       progress=False, **CI)
    assert [r.stage for r in res.setup] == ["base", "ccm", "pruned"]
    assert all(r.resumed for r in res.setup)  # the same base, CCM model and plan as the pipeline at PR 0.25
    plan = first_run[0].plan
    assert [t.I for t in res.trials] == [0, 1] and res.max_depth == 0 and res.collapsed_at == 1
    assert [t.params for t in res.trials] == [params_of(plan.after.replace(I=i)) for i in (0, 1)]
    rows = store.read()
    assert list(rows["stage"]) == ["base", "ccm", "pruned", "depth", "depth"]
    assert list(rows["model.C"]) == [8, 8, 6, 6, 6] and (rows["pr"] == 0.25).all()


# ----------------------------------------------------------------------------- CLI


def subcommand(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("name", ["prune", "depth"])
def test_help_documents_every_option(name):
    helptext = subprocess.run([sys.executable, "-m", "capslib.cli", name, "--help"], capture_output=True,
                              text=True, check=True).stdout
    parser = subcommand(name)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) > 35
    for action in options:
        assert action.help, f"{action.option_strings} has no help"
        assert action.option_strings[0] in helptext
    for opt in ("--pr", "--alpha", "--mode", "--estimator", "--epochs-base", "--epochs-ccm", "--ci-batches",
                "--checkpoint-dir", "--store", "--C", "--D", "--profile"):
        assert opt in helptext
    if name == "prune":
        for opt in ("--prune-I", "--epochs-retrain", "--slice-capsule-weights"):
            assert opt in helptext
    else:
        for opt in ("--max-I", "--start-I", "--base-I", "--epochs-depth"):
            assert opt in helptext


def test_train_options_take_routing_and_loss(capsys):
    from capslib.cli import config_from_args

    cfg = config_from_args(subcommand("train").parse_args(["--routing", "em", "--D", "9", "--I", "2"]))
    assert (cfg.model.routing, cfg.train.loss, cfg.loss, cfg.model.I) == ("em", "auto", "spread", 2)
    cfg = config_from_args(subcommand("train").parse_args(["--routing", "vb", "--D", "16", "--loss", "margin"]))
    assert (cfg.model.routing, cfg.loss) == ("vb", "margin")
    with pytest.raises(SystemExit):
        subcommand("train").parse_args(["--routing", "magic"])
    assert "invalid choice: 'magic'" in capsys.readouterr().err


def test_optional_float_options_parse_as_numbers():
    """Optional[float] fields (class_init_std, squash_bias) take a number from the command line."""
    from capslib.cli import config_from_args

    cfg = config_from_args(subcommand("train").parse_args(["--class_init_std", "0.1", "--squash_bias", "0.1",
                                                           "--squash_fn", "efficient", "--residual", "true"]))
    assert (cfg.model.class_init_std, cfg.model.squash_bias) == (0.1, 0.1)
    assert (cfg.model.squash_fn, cfg.model.residual) == ("efficient", True)


def test_cli_prune_runs_and_prints_the_stage_table(first_run, ckpt):
    """A second PR in the same checkpoint folder: stages 1-2 are reused, 3-5 run."""
    store = ckpt / "cli.csv"
    out = ckpt / "cli.json"
    proc = subprocess.run([sys.executable, "-m", "capslib.cli", "prune", *TINY_CLI, "--pr", "0.5", "--quiet",
                           "--checkpoint-dir", str(ckpt), "--store", str(store), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["stage", "C", "D", "I"])
    table = [line.split() for line in lines[header + 1 : header + 5]]
    assert [t[0] for t in table] == ["base", "ccm", "pruned", "retrain"]
    assert [t[1] for t in table] == ["8", "8", "4", "4"]  # PR 0.5 of 32 PrimaryCaps channels: C' = 16/4
    assert [t[-1] for t in table] == ["True", "True", "False", "False"]  # resumed
    assert "PrunePlan PR=0.5" in proc.stdout
    rows = pd.read_csv(store)
    assert list(rows["stage"]) == ["base", "ccm", "pruned", "retrain"] and (rows["pr"] == 0.5).all()
    summary = json.loads(out.read_text())
    assert summary[0]["plan"]["after"]["C"] == 4 and len(summary[0]["stages"]) == 4


def test_cli_prune_reports_bad_ratio():
    proc = subprocess.run([sys.executable, "-m", "capslib.cli", "prune", *TINY_CLI, "--pr", "1.0", "--quiet",
                           "--store", "/dev/null/never"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "PR must be in [0, 1)" in proc.stderr


def test_the_pipeline_takes_the_configs_chip_estimator_unless_told():
    from capslib.engine.config import apply_preset, profile
    from capslib.experiments.pipeline import resolve_estimator

    cfg = profile("smoke")
    authors = apply_preset(cfg, "authors")
    assert resolve_estimator(cfg, None) == "per_image"
    assert resolve_estimator(authors, None) == "batch_mean_r4"  # their code's estimator
    assert resolve_estimator(authors, "per_image") == "per_image"


@pytest.mark.parametrize("selection", ["random", "anti_chip", "chip_base"])
def test_channel_selection_controls_keep_the_counts_and_change_the_channels(first_run, data, ckpt, selection):
    """The controls of issue 19: the same per-layer removal counts as CHIP's plan, other channels; the CHIP
    stages are shared through the checkpoints, and the paper's keys (selection "chip") are unchanged."""
    res, _ = first_run
    store = ResultsStore(ckpt / f"rows-{selection}.csv")
    other = prune_pipeline(tiny(), 0.25, data=data, checkpoint_dir=ckpt, store=store, progress=False,
                           selection=selection, **CI)
    assert other.stages["base"].resumed and other.stages["ccm"].resumed  # shared with the CHIP arm
    assert not other.stages["pruned"].resumed  # its own stage, under its own key
    for mine, chip in zip(other.plan.layers, res.plan.layers):
        assert (mine.name, mine.n_removed) == (chip.name, chip.n_removed)
    assert any(m.removed != c.removed for m, c in zip(other.plan.layers, res.plan.layers))
    rows = store.read()
    assert (rows["selection"] == selection).all()
    assert res.stages["retrain"].row["selection"] == "chip"
    if selection == "anti_chip":  # the highest-CI channels go: exactly the complement's top of CHIP's ranking
        from capslib.pruning.prune import chip_batches, ci_layer_scores

        ccm = res.stages["ccm"]
        scores = ci_layer_scores(load_model(ccm.config, stage_dir(res, "ccm") / "best.pt"),
                                 chip_batches(data, 2, 64, seed=0), estimator="per_image")
        for layer in other.plan.layers:
            if layer.n_removed:
                top = set(scores[layer.name].argsort(descending=True)[: layer.n_removed].tolist())
                assert set(layer.removed) == top


def test_unknown_selection_is_refused(data):
    with pytest.raises(ValueError, match="selection must be one of"):
        prune_pipeline(tiny(), 0.25, data=data, progress=False, selection="best", **CI)


def _stage_model(res, stage):
    d = stage_dir(res, stage)
    return load_model((d / "config.json").read_text(), d / "best.pt")


def test_pipeline_without_retraining_returns_what_retraining_starts_from(first_run, data, ckpt, monkeypatch):
    """``retrain=False``: stages 1-4 only, resumed from the same checkpoints (nothing trains again); the
    model is the pruned stage's and the pruned stage's config is the retrain stage's."""
    import torch

    res, _ = first_run
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("a finished stage was trained again"))
    part = prune_pipeline(tiny(), 0.25, data=data, checkpoint_dir=ckpt, store=ckpt / "rows-rebuilt.csv",
                          progress=False, retrain=False, **CI)
    assert list(part.stages) == ["base", "ccm", "pruned"]
    assert part.stages["pruned"].config.config_hash() == res.stages["retrain"].config.config_hash()
    saved = _stage_model(res, "pruned").state_dict()
    for name, tensor in part.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_pruned_backbone_keeps_stale_batchnorm_statistics(first_run, data):
    """Why a rebuilt pruned net can look dead to the probe and still train (issue 19, item 5): rebuild copies
    the kept channels' BatchNorm running statistics, measured while every input channel was present. Without
    the pruned channels of the layer below, the next conv's output varies less than those statistics say, so
    eval mode (running statistics) shrinks the PrimaryCaps input further than it does for the unpruned
    model, while training mode (batch statistics) renormalises it."""
    import torch

    res, _ = first_run
    x, _ = next(iter(data.batches("train", 64, shuffle=False)))
    ccm, pruned = _stage_model(res, "ccm"), _stage_model(res, "pruned")
    kept = torch.tensor(res.plan.layers[1].kept)
    assert torch.equal(pruned.backbone[1].bn.running_var, ccm.backbone[1].bn.running_var[kept])  # copied

    def conv2_var(model):  # variance of the second conv's output per channel, before its BatchNorm
        with torch.no_grad():
            return torch.nn.Sequential(model.backbone[0], model.backbone[1].conv).eval()(x).var(dim=(0, 2, 3))

    assert float((conv2_var(pruned) / conv2_var(ccm)[kept]).mean()) < 0.9  # its input lost channels

    def eval_over_train(model):  # mean PrimaryCaps length in eval mode over that in training mode
        lengths = []
        for mode in ("eval", "train"):
            getattr(model, mode)()
            with torch.no_grad():
                lengths.append(float(model(x).capsules["primary"].norm(dim=-1).mean()))
        return lengths[0] / lengths[1]

    assert eval_over_train(pruned) < 0.9 * eval_over_train(ccm)
