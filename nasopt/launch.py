"""Local launcher: several search workers on one machine, sharing one study.

Each worker is a ``nasopt search`` process with its own sampler seed, its share of the CPU
threads and, on a GPU machine, a GPU (round robin, so several workers share a GPU when there
are more workers than GPUs). Worker 0 starts first and prepares the data; the others start once
it is training, so a missing cache is built once. The workers print no Pareto front; the
``launch`` command prints it once, when all have finished.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

READY = "held out"  # the line a worker prints once its data is loaded and split


def worker_commands(n: int, args: Sequence[str], cpus: int, gpus: int) -> list[list[str]]:
    """The command line of each of ``n`` workers for ``nasopt search`` arguments ``args``."""
    cmds = []
    for i in range(n):
        cmd = [sys.executable, "-m", "nasopt", "search", *args, "--worker-index", str(i), "--no-front"]
        if option_value(args, "--threads") is None:
            cmd += ["--threads", str(max(1, cpus // n))]
        if option_value(args, "--device") is None and gpus:
            cmd += ["--device", f"cuda:{i % gpus}"]
        cmds.append(cmd)
    return cmds


def option_value(args: Sequence[str], name: str, default: str | None = None) -> str | None:
    """The value of ``name`` in a command line, given as ``name value`` or ``name=value``."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def _pump(i: int, proc: subprocess.Popen, ready: threading.Event | None) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(f"[w{i}] {line}")
        sys.stdout.flush()
        if ready is not None and READY in line:
            ready.set()
    if ready is not None:
        ready.set()  # also on exit: the launcher then sees the exit code


def launch(n: int, args: Sequence[str], gpus: int = 0) -> int:
    """Run ``n`` workers to completion; returns the first non-zero exit status, else 0."""
    cmds = worker_commands(n, list(args), os.cpu_count() or 1, gpus)
    # Workers write to a pipe: unbuffered (the launcher waits for a line), terminal width less the prefix.
    env = dict(os.environ, COLUMNS=str(max(60, shutil.get_terminal_size().columns - 5)), PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []

    def start(i: int, ready: threading.Event | None = None) -> None:
        proc = subprocess.Popen(
            cmds[i], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
        )
        procs.append(proc)
        pump = threading.Thread(target=_pump, args=(i, proc, ready), daemon=True)
        pump.start()
        pumps.append(pump)

    try:
        ready = threading.Event()
        start(0, ready)
        ready.wait()
        if procs[0].poll() not in (None, 0):
            pumps[0].join()
            return procs[0].returncode
        for i in range(1, n):
            start(i)
        codes = [p.wait() for p in procs]
        for pump in pumps:
            pump.join()
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)  # each worker marks its running trial and exits
        for p in procs:
            p.wait()
        raise
    return next((c for c in codes if c), 0)
