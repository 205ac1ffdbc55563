"""The Optuna objective: trial -> Architecture -> fit -> (objective values) + artifacts."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from nasopt import __version__
from nasopt.checkpoint import save_weights
from nasopt.config import StudyConfig
from nasopt.data.noduleset import NoduleSet
from nasopt.model import build_network
from nasopt.space import Architecture, suggest
from nasopt.train import FitResult, TrainingDiverged, fit


def count_flops(arch: Architecture, input_size: int) -> int:
    """Forward FLOPs of one sample, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_network(arch).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(2, 1, input_size, input_size, input_size))
    return counter.get_total_flops() // 2


class Objective:
    """Callable for ``study.optimize``: trains one candidate per trial on the search split."""

    def __init__(
        self,
        cfg: StudyConfig,
        train: NoduleSet,
        val: NoduleSet,
        device: torch.device,
        artifacts: FileSystemArtifactStore | None = None,
        on_epoch: Callable[[optuna.Trial, dict[str, float]], None] | None = None,
    ) -> None:
        self.cfg, self.train, self.val, self.device = cfg, train, val, device
        self.artifacts = artifacts
        self.on_epoch = on_epoch

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        arch, hparams = suggest(trial, self.cfg.space)
        try:
            result = self._fit(trial, arch, hparams)
        except TrainingDiverged as exc:
            trial.set_user_attr("fail_reason", str(exc))  # shown by the dashboard and `search`
            raise
        values = {f"val_{k}": v for k, v in result.metrics.items()}
        values["params"] = result.params
        if "flops" in self.cfg.study.objectives:
            values["flops"] = count_flops(arch, self.cfg.train.input_size)
        for key, value in values.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("curve", result.curve)
        trial.set_user_attr("train_seconds", round(result.seconds, 2))
        trial.set_user_attr("train_samples_per_s", round(result.train_samples_per_s, 1))
        trial.set_user_attr("norm", list(result.norm))
        trial.set_user_attr("device", str(self.device))
        if self.artifacts is not None:
            self._upload(trial, arch, result)
        return tuple(float(values[o]) for o in self.cfg.study.objectives)

    def _fit(self, trial: optuna.Trial, arch: Architecture, hparams: dict) -> FitResult:
        return fit(
            arch,
            self.train,
            self.val,
            self.cfg.train,
            lr=hparams["lr"],
            batch_size=hparams["batch_size"],
            seed=self.cfg.study.seed + trial.number,
            device=self.device,
            on_epoch=None if self.on_epoch is None else (lambda rec: self.on_epoch(trial, rec)),
        )

    def _upload(self, trial: optuna.Trial, arch: Architecture, result: FitResult) -> None:
        header = {
            "arch": arch.to_dict(),
            "norm": list(result.norm),
            "input_size": self.cfg.train.input_size,
            "metrics": result.metrics,
            "study": trial.study.study_name,
            "trial": trial.number,
            "nasopt_version": __version__,
        }
        predictions = {
            "nodule": [m["nodule"] for m in self.val.meta],
            "label": self.val.labels.tolist(),
            "prob_malignant": np.round(result.val_prob, 6).tolist(),
        }
        with tempfile.TemporaryDirectory() as tmp:
            weights = save_weights(Path(tmp) / f"trial-{trial.number}.safetensors", result.state_dict, header)
            preds = Path(tmp) / f"trial-{trial.number}-val-predictions.json"
            preds.write_text(json.dumps(predictions))
            for name, path in (("weights", weights), ("val_predictions", preds)):
                artifact_id = upload_artifact(artifact_store=self.artifacts, file_path=str(path), study_or_trial=trial)
                trial.set_user_attr(f"artifact_{name}", artifact_id)
