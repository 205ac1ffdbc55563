"""Local launcher: several search workers on one machine, sharing one study.

Each worker is a ``nasopt worker`` process with its index (and so its sampler seed), its share
of the CPU threads and, on a GPU machine, a GPU (round robin, so several workers share a GPU
when there are more workers than GPUs). All start at once: a missing data cache is prepared by
one of them under a lock while the others wait for it. The ``launch`` command prints the Pareto
front once, when all have finished; a worker that fails is reported with its exit status.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading

from nasopt.search.worker import WorkerOptions


def worker_commands(n: int, opts: WorkerOptions, cpus: int, gpus: int) -> list[list[str]]:
    """The command line of each of ``n`` workers: ``opts``, with its index, and where ``opts``
    leaves them open its share of the CPU threads and a GPU (round robin)."""
    cmds = []
    for i in range(n):
        mine = dataclasses.replace(
            opts,
            index=i,
            threads=opts.threads or max(1, cpus // n),
            device=f"cuda:{i % gpus}" if opts.device == "auto" and gpus else opts.device,
        )
        cmds.append([sys.executable, "-m", "nasopt", "worker", *mine.argv()])
    return cmds


def _pump(i: int, proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(f"[w{i}] {line}")
        sys.stdout.flush()


def launch(n: int, opts: WorkerOptions, gpus: int = 0) -> int:
    """Run ``n`` workers to completion; returns the first non-zero exit status, else 0."""
    cmds = worker_commands(n, opts, os.cpu_count() or 1, gpus)
    # Workers write to a pipe: unbuffered (lines arrive as printed), terminal width (200 without one) less the prefix.
    env = dict(os.environ, COLUMNS=str(max(60, shutil.get_terminal_size((205, 24)).columns - 5)), PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    try:
        for i, cmd in enumerate(cmds):
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
            )
            procs.append(proc)
            pumps.append(threading.Thread(target=_pump, args=(i, proc), daemon=True))
            pumps[-1].start()
        codes = [p.wait() for p in procs]
        for pump in pumps:
            pump.join()
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)  # each worker marks its running trial and exits
        for p in procs:
            p.wait()
        raise
    for i, code in enumerate(codes):
        if code:
            print(f"[w{i}] exited with status {code}", file=sys.stderr, flush=True)
    return next((c for c in codes if c), 0)
