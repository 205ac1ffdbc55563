"""The Optuna objective: trial -> Architecture -> fit -> (objective values) + artifacts."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna_dashboard import save_note

from nasopt import figures
from nasopt.attention import example_rows
from nasopt.checkpoint import CheckpointHeader, build_model, save_model
from nasopt.config import StudyConfig
from nasopt.data.noduleset import NoduleSet
from nasopt.inference import Member
from nasopt.model import Architecture, count_flops
from nasopt.report import trial_note
from nasopt.space import suggest
from nasopt.train import FitResult, TrainingDiverged, fit
from nasopt.trial_record import Key, predictions_json, val_key


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
            trial.set_user_attr(Key.FAIL_REASON, str(exc))  # shown by the dashboard and `search`
            raise
        values = {val_key(k): v for k, v in result.metrics.items()}
        values[Key.PARAMS] = result.params
        values[Key.FLOPS] = count_flops(arch, self.cfg.train.input_size)
        for key, value in values.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(Key.CURVE, result.curve)
        trial.set_user_attr(Key.TRAIN_SECONDS, round(result.seconds, 2))
        trial.set_user_attr(Key.SAMPLES_PER_S, round(result.train_samples_per_s, 1))
        trial.set_user_attr(Key.NORM, list(result.norm))
        trial.set_user_attr(Key.DEVICE, str(self.device))
        note = trial_note(
            trial.number,
            arch,
            result.params,
            values[Key.FLOPS],
            result.metrics,
            result.seconds,
            result.train_samples_per_s,
            str(self.device),
        )
        save_note(trial, note)
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
        header = CheckpointHeader(
            arch=arch.to_dict(),
            norm=result.norm,
            input_size=self.cfg.train.input_size,
            metrics=result.metrics,
            study=trial.study.study_name,
            trial=trial.number,
        )
        with tempfile.TemporaryDirectory() as tmp:
            stem = Path(tmp) / f"trial-{trial.number}"
            files = {
                Key.WEIGHTS: save_model(f"{stem}.safetensors", result.state_dict, header),
                Key.VAL_PREDICTIONS: Path(f"{stem}-val-predictions.json"),
            }
            files[Key.VAL_PREDICTIONS].write_text(
                predictions_json([m["nodule"] for m in self.val.meta], self.val.labels, result.val_prob)
            )
            files.update(self._figures(trial.number, header, result, stem))
            for key, path in files.items():
                artifact_id = upload_artifact(artifact_store=self.artifacts, file_path=str(path), study_or_trial=trial)
                trial.set_user_attr(key, artifact_id)

    def _figures(self, number: int, header: CheckpointHeader, result: FitResult, stem: Path) -> dict[Key, Path]:
        """The learning curve and the attention of 2 benign and 2 malignant validation nodules."""
        phantom = " (LIDC phantom data)" if self.val.source == "phantom" else ""
        curve = figures.learning_curve(result.curve, f"{stem}-learning-curve.png", f"trial {number}{phantom}")
        network = build_model(header, result.state_dict)
        rows = example_rows(
            Member(network, header.norm),
            self.val.crops,
            self.val.labels,
            [m["nodule"] for m in self.val.meta],
            header.input_size,
        )
        note = "" if network.cbam_modules() else "this network has no CBAM: inputs only"
        title = f"trial {number}: deepest CBAM's spatial attention, low (blue) to high (red){phantom}"
        attention = figures.attention_grid(rows, f"{stem}-attention.png", title, note)
        return {Key.CURVE_PNG: curve, Key.ATTENTION_PNG: attention}
