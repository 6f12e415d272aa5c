"""Sweeps: run a named experiment's grid as independent, resumable runs.

    capslib sweep list
    capslib sweep table2 --profile fmnist --seeds 3
    capslib sweep table3 --backend ray --address ray://head:10001

* Every grid point goes through the same code as ``capslib train`` /
  ``capslib prune`` / ``capslib depth`` and yields result rows.
* All rows of a point are appended to ``results/<experiment>/<profile>.csv``
  in one atomic write, tagged with the point's ``point_key``; a re-run skips
  points whose key is stored, so it never duplicates or loses rows.
* A failing point is retried ``retries`` times, then stored as ``failed``
  with its error, and the sweep goes on.
* The Ray backend runs each point as a Ray task (``num_gpus=1`` where the
  cluster has GPUs, one CPU otherwise); rows come back to the driver, which
  alone writes the store.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from .config import RunConfig, apply_overrides
from .experiments import EXPERIMENTS, Point, get_experiment
from .provenance import capslib_version
from .results import ResultsStore, failed_row, parse_value, run_row

__all__ = ["point_key", "run_point", "sweep", "SweepSummary", "parse_overrides", "register_cli"]


def point_key(experiment: str, cfg: RunConfig, point: Point) -> str:
    """Identity of one grid point's run: experiment, config, point kind/PR/depth, capslib version."""
    blob = f"{experiment}|{cfg.config_hash()}|{point.key_extra()}|{capslib_version()}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _tag(rows: list[dict[str, Any]], experiment: str, cfg: RunConfig, point: Point) -> list[dict[str, Any]]:
    key = point_key(experiment, cfg, point)
    for r in rows:
        r.update(point_key=key, experiment=experiment, kind=point.kind, pr=point.pr,
                 I_after="" if point.I_after is None else point.I_after, label=point.label,
                 **{"grid.C": cfg.model.C, "grid.D": cfg.model.D, "grid.I": cfg.model.I})
    return rows


def run_point(experiment: str, point: Point, cfg: RunConfig, progress: bool = False,
              checkpoint_root: Optional[str] = None) -> list[dict[str, Any]]:
    """Run one grid point and return its result rows (the caller writes them to the store).

    With ``checkpoint_root``, the point checkpoints under ``<root>/<point_key>/`` so an
    interrupted point resumes (epochs for a training, stages for a pipeline).
    """
    ckpt = None
    if checkpoint_root is not None:
        ckpt = Path(checkpoint_root) / point_key(experiment, cfg, point)
    if point.kind == "train":
        from .train import fit

        result, _ = fit(cfg, progress=progress, checkpoint_dir=ckpt)
        rows = [run_row(cfg, result, experiment=experiment, stage="train", key_extra=point.key_extra())]
        return _tag(rows, experiment, cfg, point)
    if point.kind == "snapshots":
        from .depth_study import study_row

        return _tag([study_row(cfg, point, experiment, checkpoint_dir=ckpt, progress=progress)], experiment, cfg, point)
    from .pipeline import depth_search, prune_pipeline

    with tempfile.TemporaryDirectory() as tmp:  # the pipeline writes its stage rows here; we hand them back
        scratch = ResultsStore(Path(tmp) / "rows.csv")
        if point.kind == "prune":
            prune_pipeline(cfg, point.pr, I=point.I_after, checkpoint_dir=ckpt, store=scratch,
                           experiment=experiment, progress=progress)
            rows = scratch.read().to_dict(orient="records")
        elif point.kind == "depth":
            res = depth_search(cfg, pr=point.pr or None, max_I=point.max_I or 10, checkpoint_dir=ckpt,
                               store=scratch, experiment=experiment, progress=progress)
            rows = scratch.read().to_dict(orient="records")
            summary = dict(rows[-1], stage="depth_summary", max_depth="" if res.max_depth is None else res.max_depth,
                           collapsed_at="" if res.collapsed_at is None else res.collapsed_at,
                           depths_tried=json.dumps([t.I for t in res.trials]))
            summary["run_key"] = f"{summary['run_key']}-summary"
            rows.append(summary)
        else:
            raise ValueError(f"unknown point kind {point.kind!r}")
    return _tag(rows, experiment, cfg, point)


def _run_with_retries(experiment: str, point: Point, cfg: RunConfig, retries: int,
                      checkpoint_root: Optional[str] = None) -> tuple[list[dict], Optional[str]]:
    error = None
    for _attempt in range(retries + 1):
        try:
            return run_point(experiment, point, cfg, checkpoint_root=checkpoint_root), None
        except Exception:  # a failed point must not stop the sweep
            error = traceback.format_exc()
    rows = [failed_row(cfg, error or "unknown error", experiment=experiment, stage=point.kind,
                       key_extra=point.key_extra())]
    return _tag(rows, experiment, cfg, point), error


@dataclass
class SweepSummary:
    experiment: str
    profile: str
    store: str
    planned: int
    skipped: int
    done: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    wall_time: float = 0.0


def plan(experiment: str, profile: str, seeds: int = 1,
         overrides: Optional[dict[str, Any]] = None) -> list[tuple[Point, RunConfig]]:
    """Every (point, config) a sweep would run, seeds included."""
    exp = get_experiment(experiment)
    out = []
    for seed in range(seeds):
        for point in exp.grid(profile):
            cfg = point.config(profile, seed=seed)
            if overrides:
                cfg = apply_overrides(cfg, **overrides)
            out.append((point, cfg))
    return out


def sweep(experiment: str, profile: Optional[str] = None, seeds: int = 1, backend: str = "local",
          address: Optional[str] = None, retries: int = 1, dry_run: bool = False,
          overrides: Optional[dict[str, Any]] = None, results_root: Optional[str] = None,
          progress: bool = True, checkpoint_root: Optional[str] = None) -> SweepSummary:
    """Run (or with ``dry_run`` list) the grid of ``experiment``; see the module docstring.

    ``checkpoint_root`` (CLI ``--checkpoints``, default ``runs/sweeps/<experiment>``) keeps each point's
    checkpoints, so an interrupted point resumes; pass ``""`` to keep none.
    """
    exp = get_experiment(experiment)
    profile = profile or exp.default_profile
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    store = ResultsStore.for_experiment(experiment, profile, results_root)
    if checkpoint_root is None:
        checkpoint_root = str(Path("runs") / "sweeps" / experiment)
    checkpoint_root = checkpoint_root or None
    runs = plan(experiment, profile, seeds, overrides)
    done_keys = store.done_keys("point_key")
    todo = [(p, c) for p, c in runs if point_key(experiment, c, p) not in done_keys]
    summary = SweepSummary(experiment, profile, str(store.path), planned=len(runs), skipped=len(runs) - len(todo))
    if dry_run:
        for p, c in runs:
            state = "done" if point_key(experiment, c, p) in done_keys else "todo"
            print(f"[{state}] seed={c.train.seed} {p.describe()}  (config {c.config_hash()})")
        print(f"{len(runs)} runs, {summary.skipped} already in {store.path}")
        return summary
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"sweep {experiment} [{profile}]", disable=not progress, unit="run")

    def record(rows: list[dict[str, Any]], error: Optional[str]) -> None:
        store.append_many(rows)
        if error:
            summary.failed += 1
            summary.errors.append(error.strip().splitlines()[-1])
        else:
            summary.done += 1
        bar.update(1)
        bar.set_postfix(done=summary.done, failed=summary.failed, remaining=len(todo) - summary.done - summary.failed)

    if backend == "local":
        for point, cfg in todo:
            rows, error = _run_with_retries(experiment, point, cfg, retries, checkpoint_root)
            record(rows, error)
    else:
        for rows, error in _ray_map(experiment, todo, retries, address, checkpoint_root):
            record(rows, error)
    bar.close()
    summary.wall_time = time.perf_counter() - t0
    return summary


def _ray_map(experiment: str, todo: list[tuple[Point, RunConfig]], retries: int, address: Optional[str],
             checkpoint_root: Optional[str]):
    """Yield (rows, error) per point as the Ray tasks finish."""
    try:
        import ray
    except ImportError as err:
        raise RuntimeError("the ray backend needs Ray: pip install 'capslib[ray]'") from err
    started_here = not ray.is_initialized()
    if started_here:
        env = {k: os.environ[k] for k in ("CAPSLIB_DATA", "CAPSLIB_RESULTS", "CAPSLIB_OFFLINE") if k in os.environ}
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=False,
                 include_dashboard=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        opts = {"num_gpus": 1} if gpus > 0 else {"num_cpus": 1}
        task = ray.remote(**opts)(_run_with_retries)
        pending = [task.remote(experiment, p, c, retries, checkpoint_root) for p, c in todo]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started_here:
            ray.shutdown()


def parse_overrides(items: Optional[list[str]]) -> dict[str, Any]:
    """``["train_size=512", "epochs=2"]`` -> ``{"train_size": 512, "epochs": 2}`` (ints, floats, bools, strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like name=value")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


# ---------------------------------------------------------------------------------------- CLI

def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.name == "list":
        print(f"{'experiment':10s} {'runs (smoke)':>12s} {'runs (paper)':>12s}  title")
        for name, exp in EXPERIMENTS.items():
            print(f"{name:10s} {len(exp.grid('smoke')):12d} {len(exp.grid('paper')):12d}  {exp.title}")
        return 0
    summary = sweep(args.name, profile=args.profile, seeds=args.seeds, backend=args.backend, address=args.address,
                    retries=args.retries, dry_run=args.dry_run, overrides=parse_overrides(args.set),
                    results_root=args.results, progress=not args.quiet, checkpoint_root=args.checkpoints)
    if not args.dry_run:
        print(f"sweep {summary.experiment} [{summary.profile}]: {summary.done} done, {summary.failed} failed, "
              f"{summary.skipped} skipped (already stored) in {summary.wall_time:.0f}s -> {summary.store}")
        for e in summary.errors:
            print(f"  failed: {e}")
    return 1 if summary.failed else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    rep = report(args.name, profile=args.profile, results_root=args.results, out_dir=args.out)
    print(rep.text())
    return 0


def register_cli(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run a paper experiment grid (resumable; local or Ray)",
                       description="Run the grid of a named experiment (table1..table5, fig3) as independent runs. "
                                   "Finished points are skipped on re-run; failures are retried, then recorded. "
                                   "'capslib sweep list' lists the experiments.")
    p.add_argument("name", help="experiment name, or 'list'")
    p.add_argument("--profile", default=None, help="smoke, fmnist or paper (default: the experiment's own)")
    p.add_argument("--seeds", type=int, default=1, help="run seeds 0..N-1 (default 1)")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="where runs execute")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--retries", type=int, default=1, help="retries of a failing point before it is recorded")
    p.add_argument("--dry-run", action="store_true", help="print the runs, run nothing")
    p.add_argument("--set", nargs="*", metavar="NAME=VALUE", help="override config fields of every run")
    p.add_argument("--results", default=None, help="results folder (default results/ or $CAPSLIB_RESULTS)")
    p.add_argument("--checkpoints", default=None,
                   help="per-point checkpoint folder, so an interrupted point resumes (default runs/sweeps/<name>; "
                        "'' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sweep)

    r = sub.add_parser("report", help="the paper's table beside ours, with deltas",
                       description="Print the paper's table beside the stored results (mean ± std over seeds), "
                                   "with deltas; write a CSV and a seaborn figure.")
    r.add_argument("name", help="experiment name (table1..table5, fig3)")
    r.add_argument("--profile", default=None, help="which store to read (default: the experiment's own)")
    r.add_argument("--results", default=None, help="results folder (default results/)")
    r.add_argument("--out", default=None, help="folder for the CSV and PNG (default: beside the store)")
    r.set_defaults(func=_cmd_report)
