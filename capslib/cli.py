"""The ``capslib`` command.

    capslib train --dataset fashion-mnist --C 10 --D 8 --I 2 --epochs 3 --out run.json

Every config field is an option (``capslib train --help`` lists them); a
``--profile`` supplies the defaults and options override it.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from typing import Any, Callable, Optional

from .engine.config import PROFILES, ROUTINGS, DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides, profile

__all__ = ["main", "add_config_options", "config_from_args"]

_HELP = {
    "C": "capsule types in PrimaryCaps and each IntermediateCaps",
    "D": "capsule dimension",
    "I": "number of IntermediateCaps (ConvCaps) layers, 0..",
    "class_dim": "class capsule dimension M",
    "backbone_widths": "three backbone widths (default C·D/4 C·D/2 C·D)",
    "backbone_kernels": "three backbone kernel sizes",
    "backbone_strides": "three backbone strides",
    "backbone_padding": "three backbone paddings",
    "routing": "routing of the ConvCaps and class capsules: dynamic (Sabour et al.), em, self or vb (seed 002)",
    "routing_iters": "routing iterations r (dynamic, EM, VB)",
    "init_std": "std of the capsule transformation matrices' normal init",
    "capsule_layout": "'channel' (correct) or 'reshape' (authors' code)",
    "recompute_votes": "recompute capsule votes in backward to save memory",
    "dataset": "cifar10, mnist or fashion-mnist",
    "root": "data folder (default $CAPSLIB_DATA or ~/.cache/capslib/data)",
    "train_size": "training images to use (default all after the validation split)",
    "val_size": "validation images held out of the training set",
    "test_size": "test images to report on (default all)",
    "split_seed": "seed of the train/validation split",
    "epochs": "training epochs",
    "batch_size": "batch size",
    "lr": "Adam learning rate",
    "weight_decay": "Adam weight decay",
    "alpha": "CCM weight α in margin − α·ΣCCM (0: margin loss only)",
    "ccm_detached": "compute CCM on detached maps, as the authors' code (no gradient)",
    "select_on": "choose the best checkpoint on 'val' (correct) or 'test' (authors' code)",
    "seed": "random seed of weights and batch order",
    "device": "auto, cpu or cuda",
    "amp": "bf16 mixed precision on GPU (squash and routing stay fp32)",
    "collapse_epochs": "epochs near chance that mark a run as collapsed",
    "probe_every_epoch": "probe dead capsules on the validation set every epoch",
    "loss": "class loss: margin (eq. 6), spread (Hinton et al. 2018) or auto (spread for em and vb)",
}

_CHOICES = {"capsule_layout": ["channel", "reshape"], "select_on": ["val", "test"],
            "dataset": ["cifar10", "mnist", "fashion-mnist"], "routing": list(ROUTINGS),
            "loss": ["auto", "margin", "spread"]}

_PARTS = (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig))


def _str2bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _option_type(f: dataclasses.Field) -> tuple[Callable[[str], Any], Optional[int]]:
    """(converter, nargs) for a dataclass field, from its default value."""
    default = f.default if f.default is not dataclasses.MISSING else None
    ann = str(f.type)
    if isinstance(default, bool) or ann == "bool":
        return _str2bool, None
    if "tuple" in ann:
        return int, 3
    if isinstance(default, float) or "float" in ann:  # float and Optional[float] (class_init_std, squash_bias)
        return float, None
    if isinstance(default, int) or "int" in ann:
        return int, None
    return str, None


def add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--name`` option per config field (model, data, train), all defaulting to the profile."""
    parser.add_argument("--profile", default="smoke", choices=sorted(PROFILES),
                        help="preset the options below start from (default: smoke)")
    parser.add_argument("--config", metavar="JSON", help="start from a RunConfig JSON file instead of a profile")
    seen = set()
    for part, cls in _PARTS:
        group = parser.add_argument_group(f"{part} options")
        for f in dataclasses.fields(cls):
            if f.name in skip or f.name in seen or f.name in ("in_channels", "image_size", "num_classes"):
                continue
            seen.add(f.name)
            conv, nargs = _option_type(f)
            choices = _CHOICES.get(f.name)
            group.add_argument(f"--{f.name}", dest=f"cfg_{f.name}", type=conv, nargs=nargs, default=None,
                               metavar=None if choices else f.name.upper(), choices=choices,
                               help=_HELP.get(f.name, f.name.replace("_", " ")))


def _config_file(path: str) -> RunConfig:
    """A RunConfig JSON file, with errors that name the file and what is wrong with it."""
    import json

    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path}: cannot be read ({getattr(err, 'strerror', None) or err})") from None
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--config {path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"--config {path}: expected a JSON object (a RunConfig, as 'capslib train' writes "
                         f"under \"config\"), got {type(fields).__name__}")
    if "config" in fields and "config_hash" in fields:  # a result JSON: take its config
        fields = fields["config"]
    try:
        return RunConfig.from_dict(fields)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"--config {path}: not a valid RunConfig ({err})") from None


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Profile (or --config file) + the options the user gave."""
    if getattr(args, "config", None):
        base = _config_file(args.config)
    else:
        base = profile(args.profile)
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    return apply_overrides(base, **overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from .engine.atomic import check_writable
    from .engine.train import fit

    cfg = config_from_args(args)
    out = args.out or f"runs/train-{cfg.config_hash()}.json"
    check_writable(out, "--out")  # refused now, not after training
    if args.checkpoint_dir:
        check_writable(args.checkpoint_dir, "--checkpoint-dir", folder=True)
    print(f"capslib train: CapsNet[C={cfg.model.C}, D={cfg.model.D}, I={cfg.model.I}], {cfg.model.routing} routing, "
          f"{cfg.loss} loss, on {cfg.data.dataset} "
          f"(profile {cfg.profile}, config {cfg.config_hash()})", flush=True)
    result, _ = fit(cfg, checkpoint_dir=args.checkpoint_dir, progress=not args.quiet)
    try:
        result.to_json(out)
    except OSError as err:  # the path went bad during training: keep the result somewhere
        import tempfile
        from pathlib import Path

        rescue = Path(tempfile.gettempdir()) / f"capslib-train-{cfg.config_hash()}.json"
        result.to_json(rescue)
        print(f"capslib train: error: could not write {out} ({err.strerror or err}); the result was saved to "
              f"{rescue} instead", file=sys.stderr)
        out = str(rescue)
    dead = ", ".join(f"{k} {v:.0%}" for k, v in result.dead_fraction.items())
    print(f"test accuracy {result.test_acc:.4f} | best val {result.best_val_acc:.4f} (epoch {result.best_epoch}) | "
          f"{result.params:,} params | {result.wall_time:.1f}s on {result.provenance['device']}")
    print(f"dead capsule types (test set): {dead}")
    for w in result.warnings:
        print(f"warning: {w}")
    print(f"result written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capslib",
        description="Deep capsule networks, vanishing activations and channel pruning "
                    "(Sahu & Altahhan 2024): train, prune, sweep and report.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train one CapsNet and write a JSON result",
                       description="Train CapsNet[C, D, I] with margin − α·CCM loss; print progress; write a JSON "
                                   "result with the config, accuracies, per-epoch history, dead-capsule fractions, "
                                   "parameter count, wall time and provenance.")
    add_config_options(p)
    p.add_argument("--out", help="JSON result path (default runs/train-<config hash>.json)")
    p.add_argument("--checkpoint-dir", help="keep last.pt/best.pt here; an existing last.pt is resumed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    for module in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue
        if hasattr(mod, "register_cli"):
            mod.register_cli(sub)
    _describe_sweep_commands(sub)
    return parser


def _experiment_names() -> str:
    from .experiments.grids import EXPERIMENTS

    return ", ".join(EXPERIMENTS)


def _describe_sweep_commands(sub) -> None:
    """``capslib sweep`` / ``report``: name every experiment (from :data:`capslib.experiments.grids.EXPERIMENTS`,
    so a new one is listed too) and print ``sweep list`` in aligned columns."""
    choices = getattr(sub, "choices", {}) or {}
    names = _experiment_names()
    sweep = choices.get("sweep")
    if sweep is not None:
        sweep.description = (f"Run the grid of a named experiment ({names}) as independent runs. Finished points "
                             "are skipped on re-run; failures are retried, then recorded. 'capslib sweep list' "
                             "lists the experiments with their run counts.")
        for action in sweep._actions:
            if action.dest == "name":
                action.help = f"experiment name ({names}), or 'list'"
        run = sweep.get_default("func")
        if run is not None:
            sweep.set_defaults(func=lambda args: _sweep_list() if args.name == "list" else run(args))
    report = choices.get("report")
    if report is not None:
        for action in report._actions:
            if action.dest == "name":
                action.help = f"experiment name ({names})"


def _sweep_list() -> int:
    """``capslib sweep list``: every experiment, its number of runs per profile and its title, aligned."""
    from .experiments.grids import EXPERIMENTS

    header = ("experiment", "runs (smoke)", "runs (paper)", "title")
    rows = [(name, str(len(exp.grid("smoke"))), str(len(exp.grid("paper"))), exp.title)
            for name, exp in EXPERIMENTS.items()]
    w = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for r in [header, *rows]:
        print(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]}")
    return 0


#: Modules that add subcommands: each has ``register_cli(subparsers)``.
_COMMAND_MODULES = ["capslib.cli_prune", "capslib.experiments.sweeps", "capslib.book.batch", "capslib.book.build"]


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError) as err:  # config errors, missing data, divergence
        print(f"capslib {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
