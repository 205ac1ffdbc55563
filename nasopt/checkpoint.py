"""Weights as safetensors with a JSON header; written atomically, loaded without unpickling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nasopt.atomic import atomic_write
from nasopt.errors import DataError

HEADER_KEY = "nasopt"


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> Path:
    """Write ``tensors`` and a JSON ``header`` to ``path`` via a temp file and a rename."""
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            tmp,
            metadata={HEADER_KEY: json.dumps(header, sort_keys=True)},
        )
    return path


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, header) of a file written by :func:`save_weights`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if HEADER_KEY not in meta:
        raise DataError(f"{path}: safetensors file without a nasopt header; was it written by nasopt?")
    return tensors, json.loads(meta[HEADER_KEY])
