"""GPU benchmark: training throughput of the paper's configurations and projected GPU-hours of Tables 1-4.

    python benchmarks/bench_gpu.py [--device cuda] [--batch 128] [--steps 5] [--tables table1 table2 table3 table4]
                                   [--amp both|off|on] [--json out.json]
    python benchmarks/bench_gpu.py --device cpu --plumbing     # CPU check of the script itself (tests)

For every distinct model of the paper's grids (profile ``paper``: CIFAR-10 32×32, batch 128, Adam,
margin loss) it times a training step (zero_grad, forward, loss, backward, Adam step; CUDA
synchronised) after warm-up steps, in float32 and under bf16 autocast (routing stays float32 inside;
see capslib.engine.routing), and prints images/s and peak memory. On CUDA the capsule layers take the PyTorch
routing path (votes materialised, recomputed in backward); the fused kernel is CPU-only.

The projection: a "train" point costs epochs × 45,000 training images / throughput, plus one
validation pass per epoch and a test pass at ~1/3 of a training step's cost per image; a "prune"
point (§3.5) costs a base and a CCM training of the unpruned model plus a retraining of the pruned one
(C' = C·(1 − PR) capsule types, D unchanged — the channel rule removes whole multiples of D; the exact
widths come from the CHIP plan at run time). Table 5 (a depth search of open length) is left out. The
totals are per seed: multiply by the seeds you run.

``--plumbing`` replaces every model by a miniature (C ≤ 4, D ≤ 4, I ≤ 1) and times one step at
batch 4: it exercises every line of the script on a CPU in seconds, and its numbers are NOT a
measurement (the output says so).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from capslib.engine.config import ModelConfig, RunConfig  # noqa: E402
from capslib.experiments.grids import get_experiment  # noqa: E402
from capslib.engine.losses import margin_loss  # noqa: E402
from capslib.engine.model import CapsNet  # noqa: E402
from capslib.engine.provenance import capslib_version, device_info, resolve_device  # noqa: E402
from capslib.experiments.sweeps import plan  # noqa: E402

TRAIN_IMAGES = 45_000  # CIFAR-10's 50,000 training images less the 5,000 held out for validation
EVAL_COST = 1 / 3  # a forward pass (validation 5,000 images each epoch, test 10,000 once), per image,
#                   relative to a training step


def model_key(m: ModelConfig) -> tuple:
    return (m.C, m.D, m.I, m.backbone_kernels, m.backbone_strides, m.backbone_padding, m.primary_kernel,
            m.primary_stride, m.primary_padding)


def miniature(m: ModelConfig) -> ModelConfig:
    return m.replace(C=min(m.C, 4), D=min(m.D, 4), I=min(m.I, 1))


def throughput(m: ModelConfig, device: torch.device, batch: int, steps: int, amp: bool, warmup: int = 2) -> dict:
    """Images/s and peak memory (MiB; CUDA only) of a training step of CapsNet(m)."""
    torch.manual_seed(0)
    model = CapsNet(m).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=2e-7)
    x = torch.randn(batch, m.in_channels, m.image_size, m.image_size, device=device)
    y = torch.randint(0, m.num_classes, (batch,), device=device)
    use_amp = amp and device.type == "cuda"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(x)
        margin_loss(out.lengths.float(), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else float("nan")
    return {"images_per_s": batch / dt, "ms_per_step": 1e3 * dt, "peak_mib": peak}


def pruned_types(C: int, D: int, pr: float) -> int:
    """C' after pruning the PrimaryCaps' C·D channels at PR, rounded to whole capsule types."""
    return max(1, round(C * (1 - pr)))


def point_models(point, cfg: RunConfig) -> list[tuple[str, ModelConfig, int]]:
    """(stage, model, epochs) trainings a grid point runs."""
    m, e = cfg.model, cfg.train.epochs
    if point.kind == "train":
        return [("train", m, e)]
    if point.kind == "prune":
        after = m.replace(C=pruned_types(m.C, m.D, point.pr), I=point.I_after if point.I_after is not None else m.I)
        return [("base", m, e), ("ccm", m, e), ("retrain", after, e)]
    raise ValueError(f"no projection for point kind {point.kind!r}")


def projection(tables: list[str], rates: dict[tuple, float], plumbing: bool) -> dict[str, float]:
    """GPU-hours per table (one seed) from the measured images/s of each model."""
    hours = {}
    for name in tables:
        total = 0.0
        for point, cfg in plan(name, "paper"):
            for _, m, epochs in point_models(point, cfg):
                rate = rates[model_key(miniature(m) if plumbing else m)]
                total += epochs * (TRAIN_IMAGES + EVAL_COST * 5_000) / rate + EVAL_COST * 10_000 / rate
        hours[name] = total / 3600
    return hours


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--tables", nargs="+", default=["table1", "table2", "table3", "table4"])
    p.add_argument("--amp", choices=["both", "off", "on"], default="both")
    p.add_argument("--plumbing", action="store_true", help="miniature models, one step: a CPU check of the script")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if args.plumbing:
        args.batch, args.steps = 4, 1
    info = device_info(device)
    print(f"capslib {capslib_version()} | {info['device_name']} ({device}) | batch {args.batch}, {args.steps} timed steps"
          + (" | PLUMBING CHECK: miniature models, not a measurement" if args.plumbing else ""))
    models: dict[tuple, ModelConfig] = {}
    for name in args.tables:
        get_experiment(name)
        for point, cfg in plan(name, "paper"):
            for _, m, _ in point_models(point, cfg):
                m = miniature(m) if args.plumbing else m
                models.setdefault(model_key(m), m)
    modes = {"both": [False, True], "off": [False], "on": [True]}[args.amp]
    if device.type != "cuda":
        modes = [False]  # bf16 autocast is a CUDA path here
    rows, rates = [], {}
    print(f"{'C':>3} {'D':>3} {'I':>3} {'kernels':>7} | " + " | ".join(
        f"{'bf16' if a else 'fp32'} img/s  peak MiB" for a in modes))
    for key, m in sorted(models.items(), key=lambda kv: kv[0][:3]):
        res = {("bf16" if a else "fp32"): throughput(m, device, args.batch, args.steps, a) for a in modes}
        rates[key] = max(r["images_per_s"] for r in res.values())
        rows.append({"C": m.C, "D": m.D, "I": m.I, "kernels": m.backbone_kernels[0], **res})
        print(f"{m.C:>3} {m.D:>3} {m.I:>3} {m.backbone_kernels[0]:>7} | " + " | ".join(
            f"{r['images_per_s']:>10.0f} {r['peak_mib']:>9.0f}" for r in res.values()), flush=True)
    hours = projection(args.tables, rates, args.plumbing)
    print("\nProjected GPU-hours per seed (faster of fp32/bf16 per model; train 45,000 images/epoch, "
          "validation each epoch, test once):")
    for name, h in hours.items():
        print(f"  {name}: {h:.2f} h")
    print(f"  total: {sum(hours.values()):.2f} h")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": info, "plumbing": args.plumbing, "batch": args.batch,
                                               "models": rows, "gpu_hours": hours}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
