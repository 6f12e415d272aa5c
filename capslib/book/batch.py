"""Batches of executed notebooks: ``capslib papermill NOTEBOOK --grid C=10,20 D=8 PR=0,0.25``.

Each grid point runs the notebook once with papermill into
``runs/<name>/<point>.ipynb``. Every point gets its own results store (the
kernel sees ``CAPSLIB_RESULTS=runs/<name>/<point>/``), so the rows a point
writes can be attributed to it; they are collected, with the point's
parameters as extra columns, into ``runs/<name>/rows.csv``.

Grid names are checked against the notebook's ``parameters`` cell before
anything runs.
"""
from __future__ import annotations

import argparse
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..engine.atomic import check_writable
from ..experiments.results import ResultsStore, parse_value

__all__ = ["parse_grid", "grid_points", "point_name", "run_batch", "register_cli"]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["C=10,20", "D=8"]`` -> ``{"C": [10, 20], "D": [8]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"grid item {item!r} must look like NAME=v1,v2,...")
        name, values = item.split("=", 1)
        vals = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not vals:
            raise ValueError(f"grid item {item!r} has no values")
        grid[name.strip()] = vals
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def point_name(point: dict[str, Any]) -> str:
    """A file-name-safe name: ``C10_D8_PR0.25``."""
    return "_".join(f"{k}{v}" for k, v in point.items()).replace("/", "-").replace(" ", "")


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, Any]:
    """The parameters the notebook declares (papermill's own inspection of the ``parameters`` cell)."""
    import papermill as pm

    params = pm.inspect_notebook(str(notebook))
    if not params:
        raise ValueError(f"{notebook} has no cell tagged 'parameters'")
    return {name: p.get("default") for name, p in params.items()}


def describe_failure(err: BaseException, output: str) -> str:
    """One line that says what failed: the notebook's own exception and cell, and where to look.

    papermill's ``PapermillExecutionError`` prints as an empty string; its ``ename``/``evalue``
    carry the error raised in the notebook."""
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename:
        cell = getattr(err, "cell_index", None)
        where = f" in cell {cell}" if isinstance(cell, int) else ""
        text = f"{ename}: {evalue}" if evalue else str(ename)
        return f"{text}{where} (the executed notebook, with the traceback, is {output})"
    text = str(err).strip().splitlines()[0] if str(err).strip() else "(no message)"
    return f"{type(err).__name__}: {text} (output notebook {output})"


@dataclass
class BatchResult:
    outputs: list[Path]
    rows: pd.DataFrame
    rows_path: Path
    failed: list[tuple[str, str]]


def _execute(notebook: str, output: str, params: dict[str, Any], store: str) -> Optional[str]:
    """Run one point; return None on success or the error text."""
    import papermill as pm

    from .build import KERNEL_NAME, _kernel_env, ensure_kernel

    ensure_kernel()
    env = os.environ.copy()
    os.environ.update(_kernel_env())
    os.environ["CAPSLIB_RESULTS"] = store
    try:
        pm.execute_notebook(notebook, output, parameters=params, kernel_name=KERNEL_NAME, language="python",
                            cwd=str(Path(notebook).resolve().parent), progress_bar=False)
        return None
    except Exception as err:  # recorded per point, the batch goes on
        return describe_failure(err, output)
    finally:
        os.environ.clear()
        os.environ.update(env)


def run_batch(notebook: str | os.PathLike, grid: dict[str, list[Any]], name: Optional[str] = None,
              runs_dir: str | os.PathLike = "runs", backend: str = "local", address: Optional[str] = None,
              extra_params: Optional[dict[str, Any]] = None, progress: bool = True) -> BatchResult:
    """Execute ``notebook`` once per grid point and collect the rows each point stored."""
    notebook = Path(notebook).resolve()
    declared = notebook_parameters(notebook)
    unknown = [k for k in list(grid) + list(extra_params or {}) if k not in declared]
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in declared.items())
        raise ValueError(f"unknown parameter(s) {unknown} for {notebook.name}; valid parameters: {valid}")
    name = name or notebook.stem
    out_dir = Path(runs_dir).resolve() / name
    check_writable(out_dir, "--runs", folder=True)  # before any notebook runs
    points = grid_points(grid)
    jobs = []
    for point in points:
        pname = point_name(point)
        jobs.append((pname, dict(extra_params or {}, **point), str(out_dir / f"{pname}.ipynb"), str(out_dir / pname)))

    failed: list[tuple[str, str]] = []
    if backend == "local":
        from tqdm.auto import tqdm

        for pname, params, output, store in tqdm(jobs, desc=f"papermill {name}", disable=not progress):
            err = _execute(str(notebook), output, params, store)
            if err:
                failed.append((pname, err))
    elif backend == "ray":
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        try:
            task = ray.remote(num_cpus=1)(_execute)
            refs = [task.remote(str(notebook), output, params, store) for _, params, output, store in jobs]
            for (pname, *_), err in zip(jobs, ray.get(refs)):
                if err:
                    failed.append((pname, err))
        finally:
            if started:
                ray.shutdown()
    else:
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")

    frames = []
    for pname, params, _output, store in jobs:
        for csv in sorted(Path(store).glob("*/*.csv")):
            if csv.name.endswith("_report.csv"):
                continue
            df = ResultsStore(csv).read()  # validated: a damaged line is left out, with a warning
            for k, v in params.items():
                df[f"param.{k}"] = v
            df["point"] = pname
            frames.append(df)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    rows_path = out_dir / "rows.csv"
    rows.to_csv(rows_path, index=False)
    return BatchResult([Path(j[2]) for j in jobs], rows, rows_path, failed)


def _cmd_papermill(args: argparse.Namespace) -> int:
    from ..experiments.sweeps import parse_overrides

    res = run_batch(args.notebook, parse_grid(args.grid), name=args.name, runs_dir=args.runs, backend=args.backend,
                    address=args.address, extra_params=parse_overrides(args.param), progress=not args.quiet)
    print(f"{len(res.outputs) - len(res.failed)} of {len(res.outputs)} notebooks executed into "
          f"{res.outputs[0].parent if res.outputs else args.runs}; {len(res.rows)} result rows -> {res.rows_path}")
    for pname, err in res.failed:
        print(f"  failed {pname}: {err.splitlines()[0] if err else '(no message)'}")
    return 1 if res.failed else 0


def register_cli(sub: Any) -> None:
    p = sub.add_parser("papermill", help="execute a notebook once per grid point and collect its rows",
                       description="Run NOTEBOOK with papermill for every point of the grid into "
                                   "runs/<name>/<point>.ipynb, and collect the result rows each point stored into "
                                   "runs/<name>/rows.csv. Parameter names are checked against the notebook's "
                                   "parameters cell first.")
    p.add_argument("notebook", help="a chapter, e.g. notebooks/chip.ipynb")
    p.add_argument("--grid", nargs="+", required=True, metavar="NAME=V1,V2",
                   help="parameter values to cross, e.g. C=10,20 D=8 PR=0,0.25")
    p.add_argument("--param", nargs="*", metavar="NAME=VALUE", help="fixed parameters for every point, e.g. PROFILE=paper")
    p.add_argument("--name", default=None, help="batch name (default: the notebook's name)")
    p.add_argument("--runs", default="runs", help="folder for the executed notebooks (default runs/)")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="where the notebooks execute")
    p.add_argument("--address", default=None, help="Ray cluster address")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_papermill)
