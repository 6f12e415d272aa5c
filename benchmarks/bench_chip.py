"""Benchmark: exact fast CHIP channel independence vs CHIP's float32 nuclear-norm loop.

    python benchmarks/bench_chip.py [--C 160 --H 16 --N 640 --device cpu|cuda --json out.json]

Side by side in one process, on the same seeded ReLU'd random maps (N, C, H, H):
  fast  capslib.pruning.chip.channel_independence (float64, one Gram eigh per image), timed
        from the float32 maps, i.e. including the float64 conversion;
  loop  nuclear_norm_loop_ci: float32 ||F||_* - ||F_c||_* with one nuclear norm
        (SVD) per (image, channel), as CHIP's code does it. If the full loop would
        take longer than --loop-budget seconds it is timed on the first images
        only and scaled linearly to N (the output says so).
Accuracy: both against a float64 SVD reference (one svdvals per image and
channel) on the first --check-images images.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
from capslib.pruning.chip import channel_independence  # noqa: E402


def nuclear_norm_loop_ci(F: torch.Tensor) -> torch.Tensor:
    """CHIP-code baseline. F: (N, C, H, W) -> (N, C) float32: one nuclear norm per (image, channel)."""
    N, C = F.shape[:2]
    F = F.reshape(N, C, -1).to(torch.float32)  # (N, C, P)
    out = torch.empty(N, C, dtype=torch.float32, device=F.device)
    for n in range(N):
        full = torch.linalg.matrix_norm(F[n], ord="nuc")
        for c in range(C):
            masked = F[n].clone()  # (C, P)
            masked[c] = 0
            out[n, c] = full - torch.linalg.matrix_norm(masked, ord="nuc")
    return out


def reference_ci(F: torch.Tensor) -> torch.Tensor:
    """float64 reference on CPU. F: (N, C, H, W) -> (N, C): one svdvals per image and channel."""
    N, C = F.shape[:2]
    F = F.reshape(N, C, -1).to("cpu", torch.float64)  # (N, C, P)
    out = torch.empty(N, C, dtype=torch.float64)
    for n in range(N):
        full = torch.linalg.svdvals(F[n]).sum()
        for c in range(C):
            masked = F[n].clone()
            masked[c] = 0
            out[n, c] = full - torch.linalg.svdvals(masked).sum()
    return out


def max_rel_error(ci: torch.Tensor, ref: torch.Tensor) -> float:
    """max over (image, channel) of |ci - ref| / max(|ref|, 1e-3 max_c |ref|)."""
    ci = ci.to("cpu", torch.float64)
    floor = 1e-3 * ref.abs().amax(dim=-1, keepdim=True)  # (N, 1)
    return ((ci - ref).abs() / torch.maximum(ref.abs(), floor)).max().item()


def timed(fn, device: torch.device):
    """(result, seconds) of fn() with the device synchronised before and after."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--C", type=int, default=160, help="channels")
    ap.add_argument("--H", type=int, default=16, help="height = width of the maps")
    ap.add_argument("--N", type=int, default=640, help="images")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the fast path (median reported)")
    ap.add_argument("--loop-budget", type=float, default=300.0,
                    help="seconds the full loop may take; above it, time a subset and scale")
    ap.add_argument("--check-images", type=int, default=4, help="images checked against float64 SVDs")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    N, C, H = args.N, args.C, args.H
    gen = torch.Generator().manual_seed(args.seed)
    maps = torch.relu(torch.randn(N, C, H, H, generator=gen)).to(device)  # (N, C, H, W) float32
    print(f"maps (N, C, H, W) = {tuple(maps.shape)} float32 ReLU'd N(0,1) on {device}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    # warm-up (lazy library loading, CUDA context), not timed
    channel_independence(maps[:2])
    _, loop_one = timed(lambda: nuclear_norm_loop_ci(maps[:1]), device)

    # fast path: all N images, float32 maps in, float64 scores out
    fast_times = []
    for _ in range(args.repeats):
        ci_fast, seconds = timed(lambda: channel_independence(maps), device)
        fast_times.append(seconds)
    t_fast = sorted(fast_times)[len(fast_times) // 2]
    print(f"fast  channel_independence : {t_fast:8.2f} s   (runs: {', '.join(f'{t:.2f}' for t in fast_times)})")

    # float32 loop: all images if it fits the budget, else a prefix scaled linearly
    loop_images = N if loop_one * N <= args.loop_budget else max(1, math.floor(0.5 * args.loop_budget / loop_one))
    loop_images = min(loop_images, N)
    ci_loop, t_loop_measured = timed(lambda: nuclear_norm_loop_ci(maps[:loop_images]), device)
    t_loop = t_loop_measured * N / loop_images
    scaled = loop_images < N
    note = f"   (timed on {loop_images} of {N} images, scaled linearly)" if scaled else ""
    print(f"loop  float32 nuclear norms: {t_loop:8.2f} s{note}")
    speedup = t_loop / t_fast
    print(f"speedup                    : {speedup:8.1f} x")

    # accuracy against float64 SVDs on the first images
    k = min(args.check_images, loop_images)
    ref = reference_ci(maps[:k])
    err_fast = max_rel_error(ci_fast[:k], ref)
    err_loop = max_rel_error(ci_loop[:k], ref)
    print(f"max rel. error vs float64 SVD reference ({k} images, {k * C} scores):")
    print(f"  fast : {err_fast:.2e}")
    print(f"  loop : {err_loop:.2e}")

    # do the two agree on the channel ranking (mean CI over the looped images)?
    order_fast = ci_fast[:loop_images].mean(0).argsort(stable=True).cpu()
    order_loop = ci_loop.double().mean(0).argsort(stable=True).cpu()
    moved = int((order_fast != order_loop).sum())
    print(f"ranking positions that differ, fast vs float32 loop (mean over {loop_images} images): {moved} of {C}")

    figures = {
        "N": N, "C": C, "H": H, "W": H, "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "fast_seconds": t_fast, "fast_seconds_runs": fast_times,
        "loop_seconds": t_loop, "loop_seconds_measured": t_loop_measured,
        "loop_images_timed": loop_images, "loop_scaled_linearly": scaled,
        "speedup": speedup,
        "check_images": k, "max_rel_error_fast": err_fast, "max_rel_error_loop_float32": err_loop,
        "ranking_positions_differ_fast_vs_loop": moved,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
