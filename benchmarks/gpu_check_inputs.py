"""What benchmarks/gpu_check.sh needs, in one line each: ``cache`` prints the phantom cache's path;
``check`` prints what is missing (nothing when all is there) and exits 1 if anything is."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

#: The parity part's data: the demo study on 150 phantom scans.
STUDY, OVERRIDES = "studies/demo.toml", ["data.max_scans=150"]
#: What the benchmarks import (train_throughput.py, accuracy_parity.py).
MODULES = (
    "torch",
    "nasopt.config.schema",
    "nasopt.data.prepare",
    "nasopt.data.splits",
    "nasopt.model",
    "nasopt.training",
)


def cache() -> Path:
    from nasopt.config.schema import load_config
    from nasopt.data.prepare import cache_path

    return cache_path(load_config(STUDY, OVERRIDES).data)


def check() -> list[str]:
    for module in MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            return [f"python package {exc.name!r} (run benchmarks/gpu_prepare.sh where pip works, carry .whl)"]
    import torch

    missing = [] if torch.cuda.is_available() else [f"CUDA (torch {torch.__version__} sees no GPU)"]
    if not cache().is_file():
        missing.append(f"phantom cache {cache()} (run benchmarks/gpu_prepare.sh, carry that file)")
    return missing


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if sys.argv[1:] == ["cache"]:
        print(cache())
    else:
        missing = check()
        print(f"gpu_check: missing {'; '.join(missing)}" if missing else "gpu_check: all inputs found")
        sys.exit(1 if missing else 0)
