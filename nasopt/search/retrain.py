"""``nasopt retrain``: rebuild one trial from its record and check it against what it stored.

The trial's architecture, lr, batch size, seed, training settings, data and split are read from
the study; the network is trained again exactly as the worker trained it, with the thread count
the trial recorded, and its validation predictions are compared with the trial's stored ones. On
CPU with the same code, libraries and data they are equal bit for bit. Where the provenance
differs, the differences are listed beside the largest difference in the predictions.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from nasopt.artifacts.checkpoint import CheckpointHeader, save_model
from nasopt.artifacts.record import Key, TrialRecord, read_predictions, trained_trial
from nasopt.artifacts.store import artifact_location, fetch_artifact, study_artifacts
from nasopt.config.schema import StudyConfig
from nasopt.data.prepare import load_data
from nasopt.data.splits import study_sets
from nasopt.search.provenance import differences, provenance
from nasopt.training.fit import fit


@dataclass(frozen=True)
class Retrained:
    trial: int
    max_difference: float  # largest |stored - retrained| validation probability
    nodules: int
    differences: list[str]  # what differs from the trial's provenance, one phrase each
    recorded: bool  # whether the trial carried a provenance record at all
    seconds: float
    device: str
    out: Path | None

    @property
    def reproduced(self) -> bool:
        return self.max_difference == 0.0


def retrain(
    study: optuna.Study, cfg: StudyConfig, number: int, url: str | None, device: torch.device, out: Path | None = None
) -> Retrained:
    """Train trial ``number`` of ``study`` again and compare its validation predictions with the stored ones."""
    trial = trained_trial(study, number)
    record = TrialRecord.from_trial(trial)
    recorded = trial.user_attrs.get(Key.PROVENANCE) or {}
    store, where = study_artifacts(study, url), artifact_location(study, url)
    with tempfile.TemporaryDirectory() as tmp:  # before any training: gone artifacts fail fast
        path = Path(tmp) / "val.json"
        names, _, stored = read_predictions(
            fetch_artifact(store, record.predictions_id, path, "validation predictions", number, where)
        )
    threads = recorded.get("deterministic", {}).get("threads")
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)  # the summation order of CPU kernels follows the thread count
    ns = load_data(cfg.data, progress=False)
    sets = study_sets(cfg, ns)
    now = provenance(cfg, ns, sets.train, sets.val, device) | {"seed": recorded.get("seed")}
    t0 = time.perf_counter()
    result = fit(
        record.arch,
        sets.train,
        sets.val,
        cfg.train,
        lr=record.hparams["lr"],
        batch_size=record.hparams["batch_size"],
        seed=recorded.get("seed", cfg.study.seed + number),
        device=device,
    )
    seconds = time.perf_counter() - t0
    mine = dict(zip([m["nodule"] for m in sets.val.meta], result.val_prob.astype(np.float32)))
    shared = [i for i, name in enumerate(names) if name in mine]
    diff = [abs(float(stored[i]) - float(mine[names[i]])) for i in shared]
    found = differences(recorded, now) if recorded else []
    if len(shared) != len(names) or len(mine) != len(names):
        found.append(f"validation nodules: recorded {len(names)}, now {len(mine)}, {len(shared)} in common")
    if out is not None:
        header = CheckpointHeader(
            arch=record.arch.to_dict(),
            norm=result.norm,
            input_size=cfg.train.input_size,
            metrics=result.metrics,
            study=study.study_name,
            trial=number,
        )
        save_model(out, result.state_dict, header)
    return Retrained(
        number, max(diff, default=float("nan")), len(shared), found, bool(recorded), seconds, now["device"], out
    )
