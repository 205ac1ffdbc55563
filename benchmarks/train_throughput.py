"""Training throughput of the trainer's own step on the three networks of docs/paper.md.

Each row (configuration) runs in its own warm process, so its peak memory is its own, and the
timed runs go round-robin across a network's rows, so the machine's slow spells hit every row
alike. A row prints samples/s (median over --repeats timed runs of about --seconds each of full
training steps: on-device augmentation, forward, A-Softmax loss, backward, Adam), achieved
FLOP/s (torch's flop counter on one step), and peak memory (CUDA allocator peak, or process peak
RSS on CPU).
The `paper-style` row trains the same network the way the published NAS-Lung loop does (a
DataLoader over per-sample numpy augmentation, contiguous fp32, batch 8): the same-run
baseline of the `x paper-style` ratio. `--workers 1 2` adds rows for several trainers running
at once on the same machine (or GPU), the threads split between them: their summed samples/s.
`--parity` then prints the accuracy-parity line (see benchmarks/accuracy_parity.py).

    python benchmarks/train_throughput.py                     # CPU, fp32 and bf16 where fast
    python benchmarks/train_throughput.py --device cuda --batch 8 32 128 --workers 1 2 4 8
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
# docs/paper.md: the published training code on a 2-core machine of this project's kind, batch 8, fp32
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


def serve(arch_idx: int, precision: str, batch: int, seconds: float, device: str, threads: int) -> None:
    """One configuration in this process: warm up, print ``ready``, then for each ``go`` line on
    stdin run one timed run of about ``seconds`` and print its samples/s; on ``done`` print the
    figures that do not change between runs (JSON) and return."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nasopt.config.schema import TrainSection
    from nasopt.inference.core import set_layout
    from nasopt.model import AngularMarginLoss, Architecture, build_network, count_params
    from nasopt.training.fit import augment_batch, make_optimizer, train_step, use_bf16

    torch.set_num_threads(threads)
    dev = torch.device(device)
    baseline = precision == "paper-style"
    cfg = TrainSection(precision="fp32" if baseline else precision, channels_last=False if baseline else "auto")
    arch = Architecture(list(ARCHS.values())[arch_idx], True, (True,) * 3, 4)
    model = build_network(arch).to(dev)
    mf = set_layout(model, cfg.channels_last, dev)
    # The published loop's optimizer is plain Adam; the trainer's is its own (fused).
    if baseline:
        opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=cfg.betas)
    else:
        opt = make_optimizer(model, 2e-4, cfg)
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
    t0 = time.perf_counter()
    float(step())
    sync()
    steps = max(1, round(seconds / (time.perf_counter() - t0)))
    print("ready", flush=True)
    while sys.stdin.readline().strip() == "go":
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        float(loss)
        sync()
        print(batch * steps / (time.perf_counter() - t0), flush=True)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "params": count_params(model),
                "flops_per_sample": counter.get_total_flops() / batch,
                "peak_mib": peak,
                "bf16": bf16,
            }
        ),
        flush=True,
    )


class Group:
    """``workers`` processes serving one configuration, ``threads // workers`` threads each."""

    def __init__(self, config: list, workers: int, args: argparse.Namespace, threads: int) -> None:
        self.rates: list[float] = []
        cmd = [
            sys.executable,
            __file__,
            "--one",
            json.dumps(config),
            "--device",
            args.device,
            "--seconds",
            str(args.seconds),
            "--threads",
            str(max(1, threads // workers)),
        ]
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
        self.procs = [subprocess.Popen(cmd, **pipes, text=True) for _ in range(workers)]
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                sys.exit(f"benchmark process failed with exit code {p.wait()}: {' '.join(cmd)}")

    def _tell(self, word: str) -> list[str]:
        for p in self.procs:
            p.stdin.write(word + "\n")
            p.stdin.flush()
        return [p.stdout.readline() for p in self.procs]

    def timed_run(self) -> None:
        """All workers run one timed run at once; the group's rate is their sum."""
        self.rates.append(sum(float(r) for r in self._tell("go")))

    def finish(self) -> dict:
        info = [json.loads(line) for line in self._tell("done")]
        for p in self.procs:
            p.wait()
        sps = statistics.median(self.rates)
        return {
            **info[0],
            "samples_per_s": sps,
            "min": min(self.rates),
            "max": max(self.rates),
            "gflops": info[0]["flops_per_sample"] * sps / 1e9,
            "peak_mib": max(i["peak_mib"] for i in info),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--precision",
        nargs="+",
        default=["paper-style", "fp32", "bf16"],
        help="paper-style = the published loop's shape (per-sample numpy augmentation, contiguous fp32), "
        "the same-run baseline",
    )
    ap.add_argument("--batch", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--archs", nargs="+", type=int, default=[0, 1, 2], help="indices into the table")
    ap.add_argument("--workers", nargs="+", type=int, default=[1], help="trainers running at once (rows per count)")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="threads in all (split between workers)")
    ap.add_argument("--force-bf16", action="store_true", help="run bf16 even where the hardware makes it slow")
    ap.add_argument("--parity", action="store_true", help="then print the accuracy-parity line")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: serve one configuration
    args = ap.parse_args()

    import torch

    threads = args.threads or torch.get_num_threads()
    if args.one:
        serve(*json.loads(args.one), args.seconds, args.device, threads)
        return

    from nasopt.training.fit import bf16_is_fast

    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {threads} threads"
    print(
        f"torch {torch.__version__} on {name}; median of {args.repeats} timed runs of ~{args.seconds:g} s per row, "
        "taken in turn across the rows of a network; trainer defaults: on-device augmentation, channels-last "
        "convolutions on CPU, channels-last throughout on GPU"
    )
    print(
        f"{'network':<50} {'prec':<11} {'batch':>5} {'workers':>7} {'samples/s':>10} {'(min-max)':>14} "
        f"{'GFLOP/s':>8} {'peak MiB':>9} {'x paper-style':>13} {'paper':>9}"
    )
    for a in args.archs:
        rows = []
        for p in args.precision:
            if p == "bf16" and not bf16_is_fast(dev) and not args.force_bf16:
                print(
                    f"{list(ARCHS)[a]:<50} bf16        skipped: this {dev.type} has no fast bf16 "
                    "(no AMX / AVX512-BF16); --force-bf16 runs it"
                )
                continue
            for b in [8] if p == "paper-style" else args.batch:
                rows += [(p, b, w) for w in ([1] if p == "paper-style" else args.workers)]
        # One warm group of processes per row; timed runs go round-robin across the rows, so a
        # slow spell of this shared machine hits every row alike and the ratios stay fair.
        groups = [Group([a, p, b], w, args, threads) for p, b, w in rows]
        for _ in range(args.repeats):
            for g in groups:
                g.timed_run()
        base = None
        for (p, b, w), g in zip(rows, groups):
            r = g.finish()
            if p == "paper-style":
                base = r["samples_per_s"]
            ratio = f"{r['samples_per_s'] / base:.2f}" if base else ""
            spread = f"({r['min']:.0f}-{r['max']:.0f})"
            print(
                f"{list(ARCHS)[a]:<50} {p:<11} {b:>5} {w:>7} {r['samples_per_s']:>10.1f} {spread:>14} "
                f"{r['gflops']:>8.1f} {r['peak_mib']:>9.0f} {ratio:>13} {PAPER[a] if p == 'paper-style' else '':>9}",
                flush=True,
            )
    if args.parity:
        from accuracy_parity import main as parity_main

        parity_main(["--device", args.device])


if __name__ == "__main__":
    main()
