"""Where a trial came from: the code, the libraries, the device, the settings and the data it was
trained with, recorded on every trial (:attr:`Key.PROVENANCE`) so that ``nasopt retrain`` can
rebuild it and say what differs when it cannot reproduce it."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

import nasopt
from nasopt.config.schema import StudyConfig
from nasopt.data.noduleset import NoduleSet
from nasopt.inference.latency import device_name
from nasopt.training.fit import use_bf16

#: What provenance holds, in the order `retrain` compares and the note shows it.
FIELDS = ("nasopt", "git", "torch", "optuna", "numpy", "device", "deterministic", "data", "split")


def git_state(root: Path = Path(nasopt.__file__).resolve().parents[1]) -> dict[str, Any] | None:
    """The checkout's commit and whether tracked or new files differ from it; ``None`` outside a
    checkout (an installed wheel) or without git."""
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode or status.returncode:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def split_digest(train: NoduleSet, val: NoduleSet) -> str:
    """Short sha256 of the patients the trial trained and validated on."""
    parts = {"train": sorted(set(train.patients.tolist())), "val": sorted(set(val.patients.tolist()))}
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def provenance(cfg: StudyConfig, ns: NoduleSet, train: NoduleSet, val: NoduleSet, device: torch.device) -> dict:
    """This process's provenance for trials of ``cfg`` on ``ns`` (a trial adds its seed)."""
    return {
        "nasopt": nasopt.__version__,
        "git": git_state(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "numpy": np.__version__,
        "device": device_name(device),
        "deterministic": {
            "precision": "bf16" if use_bf16(cfg.train.precision, device) else "fp32",
            "threads": torch.get_num_threads(),
            "channels_last": cfg.train.channels_last,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        },
        "data": ns.fingerprint(),
        "split": split_digest(train, val),
    }


def one_line(p: dict) -> str:
    """The dashboard note's line: ``nasopt 0.1.0 @ 1a2b3c4 (dirty), torch 2.13.0, ...``."""
    git = p.get("git")
    code = f"nasopt {p['nasopt']}" + (f" @ {git['commit'][:7]}{' (dirty)' if git['dirty'] else ''}" if git else "")
    d = p["deterministic"]
    return (
        f"{code}, torch {p['torch']}, optuna {p['optuna']}, numpy {p['numpy']}; {p['device']}, {d['precision']}; "
        f"seed {p['seed']}; data {p['data']}, split {p['split']}"
    )


def differences(recorded: dict, now: dict) -> list[str]:
    """What differs between a trial's provenance and this process's, one phrase each."""
    found = []
    for field in FIELDS:
        if recorded.get(field) != now.get(field):
            found.append(f"{field}: recorded {_show(recorded.get(field))}, now {_show(now.get(field))}")
    return found


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
