"""Benchmark: CapsNet[C, D, I] forward+backward throughput and peak memory, capslib vs a typical baseline.

    python benchmarks/bench_routing.py [--device cpu|cuda] [--batch 128] [--depths 0 3 7]
                                       [--steps 3] [--threads N] [--json out.json]

For each depth I and implementation:
  capslib   capslib.engine.model.CapsNet (votes by one bmm, routing by batched mat-vec
            products with a hand-written backward that writes grad u_hat once, ConvCaps
            votes routed in the bmm's own layout, votes recomputed in backward:
            ModelConfig.recompute_votes=True);
  baseline  the same net with the IntermediateCaps/ClassCaps layers of
            benchmarks/baseline_routing.py (unfold + expand to the full vote input,
            torch.matmul(W, u), Python routing loop, nothing fused, no checkpointing).
  extras, with --impls:
  capslib-norecompute        capslib with recompute_votes=False;
  capslib-unfused            capslib's layers as they were before the routing backward was
                             hand-written: votes copied to the contiguous (n, J, K, D)
                             layout and the routing loop differentiated by autograd term by
                             term (dynamic_routing(..., fused_backward=False)); the side-by-side
                             reference for what the hand-written backward buys.

Model: CapsNet[C=20, D=8, I] (ModelConfig(C=20, D=8, I=I, in_channels=3, image_size=32)),
train mode, random N(0,1) 3×32×32 images and random labels, margin loss; one step =
zero_grad + forward + loss + backward (no optimizer step). --warmup steps (default 1),
then --steps timed steps; images/s = batch·steps / time ("best-step" = batch / fastest
step, the steadier figure on a shared machine).

Threads: on a shared CPU with fewer idle cores than torch threads, every parallel op
waits at its OpenMP barrier for a descheduled thread (measured on a loaded 2-vCPU VM:
sqrt of 15,680 floats, 0.01 ms with 1 thread, 7.8 ms with 2), which swamps the small
routing ops of both implementations; use --threads 1 there, and compare runs only at
the same --threads. Environment variables that change CPU allocation (MALLOC_*,
THP_MEM_ALLOC_ENABLE, OMP_*, MKL_*, LD_PRELOAD) are printed and recorded.

Each (impl, I, batch) runs in a fresh subprocess so peak memory is its own:
  CPU   peak RSS growth = VmHWM at the end minus VmRSS right after the model and the
        input batch were built (torch imported, weights and data resident, and one
        pre-warm step at batch 2 done, so that one-off imports are not counted); the
        high-water mark is reset to the current RSS there (echo 5 > /proc/self/clear_refs),
        so VmHWM is the peak RSS of the warm-up and timed steps. Not getrusage's
        ru_maxrss: a child started by subprocess (vfork+exec) inherits the PARENT's peak
        RSS in ru_maxrss, which floors every small job at the driver's ~700 MiB. ru_maxrss
        is recorded in the JSON too.
  CUDA  torch.cuda.max_memory_allocated() minus memory_allocated() after model and
        input were built (peak stats reset there); tensors only, not allocator cache.

Memory guard: before running, the peak of each job is estimated from the vote tensor
sizes (see ``estimate_bytes``). A baseline job whose estimate exceeds --mem-fraction of
the memory available now (MemAvailable, or free GPU memory) is run at the largest
batch batch/2^k that fits; capslib is then ALSO run at that batch, and the capslib/
baseline ratios of that depth are taken at the matched batch (the output says so).
Before any timing, the baseline is checked against capslib (baseline_routing.check).
All ratios come from this one invocation.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout
sys.path.insert(0, str(HERE))
from capslib.engine.provenance import device_info
from capslib.engine.capsules import ClassCaps, ConvCaps, capsule_votes, unfold_capsules  # noqa: E402
from capslib.engine.config import ModelConfig  # noqa: E402
from capslib.engine.losses import margin_loss  # noqa: E402
from capslib.engine.model import CapsNet  # noqa: E402
from capslib.engine.routing import dynamic_routing  # noqa: E402
from baseline_routing import baseline_capsnet  # noqa: E402

MiB = 2 ** 20
IMPLS = ("capslib", "baseline", "capslib-norecompute", "capslib-unfused")


# ----------------------------------------------------------------------------------------
# model construction (shared by the worker and the estimator)

def model_config(I: int, C: int = 20, D: int = 8, recompute: bool = True) -> ModelConfig:
    return ModelConfig(C=C, D=D, I=I, in_channels=3, image_size=32, recompute_votes=recompute)


def build(impl: str, I: int, C: int, D: int) -> CapsNet:
    if impl == "capslib":
        return CapsNet(model_config(I, C, D))
    if impl == "capslib-norecompute":
        return CapsNet(model_config(I, C, D, recompute=False))
    if impl == "baseline":
        return baseline_capsnet(model_config(I, C, D))
    if impl == "capslib-unfused":
        return unfused_capsnet(model_config(I, C, D))
    raise ValueError(f"unknown impl {impl!r}; choose from {IMPLS}")


# ----------------------------------------------------------------------------------------
# capslib before the hand-written routing backward (the side-by-side reference)

class UnfusedConvCaps(ConvCaps):
    """capslib's ConvCaps (same weights, same checkpointing), votes contiguous, autograd routing."""

    def _route(self, u: Tensor, fused: bool = False) -> Tensor:  # fused ignored: the reference path
        B = u.shape[0]
        windows, Ho, Wo = unfold_capsules(u, self.kernel, self.stride, self.padding)
        v, _ = dynamic_routing(capsule_votes(windows, self.weight.float()), self.iters, fused_backward=False)
        return v.view(B, Ho, Wo, self.Cout, self.Dout)


class UnfusedClassCaps(ClassCaps):
    def _route(self, u: Tensor, fused: bool = False) -> Tensor:
        B = u.shape[0]
        u_hat = capsule_votes(u.reshape(B, -1, u.shape[-1]), self.weight.float())
        return dynamic_routing(u_hat, self.iters, fused_backward=False)[0]


def unfused_capsnet(cfg: ModelConfig) -> CapsNet:
    model = CapsNet(cfg)
    for layer in model.intermediate:
        layer.__class__ = UnfusedConvCaps
    model.classcaps.__class__ = UnfusedClassCaps
    return model


def check_unfused(atol: float = 1e-4) -> float:
    """capslib's outputs and parameter gradients equal the unfused reference's (relative, worst)."""
    worst = 0.0
    for std in (0.1, 0.5):
        torch.manual_seed(0)
        cfg = model_config(2, 4, 8).replace(init_std=std)
        ref, unfused = CapsNet(cfg), unfused_capsnet(cfg)
        unfused.load_state_dict(ref.state_dict())
        x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 7])
        res = []
        for net in (ref, unfused):
            out = net(x)
            margin_loss(out.lengths, y).backward()
            res.append([out.lengths] + [p.grad for n, p in net.named_parameters() if not n.endswith(".0.bias")])
        for a, b in zip(*res):
            worst = max(worst, (a - b).abs().max().item() / max(a.abs().max().item(), 1e-30))
    assert worst <= atol, f"capslib differs from the unfused reference: relative {worst:.2e}"
    return worst


def estimate_bytes(impl: str, I: int, batch: int, C: int = 20, D: int = 8) -> int:
    """Rough upper estimate of a job's peak memory growth (bytes), from the tensor sizes.

    Per image, with L grid locations, K = 9·C children, J = C parents (ConvCaps) and
    V = L·K·J (child, parent) pairs, float32:
      baseline ConvCaps, kept for backward: the W copy that matmul broadcasts over the
        batch (V·D·D), the expanded input (V·D) and u_hat (V·D); in backward, the grad
        of the W copy and of u_hat (V·D·D + V·D) on top for one layer.
      ClassCaps (baseline): K'·N·(M·D + D + M) with K' = L·C inputs, N = 10, M = 16.
      capslib: checkpointed, so only one layer's votes are live: ~6 vote-sized
        tensors (V·D) during its recomputation+backward, plus the ClassCaps votes.
    Plus the backbone activations (~12·C·D·256 per image). Calibrated against
    measurements on CPU (see the report); errs on the large side.
    """
    cfg = model_config(I, C, D)
    L = cfg.grid ** 2
    V = L * 9 * C * C
    Kc, N, M = L * C, cfg.num_classes, cfg.class_dim
    backbone = 12 * C * D * 256
    if impl == "baseline":
        per_layer = V * (D * D + 2 * D)
        transient = V * (D * D + D) if I else 0
        cls = Kc * N * (M * D + D + M) * 2
        floats = I * per_layer + transient + cls + backbone
    elif impl in ("capslib", "capslib-unfused"):
        floats = (6 * V * D if I else 0) + Kc * N * M * 6 + I * L * C * D * 4 + backbone
    else:  # capslib-norecompute: every layer keeps its votes (+ routing temporaries)
        floats = I * 3 * V * D + 6 * V * D * (I > 0) + Kc * N * M * 6 + backbone
    return int(1.25 * 4 * floats * batch)


def available_bytes(device: str) -> int:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


# ----------------------------------------------------------------------------------------
# worker: one (impl, I, batch) in its own process

def proc_status(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(impl: str, I: int, batch: int, device_name: str, steps: int, warmup: int,
           threads: int | None, C: int, D: int, seed: int) -> dict:
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(seed)
    model = build(impl, I, C, D).to(device).train()
    # Pre-warm at batch 2, before the memory baseline: the first call of
    # torch.utils.checkpoint (capslib's recompute_votes) imports ~900 modules
    # (torch._dynamo, sympy, ...: ~190 MiB of RSS, once per process), and kernels
    # initialise lazily. Neither is the step's memory.
    margin_loss(model(torch.randn(2, 3, 32, 32, device=device)).lengths,
                torch.tensor([0, 1], device=device)).backward()
    model.zero_grad(set_to_none=True)
    gc.collect()
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device)
    else:
        hwm_reset = reset_peak_rss()
        base_mem = proc_status("VmRSS")
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def step() -> float:
        model.zero_grad(set_to_none=True)
        out = model(x)
        loss = margin_loss(out.lengths, y)
        loss.backward()
        return loss.item()

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    total = sum(times)
    res = {
        "impl": impl, "I": I, "batch": batch, "steps": steps, "warmup": warmup,
        "seconds_per_step": total / steps, "step_seconds": times,
        "images_per_s": batch * steps / total, "images_per_s_best_step": batch / min(times), "loss": loss,
        "threads": torch.get_num_threads(),
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        res.update(peak_bytes=peak - base_mem, base_bytes=base_mem, max_bytes=peak,
                   memory_method="cuda.max_memory_allocated - memory_allocated after model+input")
    else:
        hwm = proc_status("VmHWM")
        res.update(peak_bytes=hwm - base_mem, base_bytes=base_mem, max_bytes=hwm,
                   ru_maxrss_before_bytes=maxrss_before,
                   ru_maxrss_after_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   memory_method=("VmHWM at end - VmRSS after model+input, VmHWM reset there"
                                  if hwm_reset else "VmHWM at end - VmRSS after model+input (VmHWM NOT reset)"))
    return res


def profile(args) -> None:
    """One warm-up step, then one step under torch.profiler, for each impl and depth."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    device = torch.device(args.device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for I in args.depths:
        for impl in args.impls:
            torch.manual_seed(args.seed)
            model = build(impl, I, args.C, args.D).to(device).train()
            x = torch.randn(args.batch, 3, 32, 32, device=device)
            y = torch.randint(0, 10, (args.batch,), device=device)

            def step():
                model.zero_grad(set_to_none=True)
                margin_loss(model(x).lengths, y).backward()
                if device.type == "cuda":
                    torch.cuda.synchronize()

            step()
            t0 = time.perf_counter()
            with tprofile(activities=acts, record_shapes=True) as prof:
                step()
            print(f"\n### profile: {impl}, I={I}, batch {args.batch}: one step {time.perf_counter() - t0:.2f} s "
                  f"(under the profiler)")
            print(prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=args.profile_rows,
                                                                     max_name_column_width=40,
                                                                     max_shapes_column_width=60))
            del model


def run_job(args, impl: str, I: int, batch: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, str(I), str(batch),
           "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--C", str(args.C), "--D", str(args.D), "--seed", str(args.seed)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"impl": impl, "I": I, "batch": batch, "error": f"exit {proc.returncode}: {tail}"}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_seconds"] = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------------------
# driver

def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()


def plan(args, avail: int) -> list[tuple[str, int, int, str]]:
    """[(impl, I, batch, why)]: every impl at --batch, or a matched smaller batch where needed."""
    budget = args.mem_fraction * avail
    jobs = []
    for I in args.depths:
        need = {impl: estimate_bytes(impl, I, args.batch, args.C, args.D) for impl in args.impls}
        fits = {impl: need[impl] <= budget for impl in args.impls}
        small = args.batch
        while any(not fits[i] and estimate_bytes(i, I, small, args.C, args.D) > budget for i in args.impls) \
                and small > 1:
            small //= 2
        for impl in args.impls:
            if fits[impl]:
                jobs.append((impl, I, args.batch, ""))
        if small < args.batch:
            for impl in args.impls:
                why = (f"est. {need[impl] / 2**30:.1f} GiB at batch {args.batch} > budget "
                       f"{budget / 2**30:.1f} GiB" if not fits[impl] else "matched batch for the ratio")
                jobs.append((impl, I, small, why))
    return jobs


def fmt_table(results: list[dict], batch: int, impls: list[str]) -> str:
    lines = ["| impl | I | batch | images/s | best-step images/s | s/step | peak MiB | max RSS/alloc MiB | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r['I']} | {r['batch']} | failed | | | | | {r['error'][:80]!r} |")
            continue
        lines.append(f"| {r['impl']} | {r['I']} | {r['batch']} | {r['images_per_s']:.2f} | "
                     f"{r['images_per_s_best_step']:.2f} | {r['seconds_per_step']:.2f} | {r['peak_bytes'] / MiB:.0f} | {r['max_bytes'] / MiB:.0f} | "
                     f"{r.get('why', '')} |")
    return "\n".join(lines)


def ratios(results: list[dict], impls: list[str]) -> list[dict]:
    """capslib/baseline (and other impls / baseline) at the same I and the same batch."""
    ok = {(r["impl"], r["I"], r["batch"]): r for r in results if "error" not in r}
    out = []
    for (impl, I, b), r in sorted(ok.items(), key=lambda kv: (kv[0][1], -kv[0][2], kv[0][0])):
        if impl == "baseline" or ("baseline", I, b) not in ok:
            continue
        base = ok[("baseline", I, b)]
        out.append({"impl": impl, "I": I, "batch": b,
                    "throughput_ratio": r["images_per_s"] / base["images_per_s"],
                    "throughput_ratio_best_step": r["images_per_s_best_step"] / base["images_per_s_best_step"],
                    "memory_ratio": r["peak_bytes"] / base["peak_bytes"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--depths", type=int, nargs="+", default=[0, 3, 7], help="IntermediateCaps layers I")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 3 on CPU, 10 on CUDA)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--impls", nargs="+", default=["capslib", "baseline"], choices=IMPLS)
    ap.add_argument("--C", type=int, default=20)
    ap.add_argument("--D", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mem-fraction", type=float, default=0.6,
                    help="a job may use at most this fraction of the memory available at start")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per job (default: none)")
    ap.add_argument("--no-check", action="store_true", help="skip the baseline == capslib check")
    ap.add_argument("--json", type=Path, default=None, help="write all figures here")
    ap.add_argument("--profile", action="store_true",
                    help="instead: torch.profiler table of one step per impl and depth (in this process)")
    ap.add_argument("--profile-rows", type=int, default=20)
    ap.add_argument("--worker", nargs=3, metavar=("IMPL", "I", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps is None:
        args.steps = 10 if args.device == "cuda" else 3

    if args.worker:
        impl, I, batch = args.worker[0], int(args.worker[1]), int(args.worker[2])
        res = worker(impl, I, batch, args.device, args.steps, args.warmup, args.threads, args.C, args.D, args.seed)
        print(json.dumps(res))
        return

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    dev_name = torch.cuda.get_device_name(0) if args.device == "cuda" else device_info(torch.device("cpu"))["device_name"]
    info = {"device": args.device, "device_name": dev_name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "C": args.C, "D": args.D, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
            "load_before": load(),
            "env": {k: v for k, v in os.environ.items()
                    if k.startswith(("MALLOC_", "OMP_", "MKL_", "THP_", "LD_PRELOAD"))}}
    print(f"# CapsNet[C={args.C}, D={args.D}, I] forward+backward, 3x32x32, batch {args.batch}")
    print(f"device: {args.device} ({dev_name}); torch {torch.__version__}; threads {info['threads']} "
          f"(of {os.cpu_count()} CPUs)")
    if info["env"]:
        print(f"environment: {info['env']}")
    print(f"before: {info['load_before']}")

    if args.profile:
        profile(args)
        return
    if not args.no_check and "baseline" in args.impls:
        from baseline_routing import check
        worst = check(device=args.device, verbose=False)
        info["check_worst_relative_diff"] = worst
        print(f"check: baseline == capslib (outputs and all gradients) to 1e-4; worst relative diff {worst:.1e}")
    if not args.no_check and "capslib-unfused" in args.impls:
        worst = check_unfused()
        info["check_unfused_worst_relative_diff"] = worst
        print(f"check: capslib == unfused reference (outputs and all gradients) to 1e-4; worst relative diff "
              f"{worst:.1e}")

    avail = available_bytes(args.device)
    info["available_bytes_at_start"] = avail
    jobs = plan(args, avail)
    print(f"memory available: {avail / 2**30:.1f} GiB; job budget {args.mem_fraction:g} of it")
    results = []
    for impl, I, batch, why in jobs:
        est = estimate_bytes(impl, I, batch, args.C, args.D)
        print(f"  running {impl:20s} I={I} batch={batch:4d} (est. peak {est / MiB:7.0f} MiB) ...", end="", flush=True)
        r = run_job(args, impl, I, batch)
        r["why"], r["estimate_bytes"] = why, est
        results.append(r)
        if "error" in r:
            print(" FAILED")
            print(r["error"])
        else:
            print(f" {r['images_per_s']:8.1f} img/s, peak {r['peak_bytes'] / MiB:7.0f} MiB, "
                  f"{r['wall_seconds']:.0f} s wall")
    info["load_after"] = load()

    mem_label = ("peak RSS growth over the RSS after model+input (VmHWM - VmRSS, HWM reset after setup)"
                 if args.device == "cpu" else "cuda.max_memory_allocated growth over model+input")
    print()
    print(f"## {dev_name} ({args.device}), torch {torch.__version__}, {info['threads']} threads")
    print(f"peak MiB = {mem_label}; max RSS/alloc = the absolute peak of the process")
    print()
    print(fmt_table(results, args.batch, args.impls))
    rat = ratios(results, args.impls)
    print()
    print("| I | batch | impl / baseline | throughput ratio | best-step throughput ratio | memory ratio "
          "| target (>=2x, <=0.5x) |")
    print("|---:|---:|---|---:|---:|---:|---|")
    for q in rat:
        met = "met" if q["throughput_ratio"] >= 2 and q["memory_ratio"] <= 0.5 else "NOT met"
        print(f"| {q['I']} | {q['batch']} | {q['impl']} | {q['throughput_ratio']:.2f}x | "
              f"{q['throughput_ratio_best_step']:.2f}x | {q['memory_ratio']:.3f}x | {met} |")
    print()
    print(f"before: {info['load_before']}")
    print(f"after:  {info['load_after']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "results": results, "ratios": rat}, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
