"""The "authors" preset: each of the authors' choices as a recorded config field (DESIGN.md §3, §3b).

The layer layouts are checked against a plain re-implementation, in this file, of the authors' layer
shapes (PrimaryCaps ``view``, ConvCaps ``unfold`` + ``view`` with no permute, class capsules), run on
the same weights as our layers; the prune-count rule against a literal transcription of theirs; the
CHIP estimator against float64 SVDs of the rounded mean map; and the config hash of every stored
result row is unchanged by the new fields.
"""
from __future__ import annotations

import csv
import glob
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from capslib.engine.capsules import ConvCaps, unfold_capsules
from capslib.pruning.chip import authors_channel_independence, ci_scores
from capslib.engine.config import (PRESETS, ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, apply_preset,
                                   authors_preset, preset_of, profile)
from capslib.engine.model import CapsNet
from capslib.pruning.prune import make_plan, prune_count, rebuild

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the authors' layers, re-implemented


def authors_squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    sq = (s * s).sum(dim, keepdim=True)
    return sq * s / ((1 + sq) * torch.sqrt(sq + 1e-6))


def authors_route(u_hat: torch.Tensor, parent_dim: int, child_dim: int, iters: int = 3) -> torch.Tensor:
    """Dynamic routing as a loop over explicit broadcasts: c = softmax over the parents."""
    b = torch.zeros(u_hat.shape[:-1], dtype=u_hat.dtype)
    for r in range(iters):
        c = torch.softmax(b, dim=parent_dim)
        v = authors_squash((c.unsqueeze(-1) * u_hat).sum(child_dim, keepdim=True))
        if r < iters - 1:
            b = b + (u_hat * v).sum(-1)
    return v.squeeze(child_dim)


def authors_primary(conv_out: torch.Tensor, D: int) -> torch.Tensor:
    """(B, C·D, G, G) -> (B, C·G·G, D): ``conv_out.view(B, n_caps, -1)``, then squash."""
    B = conv_out.shape[0]
    return authors_squash(conv_out.view(B, -1, D))


def authors_convcaps(x: torch.Tensor, W: torch.Tensor, C: int, D: int, G: int, Cout: int, Dout: int) -> torch.Tensor:
    """x (B, G·G·C, D) memory; W (9·C, Cout·Dout, D). Returns (B, G·G·Cout, Dout)."""
    B = x.shape[0]
    x = x.reshape(B, C * D, G, G)  # the next layer re-views the memory as NCHW
    cols = F.unfold(x, kernel_size=3, stride=1, padding=1)  # (B, C·D·9, G·G)
    u = cols.view(B, G * G, 9 * C, D, 1)  # no permute
    u_hat = torch.matmul(W, u).view(B, G * G, 9 * C, Cout, Dout)  # (B, L, 9C, Cout, Dout)
    v = authors_route(u_hat, parent_dim=3, child_dim=2)  # (B, L, Cout, Dout)
    return v.reshape(B, G * G * Cout, Dout)


def authors_classcaps(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """x (B, N_in, D); W (N_in, N_class, 16, D). Returns (B, N_class, 16)."""
    u_hat = torch.matmul(W, x[:, :, None, :, None]).squeeze(-1)  # (B, N_in, N_class, 16)
    return authors_route(u_hat, parent_dim=2, child_dim=1)


def authors_forward(model: CapsNet, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Our model's weights through the authors' layer shapes: capsule memories per layer, class lengths."""
    cfg = model.config
    h = x
    for layer in model.backbone:
        h = layer(h)
    u = authors_primary(model.primary.conv(h), cfg.D)  # (B, C·G·G, D)
    mem = [u]
    for layer in model.intermediate:
        W = layer.weight.reshape(9 * cfg.C, cfg.C * cfg.D, cfg.D)  # ours (9C, Cout, Dout, Din) = theirs
        u = authors_convcaps(u, W, cfg.C, cfg.D, cfg.grid, cfg.C, cfg.D)
        mem.append(u)
    v = authors_classcaps(u, model.classcaps.weight)
    return mem, torch.linalg.vector_norm(v, dim=-1)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-10, 1e-14), (torch.float32, 2e-4, 1e-6)])
def test_authors_layouts_equal_a_plain_reimplementation(dtype, rtol, atol):
    """CapsNet with the authors' preset computes what the authors' layer shapes compute, layer by layer,
    on the same weights: float64 to 1e-10, float32 to float32 rounding."""
    torch.manual_seed(0)
    cfg = apply_preset(RunConfig(model=ModelConfig(C=3, D=4, I=2)), "authors").model
    model = CapsNet(cfg).to(dtype).eval()
    x = torch.randn(2, 1, 28, 28, dtype=dtype)
    with torch.no_grad():
        out = model(x)
        mem, lengths = authors_forward(model, x)
    B = x.shape[0]
    for name, ref in zip(["primary", "inter1", "inter2"], mem):
        ours = out.capsules[name].reshape(B, -1, cfg.D)  # (B, G, G, C, D) memory, flattened as theirs
        torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(out.lengths, lengths, rtol=rtol, atol=atol)
    # and the correct layouts compute something else on the same weights (the test can fail)
    fixed = CapsNet(cfg.replace(capsule_layout="channel", convcaps_layout="channel")).to(dtype).eval()
    fixed.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(fixed(x).capsules["inter2"], out.capsules["inter2"], rtol=1e-3)


def test_reshape_windows_are_the_unfold_memory_reviewed():
    """unfold_capsules(layout="reshape") row by row: window l, child k, dim d is element
    (l·9C + k)·D + d of the (C·D·9, L) unfold output's memory."""
    torch.manual_seed(1)
    B, G, C, D = 2, 4, 3, 2
    u = torch.randn(B, G, G, C, D)
    win, Ho, Wo = unfold_capsules(u, 3, 1, 1, layout="reshape")
    cols = F.unfold(u.reshape(B, C * D, G, G), 3, padding=1).reshape(B, -1)  # (B, C·D·9·L) memory
    L = G * G
    for b in range(B):
        for l in (0, 5, L - 1):
            for k in (0, 7, 9 * C - 1):
                for d in range(D):
                    assert win[b * L + l, k, d] == cols[b, (l * 9 * C + k) * D + d]
    ch, _, _ = unfold_capsules(u, 3, 1, 1)
    assert not torch.equal(ch, win)
    with pytest.raises(ValueError, match="layout"):
        ConvCaps(3, 2, 3, 2, layout="nchw")


def test_preset_fields_recorded_and_hash_of_defaults_unchanged():
    a = profile("smoke", preset="authors")
    m, t = a.model, a.train
    assert (m.capsule_layout, m.convcaps_layout, m.init_std, m.class_init_std, m.squash_eps, m.prune_rule,
            m.chip_estimator, m.prune_bn) == ("reshape", "reshape", 0.5, 0.1, 1e-6, "authors", "batch_mean_r4", "fresh")
    assert (t.ccm_detached, t.select_on) == (True, "test")
    assert m.class_std == 0.1 and ModelConfig(init_std=0.4).class_std == 0.4
    assert authors_preset(profile("smoke")) == a and preset_of(a) == "authors"
    assert preset_of(profile("smoke")) == "default" and preset_of(profile("smoke", lr=1.0)) == "default"
    assert preset_of(profile("smoke", squash_eps=1e-7)) == "custom"
    # the row fields record the preset: flat() carries every late field, and a round trip keeps them
    flat = a.flat()
    assert flat["model.convcaps_layout"] == "reshape" and flat["model.squash_eps"] == 1e-6
    assert RunConfig.from_json(a.to_json()) == a
    # preset then override, and back to default
    assert profile("smoke", preset="authors", init_std=0.7).model.init_std == 0.7
    assert apply_preset(a, "default").config_hash() == profile("smoke").config_hash()
    # a late field at a non-default value changes the hash; each one separately
    base = profile("smoke")
    hashes = {base.config_hash()}
    for k, v in PRESETS["authors"]["model"].items():
        hashes.add(RunConfig(model=base.model.replace(**{k: v}), data=base.data, train=base.train).config_hash())
    assert len(hashes) == 1 + len(PRESETS["authors"]["model"])
    with pytest.raises(ConfigError, match="unknown preset"):
        apply_preset(base, "nope")
    with pytest.raises(ConfigError, match="squash_eps"):
        ModelConfig(squash_eps=0.0)
    with pytest.raises(ConfigError, match="convcaps_layout 'reshape'"):
        ModelConfig(D=16, routing="em", convcaps_layout="reshape")


def _stored_rows():
    for f in sorted(glob.glob(str(ROOT / "results" / "table*" / "smoke.csv"))):
        with open(f, newline="") as fh:
            for r in csv.DictReader(fh):
                if r.get("config_hash") and r.get("model.C"):
                    yield r


def _config_of_row(r: dict) -> RunConfig:
    """The RunConfig a stored row records (results.parse_row types the values; empty = None or default)."""
    from capslib.experiments.results import parse_row

    r = parse_row(r)
    parts = {}
    for part, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
        d = {}
        for k, v in r.items():
            if not k.startswith(part + "."):
                continue
            name = k.split(".", 1)[1]
            if isinstance(v, str) and v.startswith("["):
                v = json.loads(v)
            if v is None or v != v or v == "":  # missing / NaN: the optional fields were None
                if name in ("train_size", "test_size", "root", "backbone_widths", "class_init_std"):
                    d[name] = None
                continue
            d[name] = tuple(v) if isinstance(v, list) else v
        parts[part] = cls(**d)
    return RunConfig(**parts)


def test_stored_result_rows_keep_their_config_hash():
    """Adding the late ModelConfig fields changed no existing config hash (so no cache went stale)."""
    rows = list(_stored_rows())
    assert len(rows) >= 10
    for r in rows:
        assert _config_of_row(r).config_hash() == r["config_hash"], r["run_key"]


def authors_prune_count(channels: int, pr: float, D: int) -> int:
    """Literal transcription of the authors' rule."""
    n = int(channels * pr)
    if n > D:
        n -= n % D
    else:
        n = D
    return n


def test_authors_prune_count_rule():
    for D in (4, 6, 8, 12):
        for channels in range(D, 200, 7):
            for pr in (0.125, 0.25, 0.375, 0.5, 0.6, 0.75):
                assert prune_count(channels, pr, D, "authors") == authors_prune_count(channels, pr, D)
    # PrimaryCaps of CapsNet[20, 8] (160 channels): authors round down, the paper (default) up
    assert [prune_count(160, pr, 8, "authors") for pr in (0.125, 0.25, 0.375)] == [16, 40, 56]
    assert [prune_count(160, pr, 8) for pr in (0.125, 0.25, 0.375)] == [24, 40, 64]
    assert prune_count(12, 0.25, 4) == 4 and prune_count(12, 0.25, 4, "authors") == 4  # §3.4's example
    assert prune_count(160, 0.0, 8, "authors") == 0
    with pytest.raises(ValueError, match="prune rule"):
        prune_count(16, 0.25, 4, "down")


def test_make_plan_and_rebuild_follow_the_config_fields():
    """make_plan reads prune_rule from the config; rebuild with prune_bn="fresh" leaves new BatchNorms
    (weight 1, bias 0, running stats 0 / 1) but still copies the kept conv weights."""
    torch.manual_seed(0)
    cfg = ModelConfig(C=20, D=8, I=0, prune_rule="authors", prune_bn="fresh")
    model = CapsNet(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.weight.data.uniform_(0.5, 2)
    scores = {n: torch.rand(w) for n, w in zip(("conv1", "conv2", "conv3", "primary"), (40, 80, 160, 160))}
    plan = make_plan(model, scores, 0.125)
    assert plan.after.C == 18 and plan.layer("primary").n_removed == 16
    assert make_plan(model, scores, 0.125, rule="paper").after.C == 17
    new = rebuild(model, plan)
    bn = new.backbone[0].bn
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    keep = torch.tensor(plan.layers[0].kept)
    assert torch.equal(new.backbone[0].conv.weight, model.backbone[0].conv.weight[keep])
    copied = rebuild(model, plan, fresh_bn=False)
    assert torch.equal(copied.backbone[0].bn.running_mean, model.backbone[0].bn.running_mean[keep])


def test_authors_chip_estimator_against_float64_svds():
    """batch_mean_r4: CI of the batch-mean map rounded to 4 decimals, with float32 nuclear norms;
    against float64 SVDs of the same rounded map, to float32 accuracy. Rounding is visible: a
    channel whose mean is below 5e-5 everywhere is exactly zero and scores exactly 0."""
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(16, 6, 5, 5, generator=g)  # (N, C, H, W)
    maps[:, 2] *= 1e-5  # mean < 5e-5: rounds to zero
    got = ci_scores(maps, estimator="batch_mean_r4")  # (C,)
    F_ = np.round(maps.double().mean(0).reshape(6, -1).numpy(), 4)  # (C, P)
    nuc = lambda a: np.linalg.svd(a, compute_uv=False).sum()  # noqa: E731
    ref = np.array([nuc(F_) - nuc(np.where(np.arange(6)[:, None] == c, 0.0, F_)) for c in range(6)])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-5)
    assert got[2] == 0.0
    # without the rounding (exact batch_mean) that channel scores above zero
    assert ci_scores(maps, estimator="batch_mean")[2] > 0
    assert torch.equal(authors_channel_independence(maps.mean(0)), got)
