"""The GPU benchmark's plumbing, on CPU: every configuration of the projected tables is built, timed
and projected (miniature models; the numbers are not a measurement, the script says so)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_benchmark_plumbing_on_cpu(tmp_path, capsys):
    bench = load("bench_gpu")
    out = tmp_path / "gpu.json"
    assert bench.main(["--device", "cpu", "--plumbing", "--tables", "table3", "table4", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PLUMBING CHECK" in printed and "not a measurement" in printed
    res = json.loads(out.read_text())
    assert res["plumbing"] is True and set(res["gpu_hours"]) == {"table3", "table4"}
    assert all(h > 0 for h in res["gpu_hours"].values())
    # table3 (C=20, D=8, I=6/7, PR 0..0.375) and table4 (two kernel sizes) as miniatures: k5 and k3 models
    assert {r["kernels"] for r in res["models"]} == {3, 5}
    assert all(r["fp32"]["images_per_s"] > 0 for r in res["models"])


def test_prune_points_cost_three_trainings_with_the_pruned_width():
    bench = load("bench_gpu")
    from capslib.experiments.sweeps import plan

    prune = [(p, c) for p, c in plan("table3", "paper") if p.kind == "prune"]
    stages = bench.point_models(*prune[0])
    assert [s for s, _, _ in stages] == ["base", "ccm", "retrain"]
    base, after = stages[0][1], stages[2][1]
    assert base.I == 0 and after.I == prune[0][0].I_after and after.C == round(20 * (1 - prune[0][0].pr))


def test_gpu_benchmark_refuses_cuda_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA"):
        load("bench_gpu").main(["--device", "cuda", "--tables", "table3"])
