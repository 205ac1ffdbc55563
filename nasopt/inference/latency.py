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
#: candidates); the median is recorded. A batch of 32 costs about as much as training two, and
#: its runs vary by a few percent (a first run sets up its shapes in well under that), so it gets
#: two: measuring stays a small share of a demo trial (benchmarks/latency_cost.py).
RUNS = {1: 5, 32: 2}
#: Untimed batch-1 runs first: the allocator, oneDNN's primitives and cuDNN's plans.
WARMUP = 2


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
    threads = torch.get_num_threads()
    return f"{model}, {threads} thread{'s' if threads != 1 else ''}"


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
        for k, (batch, runs) in enumerate(RUNS.items()):
            x = torch.zeros(batch, 1, input_size, input_size, input_size, device=device)
            x = x.contiguous(memory_format=memory_format)
            warmup = WARMUP if k == 0 else 0
            times = []
            for i in range(warmup + runs):
                _sync(device)
                start = time.perf_counter()
                model(x)
                _sync(device)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000)
            ms[batch] = round(statistics.median(times), 3)
    return Latency(ms, device_name(device), time.perf_counter() - t0)
