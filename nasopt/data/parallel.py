"""Data preparation over processes, with a progress bar (on stderr, so stdout stays for results).

Generic: it knows no source. A task imports what it needs (pylidc, SimpleITK) in its process.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from typing import Any


def progress_bar(enabled: bool) -> Any:
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def run_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    *,
    workers: int,
    progress: bool,
    description: str,
    unit: str = "scans",
    check: Callable[[Any], None] | None = None,
) -> list[Any]:
    """``fn(*task)`` for every task, here or in a spawn process pool, in task order.

    ``check`` sees each result as it arrives, in this process; an exception it raises stops
    the run at once (pending tasks are cancelled) rather than after every scan was read.
    Prints throughput (``unit`` per minute) when done.
    """
    started = time.perf_counter()
    results: list[Any] = [None] * len(tasks)
    with progress_bar(progress) as bar:
        task_id = bar.add_task(description, total=len(tasks)) if bar else None
        if workers <= 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                results[i] = fn(*task)
                if check is not None:
                    check(results[i])
                if bar is not None:
                    bar.advance(task_id)
        else:
            # spawn: a forked child would share the parent's SQLite connection and SimpleITK threads
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context) as pool:
                futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
                try:
                    for future in as_completed(futures):
                        results[futures[future]] = future.result()
                        if check is not None:
                            check(results[futures[future]])
                        if bar is not None:
                            bar.advance(task_id)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    elapsed = time.perf_counter() - started
    if progress:
        rate = 60.0 * len(tasks) / max(elapsed, 1e-9)
        print(f"{description}: {len(tasks)} {unit} in {elapsed:.1f} s ({rate:.1f} {unit}/min)", file=sys.stderr)
    return results
