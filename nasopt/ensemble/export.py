"""``nasopt export``: a study's best trials -> one ensemble file (and optionally one ONNX graph).

Reads the trial record of every complete trial, fetches the validation predictions and weights
from the study's artifact store with Optuna's ``download_artifact``, chooses members (see
:mod:`nasopt.ensemble.selection`), fits temperature scaling and picks the decision threshold on the
ensemble's validation predictions (see :mod:`nasopt.ensemble.calibration`), optionally refits the members
on the whole search split, and writes the ensemble with the split it came from, so ``evaluate``
can find the held-out fold. Nothing is fitted on the test fold.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nasopt.artifacts.checkpoint import Calibration, CheckpointHeader, OperatingPoint, Selection, read_checkpoint
from nasopt.artifacts.record import TrialRecord, read_predictions, trained
from nasopt.artifacts.store import artifact_location, fetch_artifact, study_artifacts
from nasopt.config.schema import StudyConfig
from nasopt.data.noduleset import NoduleSet
from nasopt.data.prepare import load_data
from nasopt.data.splits import study_sets
from nasopt.ensemble import selection
from nasopt.ensemble.calibration import (
    CALIBRATIONS,
    apply_temperature,
    choose_threshold,
    fit_temperature,
    parse_operating_point,
)
from nasopt.ensemble.module import save_ensemble
from nasopt.errors import ConfigError, DataError
from nasopt.evaluation.metrics import binary_metrics
from nasopt.storages.study import load_study
from nasopt.storages.url import open_storage


@dataclass(frozen=True)
class ExportResult:
    path: Path
    members: list[tuple[TrialRecord, int]]  # (trial, selection count)
    selection: Selection
    refit: bool
    calibration: Calibration | None
    operating_point: OperatingPoint
    notes: list[str]


def export_study(
    study_name: str,
    storage_url: str | None,
    out: str | Path,
    rule: str = "greedy",
    metric: str = "auc",
    k: int = 5,
    max_params: int | None = None,
    refit: bool = False,
    device: str | torch.device = "cpu",
    calibration: str = "temperature",
    operating_point: str = "youden",
) -> ExportResult:
    """Choose members from ``study_name``'s complete trials, calibrate them and choose their
    threshold on validation, and write them as one ensemble file."""
    if rule not in ("greedy", "pareto", "topk"):
        raise ConfigError(f"--select {rule!r}: choose greedy, pareto or topk")
    if metric not in selection.SELECTION_METRICS:
        raise ConfigError(f"--metric {metric!r}: choose {', '.join(selection.SELECTION_METRICS)}")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"--calibration {calibration!r}: choose {' or '.join(CALIBRATIONS)}")
    point_rule, target = parse_operating_point(operating_point)  # before any work: bad input fails fast
    storage = open_storage(storage_url, heartbeat=None, create=False)
    study, cfg = load_study(study_name, storage)
    trials = trained(study)  # feasible: a network over a [constraints] budget is never trained
    if not trials:
        raise DataError(f"study {study_name!r} has no trained trial to export; run `nasopt search` first")
    records = {t.number: TrialRecord.from_trial(t) for t in trials}
    fitting = [r for r in records.values() if max_params is None or r.params <= max_params]
    if not fitting:
        smallest = min(r.params for r in records.values())
        raise ConfigError(f"--max-params {max_params:,}: no trial fits (the smallest has {smallest:,} parameters)")

    store = study_artifacts(study, storage_url)
    where = artifact_location(study, storage_url)
    with tempfile.TemporaryDirectory() as tmp:
        cands, labels, nodules = [], None, None
        for r in fitting:
            path = fetch_artifact(
                store, r.predictions_id, Path(tmp) / f"{r.number}.json", "validation predictions", r.number, where
            )
            names, y, prob = read_predictions(path)
            if nodules is not None and names != nodules:
                raise DataError(f"trial {r.number}: validated on other nodules than the other trials")
            nodules, labels = names, y
            cands.append(selection.Candidate(r.number, r.params, prob))
        calibrate = calibration == "temperature"  # losses select on what the file will output
        if rule == "greedy":
            weights, _ = selection.greedy(cands, labels, metric, max_params, calibrate=calibrate)
        elif rule == "pareto":
            front = {t.number for t in study.best_trials}
            on_front = [c for c in cands if c.number in front]
            weights = selection.within_budget(selection.ranked(on_front, labels, metric, calibrate), max_params)
        else:
            weights = selection.within_budget(selection.ranked(cands, labels, metric, calibrate), max_params, k)
        if not weights:  # only pareto can get here: every front trial is over the budget
            raise ConfigError(
                f"--max-params {max_params:,}: no Pareto-front trial fits; raise it or use --select greedy"
            )
        val_prob = selection.weighted_prob(cands, weights)
        val_score = selection.value(labels, val_prob, metric, calibrate)
        cal, point, notes = _decide(val_prob, labels, calibration, point_rule, target, refit)

        ns = load_data(cfg.data, progress=False)
        sets = study_sets(cfg, ns)
        members = []
        for number, count in weights.items():
            r = records[number]
            path = fetch_artifact(store, r.weights_id, Path(tmp) / f"{number}.safetensors", "weights", number, where)
            tensors, header = read_checkpoint(path, "model", CheckpointHeader)
            if refit:
                header, tensors = _refit(study_name, cfg, r, sets.train, sets.val, device)
            members.append((header, tensors, float(count)))
        chosen = Selection(
            rule=rule, metric=metric, val_score=val_score, k=k if rule == "topk" else None, max_params=max_params
        )
        search_patients = sorted(set(sets.train.patients.tolist()) | set(sets.val.patients.tolist()))
        path = save_ensemble(
            out,
            members,
            selection=chosen,
            study=study_name,
            data=cfg.data.model_dump(mode="json"),
            split=cfg.split.model_dump(mode="json"),
            data_fingerprint=ns.fingerprint(),
            search_patients=search_patients,
            refit=refit,
            calibration=cal,
            operating_point=point,
        )
    return ExportResult(Path(path), [(records[n], c) for n, c in weights.items()], chosen, refit, cal, point, notes)


def _decide(
    prob: np.ndarray,
    labels: np.ndarray,
    calibration: str,
    rule: str,
    target: float | None,
    refit: bool,
) -> tuple[Calibration | None, OperatingPoint, list[str]]:
    """Temperature and threshold of the chosen ensemble, from its validation probability ``prob``,
    the weighted mean of its members' stored validation predictions (after a refit those are the
    only honest ones: the refitted members trained on the validation nodules), and notes."""
    cal, notes = None, []
    if calibration == "temperature":
        fitted_on = "validation predictions" + (" of the members before refit" if refit else "")
        temperature = fit_temperature(labels, prob)
        if temperature is None:
            notes.append(
                "calibration left off: validation separates the classes perfectly, or shows no signal to scale "
                "(the best temperature runs to the optimiser's bound)"
            )
        else:
            cal = Calibration(
                method="temperature", temperature=temperature, fitted_on=fitted_on, val_nodules=len(labels)
            )
            prob = apply_temperature(prob, temperature)
    threshold = choose_threshold(labels, prob, rule, target)
    at = binary_metrics(labels, prob, threshold)
    name = rule if target is None else f"{rule}={target:g}"
    point = OperatingPoint(
        rule=name, threshold=threshold, val_sensitivity=at["sensitivity"], val_specificity=at["specificity"]
    )
    return cal, point, notes


def _refit(
    study_name: str, cfg: StudyConfig, r: TrialRecord, train: NoduleSet, val: NoduleSet, device: str | torch.device
) -> tuple[CheckpointHeader, dict]:
    """Train the trial's architecture again, with its recorded settings, on train + validation."""
    from nasopt.training.fit import fit  # only a refit needs the trainer

    both = NoduleSet(
        crops=np.concatenate([train.crops, val.crops]),
        labels=np.concatenate([train.labels, val.labels]),
        meta=train.meta + val.meta,
        source=train.source,
    )
    result = fit(
        r.arch,
        both,
        None,
        cfg.train,
        lr=r.hparams["lr"],
        batch_size=r.hparams["batch_size"],
        seed=cfg.study.seed + r.number,
        device=device,
    )
    header = CheckpointHeader(
        arch=r.arch.to_dict(),
        norm=result.norm,
        input_size=cfg.train.input_size,
        metrics={},
        study=study_name,
        trial=r.number,
    )
    return header, result.state_dict
