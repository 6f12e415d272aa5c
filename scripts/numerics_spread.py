"""Measure how far the chapters' trained metrics move with the CPU's instruction set.

For each instruction-set level, a fresh clone of the committed tree runs nbval over every chapter (the
test command's nbval step) with an empty model cache, no pipeline checkpoints and PyTorch and the fused
routing kernel held to that level. Every ``# CHECK_NUMBERS`` cell records its largest deviation from the
committed outputs (``tests/nbval_numbers.py``); every exact ``# NBVAL_CHECK_OUTPUT`` cell must still pass.

    .venv/bin/python scripts/numerics_spread.py [--levels native avx2 sse] [--out results/numerics]

writes ``<out>/spread.csv`` (label, level, instruction sets, the largest deviation of the numbers printed as
integers and of those printed with decimals, the committed precision) and prints the ``TOLERANCES`` to set
in ``tests/nbval_numbers.py``: twice the largest deviation over the levels, rounded up to the printed
precision, and at least one unit of it.
Reads nothing from and writes nothing to the working tree but ``<out>``. About 3-5 minutes per level on a
2-core machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from nbval_numbers import NUMBER, _is_count, label_of, output_texts  # noqa: E402

#: Environment of each level. ``native``: whatever this CPU offers (what the committed outputs were made with
#: when it is the book's machine). ``avx2``: ATen and oneDNN capped at AVX2 and the kernel built for x86-64-v3.
#: ``sse``: ATen's default (no AVX) kernels, oneDNN capped at SSE4.1 and the kernel built for plain x86-64.
LEVELS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "CAPSLIB_KERNEL_MARCH": "x86-64-v3"},
    "sse": {"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41", "CAPSLIB_KERNEL_MARCH": "x86-64"},
}


def committed_units(root: Path) -> dict[str, float]:
    """Per CHECK_NUMBERS label, the smallest printed unit among its committed numbers printed with decimals
    (0.01 for ``0.66``; 1 when it prints none)."""
    import nbformat

    units: dict[str, float] = {}
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(nb, as_version=4).cells:
            label = label_of(cell.source) if cell.cell_type == "code" else None
            if label is None:
                continue
            unit = 1.0
            for text in output_texts(cell.outputs):
                for tok in NUMBER.findall(text):
                    if not _is_count(tok) and "e" not in tok.lower() and "." in tok:
                        unit = min(unit, 10.0 ** -len(tok.split(".")[1]))
            units[label] = unit
    return units


def run_level(level: str, env_extra: dict[str, str], work: Path,
              notebooks: Sequence[str] = ("notebooks",)) -> tuple[list[dict], int, str]:
    """nbval over a fresh clone at one level: (recorded rows, pytest's exit code, its summary line)."""
    clone = work / f"clone-{level}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    record = work / f"record-{level}.jsonl"
    env = {**os.environ, **env_extra, "PYTHONPATH": str(clone), "CAPSLIB_NBVAL_RECORD": str(record),
           "CAPSLIB_CACHE": str(work / f"models-{level}")}
    cmd = [str(ROOT / ".venv" / "bin" / "pytest"), *notebooks, "--nbval-lax", "--sanitize-with",
           "tests/nbval_sanitize.cfg", "-p", "no:cacheprovider", "-q"]
    proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith("FAILED")]
    summary = "; ".join(failed + lines[-1:])
    rows = [json.loads(x) for x in record.read_text().splitlines()] if record.exists() else []
    return rows, proc.returncode, summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "numerics")
    ap.add_argument("--notebooks", nargs="+", default=["notebooks"],
                    help="what nbval runs, relative to the clone (default: every chapter)")
    args = ap.parse_args(argv)
    units = committed_units(ROOT)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    out_rows = []
    with tempfile.TemporaryDirectory(prefix="capslib-numerics-") as tmp:
        for level in args.levels:
            t0 = time.time()
            rows, code, summary = run_level(level, LEVELS[level], Path(tmp), args.notebooks)
            print(f"[{level}] nbval exit {code} in {time.time() - t0:.0f} s: {summary}", flush=True)
            for r in rows:
                out_rows.append({"commit": sha, "level": level, "label": r["label"], "cpu_isa": r["cpu_isa"],
                                 "onednn_isa": r["onednn_isa"], "kernel_march": r["kernel_march"],
                                 "max_integers": r["max_integers"], "max_decimals": r["max_decimals"],
                                 "numbers": r["numbers"],
                                 "unit": units.get(r["label"], 1.0), "nbval_exit": code,
                                 "text_differs": any("text around" in p or "count" in p or "index lists" in p
                                                     for p in r["problems"])})
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "spread.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out_rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(out_rows)
    print(f"wrote {path} ({len(out_rows)} rows)")
    worst: dict[str, dict[str, float]] = {}
    for r in out_rows:
        w = worst.setdefault(r["label"], {"integers": 0.0, "decimals": 0.0})
        w["integers"] = max(w["integers"], float(r["max_integers"]))
        w["decimals"] = max(w["decimals"], float(r["max_decimals"]))
    print("TOLERANCES = {  # label: Tolerance(integers, decimals, measured integers, measured decimals)")
    for label in sorted(worst):
        unit, w = units.get(label, 1.0), worst[label]
        tol_i = max(1.0, math.ceil(round(2 * w["integers"], 6)))
        tol_d = max(unit, math.ceil(round(2 * w["decimals"] / unit, 6)) * unit)
        print(f"    {label!r}: Tolerance({tol_i:.6g}, {tol_d:.6g}, {w['integers']:.6g}, {w['decimals']:.6g}),")
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
