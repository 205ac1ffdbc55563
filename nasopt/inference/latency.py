"""Inference latency of a network on this process's device, measured the way it will be deployed.

The network runs as :class:`~nasopt.inference.core.Member` (normalisation, network, softmax) in
eval mode under ``inference_mode``, in float32 and in the memory layout that ``set_layout`` gives
it on this device: what evaluate, predict and the exported ensemble run. Weights do not change the
time, so an untrained network gives the trained one's latency before any training is spent.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nasopt.inference.core import Member, set_layout

#: Timed runs per batch size measured: one nodule (a reader's click), and a batch of 32 (a scan's
#: candidates). The median is recorded. Batch 32 costs as much as training a few batches, so it
#: gets fewer runs: measuring stays under 3% of a demo trial (benchmarks/latency_cost.py).
RUNS = {1: 9, 32: 3}
#: Untimed runs first, per batch size: allocator, oneDNN primitive and cuDNN plan caches.
WARMUP = 1


@dataclass(frozen=True)
class Latency:
    ms: dict[int, float]  # batch size -> median milliseconds per forward pass
    device_name: str
    seconds: float  # what the measurement cost


def device_name(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU's model and the threads torch uses on it
    (CPU latency depends on both)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return f"{model}, {torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(network: nn.Module, input_size: int, device: torch.device, layout: str | bool = "auto") -> Latency:
    """Median milliseconds per forward pass at each batch size of :data:`RUNS`, after :data:`WARMUP` runs."""
    t0 = time.perf_counter()
    model = Member(network, (0.0, 1.0)).to(device).eval()
    memory_format = set_layout(model, layout, device)
    ms = {}
    with torch.inference_mode():
        for batch, runs in RUNS.items():
            x = torch.zeros(batch, 1, input_size, input_size, input_size, device=device)
            x = x.contiguous(memory_format=memory_format)
            times = []
            for i in range(WARMUP + runs):
                _sync(device)
                start = time.perf_counter()
                model(x)
                _sync(device)
                if i >= WARMUP:
                    times.append((time.perf_counter() - start) * 1000)
            ms[batch] = round(statistics.median(times), 3)
    return Latency(ms, device_name(device), time.perf_counter() - t0)
