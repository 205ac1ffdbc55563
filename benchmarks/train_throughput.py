"""Training throughput of the trainer's own step on the three networks of PAPER.md.

Each configuration runs in its own process (so its peak memory is its own) and prints:
samples/s (median over --repeats timed runs of about --seconds each of full training steps:
on-device augmentation, forward, A-Softmax loss, backward, Adam), achieved FLOP/s (torch's flop
counter on one step), and peak memory (CUDA allocator peak, or process peak RSS on CPU).
The `paper-style` row trains the same network the way the published NAS-Lung loop does (a
DataLoader over per-sample numpy augmentation, contiguous fp32, batch 8): the same-run
baseline of the `x paper-style` ratio.

    python benchmarks/train_throughput.py                     # CPU, fp32 and bf16 where fast
    python benchmarks/train_throughput.py --device cuda --batch 8 32 128
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

ARCHS = {
    "0.03M [4,4] [4,8,8] [8,8,16]": ((4, 4), (4, 8, 8), (8, 8, 16)),
    "1.55M [16,32] [32,64] [64,64,128]": ((16, 32), (32, 64), (64, 64, 128)),
    "28.5M [64,64,64] [128,128,256] [256,256,256,512]": ((64, 64, 64), (128, 128, 256), (256, 256, 256, 512)),
}
# PAPER.md: the published training code on a 2-core machine of this project's kind, batch 8, fp32
# (a machine with AVX-512/AMX; compare against the same-run paper-style row instead).
PAPER = {0: "41-54", 1: "36-41", 2: "6.7"}


def paper_style_batches(pool, labels, batch: int, norm: tuple[float, float], seed: int = 0):
    """Endless batches the way the published NAS-Lung loop makes them: a Dataset that augments
    one sample at a time in numpy (4-voxel-padded random crop, flips, zero-out cube), collated
    by a DataLoader in the training process. Written here for comparison, not copied."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    crops = pool.cpu().numpy()

    class PerSample(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(crops)

        def __getitem__(self, i: int):
            x = (crops[i].astype(np.float32) - norm[0]) / norm[1]
            o = rng.integers(0, 9, 3)
            x = x[o[0] : o[0] + 32, o[1] : o[1] + 32, o[2] : o[2] + 32]
            for axis in range(3):
                if rng.random() < 0.5:
                    x = np.flip(x, axis)
            x = np.ascontiguousarray(x)
            if rng.random() < 0.5:
                z = rng.integers(0, 29, 3)
                x[z[0] : z[0] + 4, z[1] : z[1] + 4, z[2] : z[2] + 4] = 0
            return torch.from_numpy(x[None]), int(labels[i])

    loader = torch.utils.data.DataLoader(PerSample(), batch_size=batch, shuffle=True, drop_last=True)
    while True:
        yield from loader


def measure(arch_idx: int, precision: str, batch: int, seconds: float, repeats: int, device: str, threads: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nasopt.config import TrainSection
    from nasopt.model import AngularMarginLoss, build_network, count_params
    from nasopt.space import Architecture
    from nasopt.train import augment_batch, train_step, use_bf16, use_channels_last

    torch.set_num_threads(threads)
    dev = torch.device(device)
    baseline = precision == "paper-style"
    cfg = TrainSection(precision="fp32" if baseline else precision, channels_last=False if baseline else "auto")
    stages = list(ARCHS.values())[arch_idx]
    arch = Architecture(stages, True, (True,) * 3, 4)
    mf = torch.channels_last_3d if use_channels_last(cfg.channels_last, dev) else torch.contiguous_format
    model = build_network(arch).to(dev, memory_format=mf)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=cfg.betas)
    crit = AngularMarginLoss(4)
    bf16 = use_bf16(precision, dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    side = cfg.input_size + 2 * cfg.max_shift
    pool = torch.randint(-1000, 300, (max(256, batch), side, side, side), dtype=torch.int16, device=dev)
    labels = torch.randint(0, 2, (len(pool),), device=dev)
    norm = (-600.0, 400.0)

    batches = paper_style_batches(pool, labels.cpu(), batch, norm)

    def step() -> torch.Tensor:
        if baseline:
            x, y = next(batches)
            return train_step(model, opt, crit, x.to(dev), y.to(dev), False)
        idx = torch.randint(0, len(pool), (batch,), device=dev, generator=gen)
        return train_step(model, opt, crit, augment_batch(pool[idx], cfg, norm, gen, mf), labels[idx], bf16)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(2):
        step()
    sync()
    with FlopCounterMode(display=False) as counter:
        step()
    flops_per_step = counter.get_total_flops()
    t0 = time.perf_counter()
    float(step())
    sync()
    steps = max(1, round(seconds / (time.perf_counter() - t0)))
    rates = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        float(loss)
        sync()
        rates.append(batch * steps / (time.perf_counter() - t0))
    sps = statistics.median(rates)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "params": count_params(model),
        "samples_per_s": sps,
        "min": min(rates),
        "max": max(rates),
        "gflops": flops_per_step * sps / batch / 1e9,
        "peak_mib": peak,
        "bf16": bf16,
        "steps": steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", nargs="+", default=["paper-style", "fp32", "bf16"],
                    help="paper-style = the published loop's shape (per-sample numpy augmentation, contiguous fp32), the same-run baseline")
    ap.add_argument("--batch", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--archs", nargs="+", type=int, default=[0, 1, 2], help="indices into the table")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--force-bf16", action="store_true", help="run bf16 even where the hardware makes it slow")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = ap.parse_args()

    import torch

    threads = args.threads or torch.get_num_threads()
    if args.one:
        a, p, b = json.loads(args.one)
        print(json.dumps(measure(a, p, b, args.seconds, args.repeats, args.device, threads)))
        return

    from nasopt.train import bf16_is_fast

    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {threads} threads"
    print(f"torch {torch.__version__} on {name}; median of {args.repeats} runs of ~{args.seconds:.0f} s; trainer defaults (on-device augmentation, channels-last on GPU)")
    print(f"{'network':<50} {'prec':<11} {'batch':>5} {'samples/s':>10} {'(min-max)':>14} {'GFLOP/s':>8} {'peak MiB':>9} {'x paper-style':>13} {'PAPER.md':>9}")
    for a in args.archs:
        base = None
        for p in args.precision:
            if p == "bf16" and not bf16_is_fast(dev) and not args.force_bf16:
                print(f"{list(ARCHS)[a]:<50} bf16        skipped: this {dev.type} has no fast bf16 (no AMX / AVX512-BF16); --force-bf16 runs it")
                continue
            for b in [8] if p == "paper-style" else args.batch:
                cmd = [sys.executable, __file__, "--one", json.dumps([a, p, b]), "--device", args.device,
                       "--seconds", str(args.seconds), "--repeats", str(args.repeats), "--threads", str(threads)]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                if p == "paper-style":
                    base = r["samples_per_s"]
                ratio = f"{r['samples_per_s'] / base:.2f}" if base else ""
                paper = PAPER[a] if p == "paper-style" else ""
                spread = f"({r['min']:.0f}-{r['max']:.0f})"
                print(f"{list(ARCHS)[a]:<50} {p:<11} {b:>5} {r['samples_per_s']:>10.1f} {spread:>14} "
                      f"{r['gflops']:>8.1f} {r['peak_mib']:>9.0f} {ratio:>13} {paper:>9}", flush=True)


if __name__ == "__main__":
    main()
