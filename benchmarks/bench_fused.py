"""Benchmark: the fused CPU routing kernel against the library as it was at commit 4203ac6.

    python benchmarks/bench_fused.py [--batch 64] [--depths 1 3 7] [--threads 1 2] [--steps 3]
                                     [--baseline-commit 4203ac6] [--json out.json]

Everything below is measured side by side in ONE invocation, each job in a fresh subprocess:

1. **Training step**, CapsNet[C=20, D=8, I] on 28×28 inputs (6×6 capsule grid, Fashion-MNIST's shape),
   ConvCaps init std 0.5, random images and labels: zero_grad + forward + margin loss + backward +
   Adam step. Reported: ms per image (mean over ``--steps`` timed steps after one warm-up step) and
   peak memory (VmHWM growth over the steps; see bench_routing.py for why not ru_maxrss), for
     before   capslib at ``--baseline-commit`` (extracted with ``git archive`` into a temporary
              folder and imported from there: the code exactly as it was, recompute_votes on, its
              default);
     fused    this tree (the fused kernel, capslib.engine.fused_routing).
   at every ``--threads`` count, and the speed-up before/fused.
2. **The PyTorch path's recompute default** (this tree with the kernel off, as on a GPU or where the
   kernel cannot be built): CapsNet[20, 8, 7] with recompute_votes on and off at batch 32 and 64, one
   thread.
3. **Each ConvCaps layer against the u_hat memory-traffic limit.** One ConvCaps(20→20, D 8) layer,
   forward + backward, batch ``--batch``: its time on both paths, and the time a path that
   materialises u_hat needs at least to stream it ``PASSES`` times at the memory bandwidth measured
   in the same run (a 256 MiB tensor copy: bytes read + written per second). Also the kernel's
   arithmetic rate against a dense float32 matmul's on the same core(s): the fused kernel never
   materialises u_hat, so its limit is arithmetic, not traffic.

Threads: torch.set_num_threads(N) in every job (the kernel splits its problems over N Python threads
calling into C with the GIL released). On a shared machine compare only figures of the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 2 ** 20
# u_hat passes of a materialising training step with r = 3 routing iterations (capslib's PyTorch path
# with votes recomputed in backward): forward = 1 write + r weighted-sum reads + (r-1) agreement reads
# = 6; backward = the recomputed forward (6) + (r-1) reads for grad v + r reads for grad c + 1 write of
# grad u_hat + 2 reads of it (grad W, grad u) = 14. 20 passes in all.
PASSES = 20


# --------------------------------------------------------------------------------------------- worker

def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def worker(args: argparse.Namespace) -> dict:
    """One job, in its own process: ``capslib`` is whatever sys.path resolves it to."""
    import torch

    torch.set_num_threads(args.threads)
    import capslib
    from capslib.engine.config import ModelConfig
    from capslib.engine.losses import margin_loss
    from capslib.engine.model import CapsNet

    torch.manual_seed(0)
    out = {"capslib_file": capslib.__file__, "threads": args.threads}
    if args.job == "layer":
        return {**out, **layer_job(args)}
    cfg = ModelConfig(C=20, D=8, I=args.I, init_std=0.5, recompute_votes=args.recompute)
    model = CapsNet(cfg)
    if args.path == "pytorch":
        from capslib.engine.capsules import use_fused_routing

        use_fused_routing(model, False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        margin_loss(model(x).lengths, y).backward()
        opt.step()

    step()  # warm-up (also builds/loads the kernel)
    base = _proc_status("VmRSS")
    _reset_peak()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = _proc_status("VmHWM") - base
    return {**out, "ms_per_image": 1e3 * sum(times) / len(times) / args.batch,
            "best_ms_per_image": 1e3 * min(times) / args.batch, "peak_mib": peak / MiB}


def layer_job(args: argparse.Namespace) -> dict:
    """One ConvCaps(20->20, D 8) layer forward+backward; memory bandwidth and matmul rate alongside."""
    import torch
    from capslib.engine.capsules import ConvCaps

    C, D, G, B = 20, 8, 6, args.batch
    layer = ConvCaps(C, D, C, D, init_std=0.5)
    if args.path == "pytorch":
        layer.fused = False
    u = (torch.randn(B, G, G, C, D) * 0.3).requires_grad_()

    def run() -> None:
        v = layer(u)
        torch.autograd.grad(v.sum(), (u, layer.weight))

    run()
    t = time.perf_counter()
    for _ in range(args.steps):
        run()
    layer_s = (time.perf_counter() - t) / args.steps
    # memory bandwidth: copy 256 MiB (read + write)
    src = torch.ones(64 * MiB)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    bw = 5 * 2 * src.numel() * 4 / (time.perf_counter() - t)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    gemm = 5 * 2 * 1024 ** 3 / (time.perf_counter() - t)
    L, K = G * G, 9 * C
    uhat_bytes = B * L * C * K * D * 4
    # arithmetic of the fused step per problem (one output location of one image), r = 3:
    # votes twice (forward, recompute) + grad u + grad W: 4 × 2·J·K·D·D; routing forward twice, 5 passes
    # each, and its backward, about 8 passes: 18 × 2·J·K·D.
    flops = B * L * (4 * 2 * C * K * D * D + 18 * 2 * C * K * D)
    return {"layer_ms": 1e3 * layer_s, "bandwidth_gbs": bw / 1e9, "gemm_gflops": gemm / 1e9,
            "uhat_mib": uhat_bytes / MiB, "traffic_limit_ms": 1e3 * PASSES * uhat_bytes / bw,
            "gflops_fused_model": flops / layer_s / 1e9}


# --------------------------------------------------------------------------------------------- driver

def extract_baseline(commit: str, into: Path) -> Path | None:
    """``git archive COMMIT capslib`` into ``into``; None (with a notice) where that is impossible."""
    try:
        blob = subprocess.run(["git", "archive", "--format=tar", commit, "capslib"], cwd=ROOT,
                              capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"NOTICE: cannot extract capslib at {commit} ({exc}); the 'before' column is skipped")
        return None
    tar_path = into / "baseline.tar"
    tar_path.write_bytes(blob)
    with tarfile.open(tar_path) as tf:
        tf.extractall(into, filter="data")
    return into


def run_job(pythonpath: Path, **kw) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ, PYTHONPATH=str(pythonpath), OMP_NUM_THREADS=str(kw["threads"]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"job {kw} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--depths", type=int, nargs="+", default=[1, 3, 7])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--baseline-commit", default="4203ac6")
    p.add_argument("--skip-recompute-study", action="store_true")
    p.add_argument("--json", default=None)
    # worker mode
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--job", default="step", help=argparse.SUPPRESS)
    p.add_argument("--path", default="default", help=argparse.SUPPRESS)
    p.add_argument("--I", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--recompute", type=lambda s: s == "True", default=True, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.threads = args.threads[0] if isinstance(args.threads, list) else args.threads
        print(json.dumps(worker(args)))
        return 0

    sys.path.insert(0, str(ROOT))
    from capslib.engine import fused_routing
    from capslib.engine.provenance import capslib_version, device_info, git_state

    print(f"capslib {capslib_version()} @ {git_state()[0][:10]} | {device_info()['device_name']} | "
          f"{os.cpu_count()} CPUs | routing: {fused_routing.status()}")
    report: dict = {"steps": [], "recompute": [], "layers": []}
    with tempfile.TemporaryDirectory() as tmp:
        before = extract_baseline(args.baseline_commit, Path(tmp))
        print(f"\n1. Training step, CapsNet[20, 8, I], 28x28, batch {args.batch}, std 0.5, Adam "
              f"(ms per image; peak MiB)")
        print(f"{'I':>3} {'threads':>7} | {'before ' + args.baseline_commit:>16} {'fused':>9} | {'speed-up':>8} | "
              f"{'peak before':>11} {'peak fused':>10}")
        for I in args.depths:
            for t in args.threads:
                row = {"I": I, "threads": t}
                if before is not None:
                    row["before"] = run_job(before, job="step", I=I, threads=t, batch=args.batch, steps=args.steps)
                row["fused"] = run_job(ROOT, job="step", I=I, threads=t, batch=args.batch, steps=args.steps)
                b, f = row.get("before"), row["fused"]
                sp = b["ms_per_image"] / f["ms_per_image"] if b else float("nan")
                row["speedup"] = sp
                print(f"{I:>3} {t:>7} | {(b['ms_per_image'] if b else float('nan')):>16.1f} {f['ms_per_image']:>9.1f} | "
                      f"{sp:>7.2f}x | {(b['peak_mib'] if b else float('nan')):>11.0f} {f['peak_mib']:>10.0f}",
                      flush=True)
                report["steps"].append(row)
        if not args.skip_recompute_study:
            print("\n2. PyTorch path (kernel off), CapsNet[20, 8, 7], 1 thread: recompute_votes on vs off "
                  "(ms per image; peak MiB)")
            for batch in (32, 64):
                res = {rc: run_job(ROOT, job="step", path="pytorch", I=7, threads=1, batch=batch, steps=2,
                                   recompute=rc) for rc in (True, False)}
                report["recompute"].append({"batch": batch, **{f"recompute={k}": v for k, v in res.items()}})
                print(f"  batch {batch:>3}: recompute on {res[True]['ms_per_image']:.1f} ms/img "
                      f"({res[True]['peak_mib']:.0f} MiB), off {res[False]['ms_per_image']:.1f} ms/img "
                      f"({res[False]['peak_mib']:.0f} MiB)", flush=True)
        print(f"\n3. One ConvCaps(20->20, D 8) layer, forward+backward, batch {args.batch}, against the u_hat "
              f"traffic limit ({PASSES} passes)")
        for t in args.threads:
            res = {path: run_job(ROOT, job="layer", path=path, threads=t, batch=args.batch, steps=args.steps)
                   for path in ("pytorch", "default")}
            f, tp = res["default"], res["pytorch"]
            report["layers"].append({"threads": t, "pytorch": tp, "fused": f})
            print(f"  {t} thread(s): bandwidth {f['bandwidth_gbs']:.1f} GB/s, u_hat {f['uhat_mib']:.0f} MiB, "
                  f"traffic limit {f['traffic_limit_ms']:.0f} ms | PyTorch path {tp['layer_ms']:.0f} ms "
                  f"({tp['layer_ms'] / tp['traffic_limit_ms']:.2f}x the limit) | fused {f['layer_ms']:.0f} ms "
                  f"({f['layer_ms'] / f['traffic_limit_ms']:.2f}x the limit; {f['gflops_fused_model']:.1f} GFLOP/s, "
                  f"dense matmul {f['gemm_gflops']:.0f} GFLOP/s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
