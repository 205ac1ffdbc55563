"""``nasopt explain``: where an ensemble looks, as PNG figures of CBAM attention.

For each crop (the same inputs as ``nasopt predict``: a ``.npy`` crop, or a CT volume with
centres) one figure: the three mid-planes in a lung window, one row per member with its deepest
CBAM's spatial attention (read with hooks, :mod:`nasopt.inference.attention`), and a last row with the
members' attention averaged by their ensemble weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from nasopt.ensemble.module import load_ensemble
from nasopt.inference.attention import last_attention
from nasopt.inference.predict import cut_crops, load_input, resolve_inputs, stem
from nasopt.visualization import figures


def explain(
    ensemble_file: Path,
    inputs: Sequence[str],
    out: Path,
    *,
    centre: str | None = None,
    centres_csv: Path | None = None,
    coords: str = "world",
) -> tuple[list[Path], list[str]]:
    """(the PNG written for each crop, notes)."""
    kinds, centres, notes = resolve_inputs(ensemble_file, inputs, centre, centres_csv, coords)
    ensemble = load_ensemble(ensemble_file)
    weights = ensemble.weights.tolist()
    written: list[Path] = []
    for item in inputs:
        loaded = load_input(item, kinds[item], centres.get(item, []), coords)  # type: ignore[arg-type]
        for cut in cut_crops(loaded, ensemble.input_size, notes):
            hu = torch.from_numpy(cut.crop).float()[None, None]
            rows, weighted, total = [], torch.zeros(hu.shape[-3:]), 0.0
            for member, entry, weight in zip(ensemble.members, ensemble.header.members, weights):
                prob, attention = last_attention(member, hu)
                name = f"trial {entry.model.trial}" if entry.model.trial is not None else entry.prefix.rstrip(".")
                caption = f"{name} (w {weight:.2f})\np = {float(prob[0]):.2f}"
                rows.append((cut.crop, None if attention is None else attention[0].numpy(), caption))
                if attention is not None:
                    weighted += weight * attention[0]
                    total += weight
            with torch.inference_mode():
                p = float(ensemble(hu)[0])
            rows.append((cut.crop, (weighted / total).numpy() if total else None, f"ensemble\np = {p:.2f}"))
            where = "" if cut.centre is None else " at (" + ", ".join(f"{v:.1f}" for v in cut.centre) + ") mm"
            path = out / f"{len(written):04d}-{stem(item)}.png"
            title = f"{Path(item).name}{where}: deepest CBAM's spatial attention, low (blue) to high (red)"
            note = "" if total else "no member has CBAM: inputs only"
            written.append(figures.attention_grid(rows, path, title, note))
    return written, notes
