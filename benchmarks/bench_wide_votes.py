"""Benchmark: the fused routing kernel on votes wider than one SIMD register, before and after 95947c3.

    python benchmarks/bench_wide_votes.py [--baseline-commit 50b2e94] [--batch 64] [--json out.json]

Until 50b2e94 a vote of P dims was one GCC vector of P lanes. Where P lanes are wider than the CPU's
register (double P = 8 or float P = 16 on AVX2: 64 bytes), GCC lowered every operation through the
stack, so float64 training ran ~8x slower than float32. 95947c3 holds such votes as arrays of
register-wide vectors. Measured side by side in ONE invocation, each job in a fresh subprocess, one
thread, the kernel compiled from each commit's source into a temporary folder:

1. one ConvCaps(20 -> 20) routing problem set (K = 9 x 20 children, J = 20 parents, Din = 8, 3
   iterations, 6 x 6 locations x ``--batch`` images), forward and backward, for Dout in {4, 8, 16}
   and both dtypes: ms (median of 5 after one warm-up);
2. one training step of CapsNet[20, 8, 7] (std 0.5, 28 x 28 random images, batch ``--batch``) in
   float32 and float64: s per step (median of 2 after one warm-up).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "capslib/engine/csrc/fused_routing.cpp"
BASELINE_SOURCE = "capslib/csrc/fused_routing.cpp"  # where it was until the package reorganisation


def _worker(source: str, job: str, dtype: str, dout: int, batch: int) -> dict:
    import time

    import torch

    from capslib.engine import fused_routing
    fused_routing._SOURCE = Path(source)  # the kernel under test (same ABI), built into CAPSLIB_KERNELS
    torch.set_num_threads(1)
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    if job == "layer":
        u = torch.randn(batch * 36, 180, 8, generator=g).to(dt).requires_grad_()
        w = (torch.randn(180, 20, dout, 8, generator=g) * 0.5).to(dt).requires_grad_()
        fwd, bwd = [], []
        for i in range(6):
            t = time.perf_counter()
            v = fused_routing.route(u, w, 3, 1e-7)
            t1 = time.perf_counter()
            v.sum().backward()
            t2 = time.perf_counter()
            if i:
                fwd.append(t1 - t)
                bwd.append(t2 - t1)
        return {"fwd_ms": 1e3 * statistics.median(fwd), "bwd_ms": 1e3 * statistics.median(bwd)}
    from capslib.engine.config import ModelConfig
    from capslib.engine.losses import margin_loss
    from capslib.engine.model import CapsNet
    model = CapsNet(ModelConfig(C=20, D=8, I=7, init_std=0.5)).to(dt).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 1, 28, 28, generator=g).to(dt)
    y = torch.randint(0, 10, (batch,), generator=g)
    times = []
    for i in range(3):
        t = time.perf_counter()
        opt.zero_grad()
        margin_loss(model(x).lengths, y).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return {"step_s": statistics.median(times)}


def _run(source: Path, kernels: Path, job: str, dtype: str, dout: int, batch: int) -> dict:
    env = dict(os.environ, CAPSLIB_KERNELS=str(kernels), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, __file__, "--worker", str(source), job, dtype, str(dout), str(batch)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-commit", default="50b2e94")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        source, job, dtype, dout, batch = a.worker
        print(json.dumps(_worker(source, job, dtype, int(dout), int(batch))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = tmp / "before.cpp"
        before.write_bytes(subprocess.run(["git", "show", f"{a.baseline_commit}:{BASELINE_SOURCE}"], cwd=ROOT,
                                          capture_output=True, check=True).stdout)
        sources = {"before": before, "after": ROOT / SOURCE}
        rows = []
        print(f"one thread; 'before' = {a.baseline_commit}, 'after' = this tree\n")
        print(f"{'job':28s} {'before':>18s} {'after':>18s} {'speed-up':>9s}")
        for dtype in ("float32", "float64"):
            for dout in (4, 8, 16):
                r = {k: _run(s, tmp / k, "layer", dtype, dout, a.batch) for k, s in sources.items()}
                tb = r["before"]["fwd_ms"] + r["before"]["bwd_ms"]
                ta = r["after"]["fwd_ms"] + r["after"]["bwd_ms"]
                rows.append(dict(job="layer", dtype=dtype, dout=dout, before=r["before"], after=r["after"]))
                print(f"{'ConvCaps Dout ' + str(dout) + ' ' + dtype:28s} {tb:15.0f} ms {ta:15.0f} ms {tb / ta:8.1f}x")
        for dtype in ("float32", "float64"):
            r = {k: _run(s, tmp / k, "step", dtype, 8, a.batch) for k, s in sources.items()}
            rows.append(dict(job="step", dtype=dtype, before=r["before"], after=r["after"]))
            tb, ta = r["before"]["step_s"], r["after"]["step_s"]
            print(f"{'CapsNet[20,8,7] step ' + dtype:28s} {tb:16.2f} s {ta:16.2f} s {tb / ta:8.1f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(baseline=a.baseline_commit, batch=a.batch, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
