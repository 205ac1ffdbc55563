"""How one trial is shown: the note optuna-dashboard shows on its page, and the figures uploaded
beside its weights. The worker hands these to the objective, which does not draw anything itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasopt.artifacts.checkpoint import CheckpointHeader, build_model
from nasopt.artifacts.record import Key
from nasopt.data.noduleset import NoduleSet
from nasopt.data.sources import PHANTOM_TAG
from nasopt.inference.attention import example_rows
from nasopt.inference.core import Member
from nasopt.model import Architecture
from nasopt.search.provenance import one_line
from nasopt.training.fit import FitResult
from nasopt.visualization.figures import attention_grid, learning_curve


def trial_note(number: int, arch: Architecture, record: dict[str, Any], stopped: str | None = None) -> str:
    """The markdown note optuna-dashboard shows on a trial's page, from the trial's record
    (:class:`Key` values and ``val_`` metrics); ``stopped`` says why a trial stopped early (its
    metrics are then those at the rung where it stopped) or was not trained."""
    lines = [f"### Trial {number}", "", "| part | blocks | widths | CBAM |", "|---|---|---|---|"]
    lines.append(f"| stem | 2 conv | {arch.stem_width} | {'yes' if arch.cbam_stem else 'no'} |")
    for i, (widths, cbam) in enumerate(zip(arch.stages, arch.cbam_stages), start=1):
        lines.append(f"| stage {i} | {len(widths)} | {', '.join(map(str, widths))} | {'yes' if cbam else 'no'} |")
    lines += [
        "",
        f"- A-Softmax margin **m = {arch.margin}**; **{record[Key.PARAMS]:,}** parameters; "
        f"**{record[Key.FLOPS] / 1e6:,.1f} MFLOPs** per crop",
    ]
    if Key.LATENCY in record:
        lines.append(
            f"- inference **{record[Key.LATENCY]:.2f} ms** at batch 1, {record[Key.LATENCY_32]:.1f} ms at batch 32 "
            f"on {record[Key.DEVICE_NAME]}"
        )
    metrics = {k.removeprefix("val_"): v for k, v in record.items() if k.startswith("val_")}
    if metrics:
        lines.append("- validation: " + ", ".join(f"{k} **{v:.3f}**" for k, v in metrics.items()))
    if Key.PROVENANCE in record:
        lines.append(f"- provenance: {one_line(record[Key.PROVENANCE])}")
    seconds, device = record.get(Key.TRAIN_SECONDS, 0.0), record.get(Key.DEVICE, "")
    if stopped is None:
        lines.append(f"- trained in {seconds:.1f} s at {record[Key.SAMPLES_PER_S]:,.0f} samples/s on `{device}`")
    else:
        lines.append(
            f"- **{stopped}**" if not seconds else f"- **stopped early** after {seconds:.1f} s on `{device}`: {stopped}"
        )
    return "\n".join(lines) + "\n"


def trial_figures(
    number: int, header: CheckpointHeader, result: FitResult, val: NoduleSet, stem: Path
) -> dict[Key, Path]:
    """The learning curve and the attention of 2 benign and 2 malignant validation nodules."""
    phantom = PHANTOM_TAG if val.source == "phantom" else ""
    curve = learning_curve(result.curve, f"{stem}-learning-curve.png", f"trial {number}{phantom}")
    network = build_model(header, result.state_dict)
    rows = example_rows(
        Member(network, header.norm),
        val.crops,
        val.labels,
        [m["nodule"] for m in val.meta],
        header.input_size,
    )
    note = "" if network.cbam_modules() else "this network has no CBAM: inputs only"
    title = f"trial {number}: deepest CBAM's spatial attention, low (blue) to high (red){phantom}"
    attention = attention_grid(rows, f"{stem}-attention.png", title, note)
    return {Key.CURVE_PNG: curve, Key.ATTENTION_PNG: attention}
