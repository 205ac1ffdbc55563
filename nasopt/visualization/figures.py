"""PNG figures (matplotlib, no display): learning curves, attention over the three mid-planes,
and the study figures of ``nasopt report``. Every figure has a fixed pixel size and is written
atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from nasopt.atomic import atomic_write

DPI = 80
#: Lung window (level -600 HU, width 1500 HU).
LUNG_WINDOW = (-1350.0, 150.0)
PLANES = ("axial", "coronal", "sagittal")


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG of exactly figsize x DPI pixels, atomically, and close it."""
    with atomic_write(path) as tmp:
        # zlib level 1: 0.1 s less per attention figure than the default 6, for ~15% more bytes
        fig.savefig(tmp, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    plt.close(fig)
    return Path(path)


def mid_planes(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal planes through the centre of a (z, y, x) cube, superior up."""
    c = volume.shape[0] // 2
    return [volume[c], volume[:, c][::-1], volume[:, :, c][::-1]]


def learning_curve(curve: Sequence[dict[str, float]], path: str | Path, title: str) -> Path:
    """Training loss, validation AUC and accuracy, and the learning rate, by epoch."""
    epochs = [r["epoch"] for r in curve]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    axes[0].plot(epochs, [r["train_loss"] for r in curve], marker=".", color="tab:red")
    axes[0].set(title="training loss", xlabel="epoch")
    for key, color in (("val_auc", "tab:blue"), ("val_accuracy", "tab:green")):
        if all(key in r for r in curve):
            axes[1].plot(epochs, [r[key] for r in curve], marker=".", color=color, label=key.removeprefix("val_"))
    axes[1].set(title="validation", xlabel="epoch", ylim=(0, 1.02))
    axes[1].legend(loc="lower right", fontsize=8)
    axes[2].plot(epochs, [r["lr"] for r in curve], marker=".", color="tab:gray")
    axes[2].set(title="learning rate", xlabel="epoch")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.17, top=0.8, wspace=0.3)  # fixed: a layout engine costs 0.1 s
    return save(fig, path)


def attention_grid(
    rows: Sequence[tuple[np.ndarray, np.ndarray | None, str]], path: str | Path, title: str, note: str = ""
) -> Path:
    """One row per (HU cube, attention cube or None, caption): the three mid-planes in a lung
    window with the attention overlaid, from its lowest (blue) to its highest value (red)."""
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.2 * len(rows) + 0.6), squeeze=False)
    for i, ((volume, attention, caption), row) in enumerate(zip(rows, axes)):
        overlays = mid_planes(attention) if attention is not None else [None] * 3
        # Each map spans its own range: after short trainings attention sits near 0.5 everywhere,
        # and a fixed 0..1 scale would show one flat colour.
        span = (float(attention.min()), float(attention.max()) + 1e-6) if attention is not None else None
        for ax, plane, overlay, name in zip(row, mid_planes(volume), overlays, PLANES):
            ax.imshow(plane, cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], interpolation="nearest")
            if overlay is not None:
                ax.imshow(overlay, cmap="jet", vmin=span[0], vmax=span[1], alpha=0.35, interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
        row[0].set_ylabel(caption, fontsize=8)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=9)
    top = 1 - 0.6 / fig.get_figheight()
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.02, top=top, wspace=0.05, hspace=0.25)
    return save(fig, path)


def pareto(
    points: Sequence[tuple[int, float, int]],
    front: set[int],
    path: str | Path,
    metric: str,
    title: str,
    references: Sequence[tuple[str, int, float]] = (),
    reference_note: str = "",
) -> Path:
    """All trials (params, value, number) in grey, the front highlighted as a step line, parameters
    on a log axis; ``references`` (label, params, value) as labelled marks."""
    fig, ax = plt.subplots(figsize=(8, 5))
    rest = [p for p in points if p[2] not in front]
    best = sorted((p for p in points if p[2] in front), key=lambda p: p[0])
    ax.scatter([p[0] for p in rest], [p[1] for p in rest], color="0.7", s=18, label="complete trials")
    if best:
        ax.step([p[0] for p in best], [p[1] for p in best], where="post", color="tab:red", lw=1.2)
        ax.scatter([p[0] for p in best], [p[1] for p in best], color="tab:red", s=30, zorder=3, label="Pareto front")
        for params, value, number in best:
            ax.annotate(str(number), (params, value), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for label, params, value in references:
        ax.scatter([params], [value], marker="*", s=90, color="tab:blue", zorder=3)
        right = params > 1e8  # labels of the largest networks go left, inside the axes
        ax.annotate(
            label,
            (params, value),
            textcoords="offset points",
            xytext=(-5 if right else 5, 4),
            fontsize=7,
            color="tab:blue",
            ha="right" if right else "left",
        )
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale)", ylabel=metric, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if reference_note:
        fig.text(0.01, 0.01, reference_note, fontsize=7, color="tab:blue")
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.15, top=0.92)
    return save(fig, path)


def hypervolume(
    by_trial: Sequence[float], by_seconds: Sequence[tuple[float, float]], path: str | Path, title: str, note: str
) -> Path:
    """The front's hypervolume after each complete trial, and against cumulative training time."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(range(1, len(by_trial) + 1), by_trial, drawstyle="steps-post", color="tab:purple")
    axes[0].set(xlabel="complete trials", ylabel="hypervolume")
    axes[1].plot(
        [s / 60 for s, _ in by_seconds], [h for _, h in by_seconds], drawstyle="steps-post", color="tab:purple"
    )
    axes[1].set(xlabel="training time, all workers (minutes)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.text(0.01, 0.01, note, fontsize=7)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.22, top=0.88, wspace=0.2)
    return save(fig, path)


def curves(runs: Sequence[tuple[str, Sequence[dict[str, float]]]], path: str | Path, title: str) -> Path:
    """Training loss and validation AUC by epoch, one line per (label, curve)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, curve in runs:
        epochs = [r["epoch"] for r in curve]
        axes[0].plot(epochs, [r["train_loss"] for r in curve], marker=".", label=label)
        axes[1].plot(epochs, [r.get("val_auc", np.nan) for r in curve], marker=".", label=label)
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title="validation AUC", xlabel="epoch", ylim=(0, 1.02))
    axes[1].legend(loc="lower right", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.85, wspace=0.2)
    return save(fig, path)


def roc(
    labels: np.ndarray,
    curves: Sequence[tuple[str, np.ndarray, float | None]],
    path: str | Path,
    title: str,
) -> Path:
    """ROC curves of (name, probabilities, threshold) on one set; each threshold given is marked
    as the point it decides at."""
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    y = np.asarray(labels).astype(bool)
    for i, (name, prob, threshold) in enumerate(curves):
        fpr, tpr, _ = roc_curve(y, prob)
        color = f"C{i}"
        ax.plot(fpr, tpr, color=color, label=name, linewidth=1.5 if i == 0 else 1.0)
        if threshold is not None:
            pred = np.asarray(prob) >= threshold
            sens, fp = (pred & y).sum() / y.sum(), (pred & ~y).sum() / (~y).sum()
            ax.plot([fp], [sens], "o", color=color, markersize=7, label=f"{name} at threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="gray", linewidth=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=7)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.11, top=0.9)
    return save(fig, path)


def reliability(curves: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    """Reliability diagram of (name, mean probability, fraction malignant, nodules) per filled
    bin, with the diagonal of perfect calibration. A marker's area grows with its bin's share of
    the nodules: on a small test fold most bins hold a few."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for i, (name, means, rates, counts) in enumerate(curves):
        ax.plot(means, rates, "-", color=f"C{i}", label=name, linewidth=0.8, alpha=0.7)
        ax.scatter(means, rates, s=6 + 120 * np.asarray(counts) / np.sum(counts), color=f"C{i}", alpha=0.8)
    ax.plot([0, 1], [0, 1], ":", color="gray", linewidth=0.8)
    ax.set(xlabel="mean predicted P(malignant)", ylabel="fraction malignant", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left", fontsize=7)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.11, top=0.9)
    return save(fig, path)
