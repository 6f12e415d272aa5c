"""Training and evaluation: Adam, margin − α·CCM, per-epoch probes, checkpoints and resume.

``fit(cfg)`` trains a CapsNet described by a :class:`RunConfig` and returns a
:class:`RunResult`. Guarantees:

* **Determinism.** The seed fixes the initial weights; each epoch's batch
  order depends only on (seed, epoch). On CPU the same seed gives identical
  metrics.
* **Checkpoints.** ``last.pt`` (model, optimiser, history; written atomically
  at the end of every epoch) and ``best.pt`` (the model selected on validation,
  or on test with the faithful ``select_on="test"``). Both are plain
  ``state_dict``s loadable with ``torch.load(..., weights_only=True)``.
* **Resume.** A run restarted with the same ``checkpoint_dir`` continues from
  ``last.pt`` and ends with the same metrics as an uninterrupted run.
* **Plateau.** With ``train.patience`` > 0 the run stops once validation
  accuracy has not improved for that many epochs (``train.epochs`` is the cap).
* **Signal.** Each epoch's record holds, at its first step, the gradient, implied
  and actual Adam update per parameter group and the capsule lengths
  (:mod:`capslib.engine.criterion`).
* **NaN.** A non-finite loss stops the run with :class:`TrainingDiverged`;
  ``last.pt`` still holds the last good epoch.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from .atomic import CheckpointError, load_checkpoint, save_atomic, save_text_atomic
from .config import RunConfig
from .criterion import gradient_signal, length_signal, snapshot, step_signal
from .data import DataSplits, load_splits
from .losses import total_loss
from .model import CapsNet, count_params
from .probes import ActivationProbe, ProbeResult
from .provenance import provenance, resolve_device
from .routing import routing_dtype
from .routing_alt import spread_margin, spread_total_loss

__all__ = ["TrainingDiverged", "EpochRecord", "RunResult", "evaluate", "fit", "load_model"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float
    margin: float
    ccm: float
    wall_time: float
    dead: dict[str, float] = field(default_factory=dict)  # layer -> dead fraction (paper 000)
    dead_002: dict[str, float] = field(default_factory=dict)  # layer -> dead fraction (paper 002)
    test_acc: Optional[float] = None  # only with select_on="test"
    #: At the epoch's first step (:mod:`capslib.engine.criterion`): per parameter group the gradient of
    #: the trained loss, the Adam update it implies and the one Adam made; the capsule lengths.
    signal: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """Everything ``capslib train`` writes as JSON."""

    config: dict[str, Any]
    config_hash: str
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_acc: float
    test_acc: float
    params: int
    wall_time: float
    collapsed: bool
    probe: dict[str, Any]
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # e.g. "finished at chance" (see _chance_warnings)

    @property
    def dead_fraction(self) -> dict[str, float]:
        return self.probe["dead_fraction"]["paper000"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: Optional[str | os.PathLike] = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            save_text_atomic(path, text)
        return text


@torch.no_grad()
def evaluate(model: CapsNet, data: DataSplits, split: str, batch_size: int = 256,
             device: Optional[torch.device] = None, probe: bool = True) -> tuple[float, Optional[ProbeResult]]:
    """Accuracy on ``split`` (and the capsule activation probe over the same pass)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    correct, total = 0, 0
    acc_probe = ActivationProbe() if probe else None
    try:
        for x, y in data.batches(split, batch_size, device=device):
            out = model(x)
            correct += (out.prediction == y).sum().item()
            total += len(y)
            if acc_probe is not None:
                acc_probe.update(out.capsules, out.activations)
    finally:
        model.train(was_training)
    return correct / max(total, 1), (acc_probe.result() if acc_probe is not None else None)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _is_collapsed(history: list[dict[str, Any]], num_classes: int, k: int) -> bool:
    """Validation accuracy within 2 points of chance for the last ``k`` epochs."""
    if len(history) < k:
        return False
    chance = 1.0 / num_classes
    return all(abs(h["val_acc"] - chance) <= 0.02 for h in history[-k:])


def fit(
    cfg: RunConfig,
    data: Optional[DataSplits] = None,
    model: Optional[CapsNet] = None,
    checkpoint_dir: Optional[str | os.PathLike] = None,
    progress: bool = True,
    stop_after_epochs: Optional[int] = None,
) -> tuple[RunResult, CapsNet]:
    """Train a CapsNet as ``cfg`` says; return its :class:`RunResult` and the selected model.

    Args:
        cfg: the run's configuration.
        data: preloaded splits (loaded from ``cfg.data`` when None).
        model: a model to train instead of a fresh ``CapsNet(cfg.model)``
            (the pruning pipeline passes rebuilt models).
        checkpoint_dir: where ``last.pt`` / ``best.pt`` go; an existing
            ``last.pt`` there is resumed.
        progress: show tqdm bars.
        stop_after_epochs: stop after this many epochs *in this call* (to
            simulate an interruption in tests); the result then covers the
            epochs done so far.
    """
    tc = cfg.train
    device = resolve_device(tc.device)
    data = data if data is not None else load_splits(cfg.data)
    _seed_everything(tc.seed)
    if model is None:
        model = CapsNet(cfg.model)
    model = model.to(device=device, dtype=tc.torch_dtype)  # CapsNet.forward casts its input to match
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    use_amp = tc.amp and device.type == "cuda"

    history: list[dict[str, Any]] = []
    best_score, best_epoch, start_epoch = -1.0, 0, 0
    best_state = None
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
        last = ckpt / "last.pt"
        if last.exists():
            restart = f"this run (or delete the folder {ckpt})"
            state = load_checkpoint(last, device, keys=_LAST_KEYS, restart=restart)
            if state["config_hash"] != cfg.config_hash():
                raise ValueError(f"{last} belongs to another config ({state['config_hash']} != {cfg.config_hash()}); "
                                 "use a fresh checkpoint_dir")
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                history = json.loads(state["history"])
                start_epoch, best_score, best_epoch = int(state["epoch"]), float(state["best_score"]), int(state["best_epoch"])
            except (RuntimeError, ValueError, KeyError, TypeError) as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                raise CheckpointError(f"checkpoint {last} does not fit this run ({first}). Delete it to restart "
                                      f"{restart} from scratch, or restore it from a backup.") from None
            best_state = load_checkpoint(ckpt / "best.pt", device, restart=restart)

    t_start = time.perf_counter() - sum(h["wall_time"] for h in history)
    epochs_run = 0
    for epoch in range(start_epoch, tc.epochs):
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
        if tc.patience and epoch - best_epoch >= tc.patience:  # the plateau rule (also on a resumed run)
            if progress:
                tqdm.write(f"plateau: validation accuracy has not improved for {tc.patience} epochs (best: "
                           f"epoch {best_epoch}); stopping")
            break
        t0 = time.perf_counter()
        model.train()
        sums = {"loss": 0.0, "margin": 0.0, "ccm": 0.0, "correct": 0, "n": 0}
        steps = data.num_batches("train", tc.batch_size)
        bar = tqdm(data.batches("train", tc.batch_size, shuffle=True, seed=tc.seed, epoch=epoch, device=device),
                   total=data.num_batches("train", tc.batch_size), desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not progress, leave=False)
        for step, (x, y) in enumerate(bar):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = model(x)
                maps = out.feature_maps.values() if tc.alpha > 0 else ()
                if cfg.loss == "spread":  # EM / VB (capslib.engine.routing_alt); "margin" is then the spread loss
                    m = spread_margin((epoch * steps + step) / max(tc.epochs * steps - 1, 1))
                    loss, margin, ccm = spread_total_loss(routing_dtype(out.lengths), y, m, maps, tc.alpha, tc.ccm_detached)
                else:
                    loss, margin, ccm = total_loss(routing_dtype(out.lengths), y, maps, tc.alpha, tc.ccm_detached)
            if not torch.isfinite(loss):
                where = ""
                if ckpt is not None and (ckpt / "last.pt").exists():
                    where = f"; the last good checkpoint is {ckpt / 'last.pt'} (end of epoch {epoch})"
                elif ckpt is not None:
                    where = (f"; no checkpoint was written yet (the first, {ckpt / 'last.pt'}, is saved at the end "
                             f"of epoch 1), so this run restarts from scratch")
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                    f"(margin {margin.item():.4g}, ccm {ccm.item():.4g}){where}. "
                    f"Try a smaller lr or init_std.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step == 0:  # the training signal, per parameter group, at the first step of every epoch
                signal = {"step": epoch * steps, "groups": gradient_signal(model, tc.lr),
                          "lengths": length_signal(out)}
                before = snapshot(model)
            opt.step()
            if step == 0:
                for name, d in step_signal(model, before).items():
                    signal["groups"][name].update(d)
            b = len(y)
            sums["loss"] += loss.item() * b
            sums["margin"] += margin.item() * b
            sums["ccm"] += float(ccm.detach()) * b
            sums["correct"] += (out.prediction == y).sum().item()
            sums["n"] += b
            bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.4f}", acc=f"{sums['correct'] / sums['n']:.3f}")
        val_acc, probe = evaluate(model, data, "val", device=device, probe=tc.probe_every_epoch)
        rec = EpochRecord(
            epoch=epoch + 1,
            train_loss=sums["loss"] / sums["n"],
            train_acc=sums["correct"] / sums["n"],
            val_acc=val_acc,
            margin=sums["margin"] / sums["n"],
            ccm=sums["ccm"] / sums["n"],
            wall_time=time.perf_counter() - t0,
            dead=probe.dead_fraction("paper000") if probe else {},
            dead_002=probe.dead_fraction("paper002") if probe else {},
            signal=signal,
        )
        score = val_acc
        if tc.select_on == "test":
            rec.test_acc, _ = evaluate(model, data, "test", device=device, probe=False)
            score = rec.test_acc
        history.append(asdict(rec))
        if score > best_score:
            best_score, best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if ckpt is not None:
                save_atomic(best_state, ckpt / "best.pt")
        if ckpt is not None:
            save_atomic({
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch + 1,
                "history": json.dumps(history),
                "best_score": best_score,
                "best_epoch": best_epoch,
                "config_hash": cfg.config_hash(),
            }, ckpt / "last.pt")
        if progress:
            dead = ", ".join(f"{k} {v:.0%}" for k, v in rec.dead.items())
            tqdm.write(f"epoch {epoch + 1}/{tc.epochs}: loss {rec.train_loss:.4f} train {rec.train_acc:.3f} "
                       f"val {rec.val_acc:.3f} | dead {dead} | {rec.wall_time:.1f}s")
        epochs_run += 1

    if best_state is not None:
        model.load_state_dict(best_state)
    test_acc, final_probe = evaluate(model, data, "test", device=device, probe=True)
    best_val = max((h["val_acc"] for h in history), default=float("nan"))
    result = RunResult(
        config=cfg.to_dict(),
        config_hash=cfg.config_hash(),
        history=history,
        best_epoch=best_epoch,
        best_val_acc=best_val,
        test_acc=test_acc,
        params=count_params(model),
        wall_time=time.perf_counter() - t_start,
        collapsed=_is_collapsed(history, data.num_classes, tc.collapse_epochs),
        probe=final_probe.to_dict(),
        provenance=provenance(device),
        warnings=_chance_warnings(cfg, test_acc, data.num_classes),
    )
    return result, model


#: What a ``last.pt`` written by :func:`fit` holds.
_LAST_KEYS = ("model", "optimizer", "epoch", "history", "best_score", "best_epoch", "config_hash")


def _chance_warnings(cfg: RunConfig, test_acc: float, num_classes: int) -> list[str]:
    """A flag for a run that finished at chance (within 2 points of 1/classes), with the likely cause."""
    chance = 1.0 / num_classes
    if not test_acc <= chance + 0.02:
        return []
    lr = cfg.train.lr
    if lr >= 0.05:
        hint = f"lr={lr:g} is far above Adam's usual 1e-4..1e-2; try --lr 1e-3"
    elif lr <= 1e-6:
        hint = f"lr={lr:g} is too small to move the weights; try --lr 1e-3"
    else:
        hint = ("check the learning rate, init_std (0.01 collapses) and the depth I (deep CapsNets collapse: "
                "the paper's subject)")
    return [f"finished at chance: test accuracy {test_acc:.1%}, chance {chance:.1%} for {num_classes} classes; "
            f"the model learned nothing ({hint})"]


def load_model(config: RunConfig | dict | str, state_path: str | os.PathLike, device: str = "cpu") -> CapsNet:
    """Rebuild a CapsNet from its config and load a ``state_dict`` saved by :func:`fit`."""
    if isinstance(config, str):
        config = RunConfig.from_json(config)
    elif isinstance(config, dict):
        config = RunConfig.from_dict(config)
    model = CapsNet(config.model).to(config.train.torch_dtype)
    state = load_checkpoint(state_path, device)
    try:
        model.load_state_dict(state["model"] if "model" in state else state)
    except (RuntimeError, TypeError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {state_path} does not fit CapsNet[C={config.model.C}, D={config.model.D}, "
                              f"I={config.model.I}] ({first}). Delete it to rerun the run that wrote it, or restore "
                              f"it from a backup.") from None
    return model.to(device)
