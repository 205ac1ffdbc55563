"""``nasopt crossval``: the paper's k-fold protocol for a fixed architecture or ensemble.

For each chosen outer fold k the architecture (or every member of an ensemble) is trained from
scratch on all the other outer folds and tested on fold k. Per-fold rows and a pooled row (every
fold's test predictions together) carry point metrics and 95% bootstrap intervals. The size
baseline and the ratings reference (see :mod:`nasopt.evaluation.evaluate`) are fitted on the same training
folds as the network each time; the pooled rows compare the network with them over the pooled
out-of-fold predictions, with paired intervals and size-matched AUC.

The architecture was chosen by a search that trained and validated on every fold but the study's
test fold, so only that fold's numbers are held out; the others (and the pooled row) are
optimistic. Every result says so in a note, worked out from the patients the search saw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from nasopt.artifacts.checkpoint import CheckpointHeader, build_model
from nasopt.artifacts.record import TrialRecord, number_ranges, trained, trained_trial
from nasopt.config.schema import SpaceSection, StudyConfig, TrainSection
from nasopt.data.noduleset import NoduleSet
from nasopt.data.prepare import load_data
from nasopt.data.sources import PHANTOM_CAVEAT
from nasopt.data.splits import check_named_splits, outer_folds, study_sets
from nasopt.ensemble.module import DEFAULT_THRESHOLD
from nasopt.errors import ConfigError, DataError, NasoptError
from nasopt.evaluation.evaluate import Comparison, Scored, against, diameters, fit_baselines, score
from nasopt.evaluation.metrics import N_BOOT, SIZE_MATCH_MM
from nasopt.inference.core import Member, predict_proba
from nasopt.model import Architecture, build_network, count_params

#: Epochs per fold when neither --epochs nor a reachable study says otherwise (TrainSection's default).
DEFAULT_EPOCHS = TrainSection().epochs


@dataclass(frozen=True)
class Planned:
    """One network to train on every fold: its architecture, ensemble weight and training settings."""

    arch: Architecture
    weight: float
    lr: float
    batch_size: int
    trial: int | None  # the study trial it comes from (seeds and row names), if known
    params: int

    @property
    def name(self) -> str:
        return f"trial {self.trial}" if self.trial is not None else "member"


@dataclass
class Plan:
    """Everything a cross-validation needs before any data is loaded or network trained."""

    label: str  # what is cross-validated, for titles: "study 'demo' trial 3"
    cfg: StudyConfig
    members: list[Planned]
    search_patients: set[str] | None  # patients the search trained or validated on (None: from cfg)
    data_fingerprint: str | None = None  # the data the search ran on, where recorded
    notes: list[str] = field(default_factory=list)


@dataclass
class FoldResult:
    """One outer fold's test predictions and scores."""

    fold: int
    n_train: int
    held_out: bool  # no patient of this fold was seen by the search
    nodules: list[str]
    labels: np.ndarray
    prob: np.ndarray
    row: Scored
    seconds: float
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # each baseline's test probabilities

    def to_json(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "held_out": self.held_out,
            "train_nodules": self.n_train,
            "test_nodules": len(self.labels),
            "test_malignant": int(self.labels.sum()),
            "seconds": round(self.seconds, 2),
            "result": self.row.to_json(),
            "predictions": {
                "nodule": self.nodules,
                "label": self.labels.astype(int).tolist(),
                "prob_malignant": self.prob.astype(float).tolist(),
                **{name: p.astype(float).tolist() for name, p in self.baselines.items()},
            },
        }


@dataclass
class CrossvalResult:
    label: str
    epochs: int
    members: list[Planned]
    folds: list[FoldResult]
    pooled: Scored
    notes: list[str]
    baseline_rows: list[Scored] = field(default_factory=list)  # pooled, each fitted fold by fold
    comparisons: list[Comparison] = field(default_factory=list)  # pooled, paired
    size_match_mm: float = SIZE_MATCH_MM

    @property
    def rows(self) -> list[Scored]:
        """Per-fold rows, the pooled row, then the pooled baselines: what the table shows."""
        return [f.row for f in self.folds] + [self.pooled] + self.baseline_rows

    def to_json(self) -> dict[str, Any]:
        return {
            "cross_validated": self.label,
            "epochs": self.epochs,
            "bootstrap_resamples": N_BOOT,
            "size_match_mm": self.size_match_mm,
            "members": [
                {
                    "trial": m.trial,
                    "weight": m.weight,
                    "lr": m.lr,
                    "batch_size": m.batch_size,
                    "params": m.params,
                    "arch": m.arch.to_dict(),
                }
                for m in self.members
            ],
            "notes": self.notes,
            "folds": [f.to_json() for f in self.folds],
            "pooled": {
                "test_nodules": sum(len(f.labels) for f in self.folds),
                "test_malignant": sum(int(f.labels.sum()) for f in self.folds),
                "result": self.pooled.to_json(),
                "baselines": [r.to_json() for r in self.baseline_rows],
                "comparisons": [c.to_json() for c in self.comparisons],
            },
        }


def parse_folds(text: str) -> list[int] | None:
    """``all`` -> None (every fold of the data); else a comma list of fold numbers and ``a-b`` ranges."""
    text = text.strip()
    if text.lower() == "all":
        return None
    folds: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            span = range(int(lo), int(hi) + 1) if sep else [int(lo)]
            if not span:
                raise ValueError(part)
            folds.extend(k for k in span if k not in folds)
    except ValueError:
        raise ConfigError(f"--folds {text!r}: expected all, or fold numbers such as 0,2 or 0-4") from None
    return folds


def _space_defaults(space: SpaceSection) -> tuple[float, int]:
    """Training settings for a member without a trial to read them from: the geometric middle of
    the [space] learning-rate range and the middle batch size."""
    sizes = sorted(space.batch_sizes)
    return float(math.sqrt(space.lr[0] * space.lr[1])), sizes[len(sizes) // 2]


def _planned(r: TrialRecord, weight: float, space: SpaceSection) -> Planned:
    lr, batch_size = _space_defaults(space)
    return Planned(
        r.arch, weight, float(r.hparams.get("lr", lr)), int(r.hparams.get("batch_size", batch_size)), r.number, r.params
    )


#: Opens a study by name: its trials and its configuration (the caller's storage; crossval
#: does not open storages itself).
OpenStudy = Callable[[str], tuple[optuna.Study, StudyConfig]]


def plan_study(name: str, open_study: OpenStudy, trial: int | None = None) -> Plan:
    """One trial of a study: ``trial``, else the Pareto-front trial with the best validation AUC
    (ties: fewer parameters)."""
    study, cfg = open_study(name)
    if trial is None:
        front = [TrialRecord.from_trial(t) for t in study.best_trials]
        if not front:
            raise DataError(f"study {name!r} has no complete trial; run `nasopt search` first")

        def rank(r: TrialRecord) -> tuple[float, int, int]:
            auc = r.metrics.get("auc", float("nan"))
            return (-auc if math.isfinite(auc) else math.inf, r.params, r.number)

        record = min(front, key=rank)
        auc = record.metrics.get("auc", float("nan"))
        how = f"trial {record.number}, the Pareto-front trial with the best validation AUC ({auc:.3f})"
    else:
        record = TrialRecord.from_trial(trained_trial(study, trial))
        how = f"trial {trial} as asked"
    member = _planned(record, 1.0, cfg.space)
    note = f"{how}: {record.arch.summary()}, lr {member.lr:.2g}, batch size {member.batch_size}"
    return Plan(f"study {name!r} trial {record.number}", cfg, [member], None, notes=[note])


def plan_ensemble(path: str | Path, open_study: OpenStudy) -> Plan:
    """The members of an exported ensemble, with their trials' training settings when the study
    that made it can be opened, else the [space] defaults."""
    from nasopt.ensemble.module import load_ensemble  # it builds every member; only this path needs it

    header = load_ensemble(path).header
    study_cfg, trials, why = _find_study(header.study, open_study)
    # [train] from the study; without it the defaults, at the members' own input size.
    train = study_cfg.train.model_dump() if study_cfg else {"input_size": header.members[0].model.input_size}
    study = study_cfg.study.model_dump() if study_cfg else {}
    try:
        cfg = StudyConfig.model_validate({"study": study, "data": header.data, "split": header.split, "train": train})
    except ValueError as exc:
        raise DataError(
            f"{path}: its recorded data or split settings are invalid ({str(exc).splitlines()[-1].strip()})"
        ) from None
    space = study_cfg.space if study_cfg else SpaceSection()
    lr, batch_size = _space_defaults(space)
    members, defaulted = [], []
    for i, entry in enumerate(header.members):
        arch = Architecture.from_dict(entry.model.arch)
        record = trials.get(entry.model.trial) if entry.model.trial is not None else None
        if record is not None and record.arch == arch:
            members.append(_planned(record, entry.weight, space))
        else:
            trial = entry.model.trial
            members.append(Planned(arch, entry.weight, lr, batch_size, trial, count_params(build_network(arch))))
            defaulted.append(f"trial {trial}" if trial is not None else f"member {i}")
    middle = f"learning rate {lr:.2g} and batch size {batch_size}, the middle of the ranges of"
    if study_cfg is None:
        note = (
            f"{why}: every member trains with {middle} nasopt's default [space], and with nasopt's default "
            f"[train] settings ({DEFAULT_EPOCHS} epochs unless --epochs)"
        )
    elif defaulted:
        note = (
            f"members ({', '.join(defaulted)}) are not complete trials of study {header.study!r} with the "
            f"same architecture: they train with {middle} its [space]; the others with their trials' settings"
        )
    else:
        note = f"each member trains with the learning rate and batch size of its trial in study {header.study!r}"
    return Plan(f"ensemble {path}", cfg, members, set(header.search_patients), header.data_fingerprint, [note])


def _find_study(name: str, open_study: OpenStudy) -> tuple[StudyConfig | None, dict[int, TrialRecord], str]:
    """(config, complete trials' records, "") of study ``name``, or (None, {}, why not)."""
    try:
        study, cfg = open_study(name)
    except NasoptError as exc:
        return None, {}, f"study {name!r} is not reachable ({exc})"
    records = {}
    for t in trained(study):
        try:
            records[t.number] = TrialRecord.from_trial(t)
        except DataError:
            continue  # not a usable record: that member falls back to the defaults
    return cfg, records, ""


def crossval(
    plan: Plan,
    folds: list[int] | None = None,
    epochs: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
    match_mm: float | None = None,
) -> CrossvalResult:
    """Train ``plan``'s members on all outer folds but k and test on k, for each chosen fold k;
    ``match_mm`` (default :data:`SIZE_MATCH_MM`) bounds the size-matched pairs."""
    match_mm = SIZE_MATCH_MM if match_mm is None else match_mm
    cfg = plan.cfg
    train_cfg = cfg.train if epochs is None else cfg.train.model_copy(update={"epochs": epochs})
    device = torch.device(device)
    ns = load_data(cfg.data, progress=False)
    check_named_splits(ns, cfg.split.test_fold, cfg.split.val_fold)
    fold_of = outer_folds(ns, cfg.split.n_folds, cfg.split.seed)
    present = sorted(set(fold_of.tolist()))
    chosen = present if folds is None else sorted(folds)
    missing = [k for k in chosen if k not in present]
    if missing:
        raise ConfigError(f"--folds: fold {missing[0]} is not one of the data's folds {number_ranges(present)}")

    if plan.search_patients is None:
        sets = study_sets(cfg, ns)
        seen = set(sets.train.patients.tolist()) | set(sets.val.patients.tolist())
    else:
        seen = plan.search_patients
    notes = list(plan.notes)
    results, diam = [], []
    for k in chosen:
        test_idx = np.flatnonzero(fold_of == k)
        train, test = ns.subset(np.flatnonzero(fold_of != k)), ns.subset(test_idx)
        held_out = not (set(test.patients.tolist()) & seen)
        if progress:
            progress(
                f"fold {k}: training {len(plan.members)} network(s) on {len(train)} nodules, "
                f"testing on {len(test)}{' (held out)' if held_out else ''}"
            )
        t0 = time.perf_counter()
        prob = _train_and_predict(plan, k, train, test, train_cfg, device)
        seconds = time.perf_counter() - t0
        diam.append(diameters(test))
        row = score(
            f"fold {k}",
            test.labels,
            prob,
            cfg.study.seed + k,
            diameters_mm=diam[-1],
            match_mm=match_mm,
            params=_params(plan),
        )
        fitted, baseline_notes = fit_baselines(train.meta, train.labels, test.meta, None)
        names = [m["nodule"] for m in test.meta]
        kept = {name: p for name, (p, _) in fitted.items()}
        results.append(FoldResult(k, len(train), held_out, names, test.labels, prob, row, seconds, kept))
        if progress:
            m = row.metrics
            progress(f"fold {k}: accuracy {m['accuracy']:.3f}, AUC {m['auc']:.3f} ({seconds:.1f} s)")

    labels = np.concatenate([f.labels for f in results])
    prob = np.concatenate([f.prob for f in results])
    pooled_diam = None if any(d is None for d in diam) else np.concatenate(diam)
    seed = cfg.study.seed
    pooled = score("pooled", labels, prob, seed, diameters_mm=pooled_diam, match_mm=match_mm, params=_params(plan))
    others = {
        name: (np.concatenate([f.baselines[name] for f in results]), DEFAULT_THRESHOLD) for name in results[0].baselines
    }
    baseline_rows, comparisons = against("pooled", labels, prob, others, seed, pooled_diam, match_mm)
    notes.extend(_protocol_notes(cfg, ns, plan, results, present))
    notes.extend(baseline_notes)
    return CrossvalResult(
        plan.label, train_cfg.epochs, plan.members, results, pooled, notes, baseline_rows, comparisons, match_mm
    )


def _train_and_predict(
    plan: Plan, fold: int, train: NoduleSet, test: NoduleSet, train_cfg: TrainSection, device: torch.device
) -> np.ndarray:
    """Every member trained on ``train``; their weighted mean probability on ``test``."""
    from nasopt.training.fit import TrainingDiverged, fit  # the trainer pulls in augmentation and the loss

    crops = torch.from_numpy(np.ascontiguousarray(test.crops))
    total = sum(m.weight for m in plan.members)
    prob = np.zeros(len(test), dtype=np.float64)
    for i, m in enumerate(plan.members):
        # Seeds follow the study seed, trial and fold, so the same command gives the same numbers.
        seed = plan.cfg.study.seed + (m.trial if m.trial is not None else i) + fold
        try:
            r = fit(m.arch, train, None, train_cfg, lr=m.lr, batch_size=m.batch_size, seed=seed, device=device)
        except TrainingDiverged as exc:
            raise TrainingDiverged(f"fold {fold}, {m.name}: {exc} (--epochs {train_cfg.epochs})") from None
        header = CheckpointHeader(arch=m.arch.to_dict(), norm=r.norm, input_size=train_cfg.input_size, metrics={})
        net = build_model(header, r.state_dict, where=f"fold {fold} {m.name}", device=device)
        p = predict_proba(Member(net, r.norm), crops, train_cfg.input_size).cpu().numpy().astype(np.float64)
        prob += m.weight / total * p
    return prob


def _params(plan: Plan) -> int:
    return sum(m.params for m in plan.members)


def _protocol_notes(
    cfg: StudyConfig, ns: NoduleSet, plan: Plan, results: list[FoldResult], present: list[int]
) -> list[str]:
    """What the numbers mean: which folds the search never saw, and what the data is."""
    held = [f.fold for f in results if f.held_out]
    seen = [f.fold for f in results if not f.held_out]
    notes = []
    if held and seen:
        notes.append(
            f"only {_folds(held)} (the study's test fold) {_was(held)} never seen by the search; {_folds(seen)} "
            f"{_was(seen)} used to choose the architecture, so {'its' if len(seen) == 1 else 'their'} numbers and "
            "the pooled row are optimistic"
        )
    elif held:
        notes.append(f"{_folds(held)} (the study's test fold) {_was(held)} never seen by the search: held-out numbers")
    else:
        notes.append(
            f"every fold here was used to choose the architecture, so all these numbers are optimistic; only the "
            f"study's test fold {cfg.split.test_fold} was never seen by the search (add it to --folds)"
        )
    if plan.data_fingerprint is not None and ns.fingerprint() != plan.data_fingerprint:
        notes.append(
            "the data differs from the data the search ran on; held-out folds were worked out from its patients"
        )
    if ns.params.get("splits"):
        notes.append(f"{ns.source} has fixed splits {ns.params['splits']}; rotating them is not its official protocol")
    if ns.source == "phantom":
        notes.append(PHANTOM_CAVEAT)
    if len(results) < len(present):
        notes.append(
            f"{len(results)} of the data's {len(present)} folds; the paper's protocol uses them all (--folds all)"
        )
    return notes


def _folds(numbers: list[int]) -> str:
    return f"fold {numbers[0]}" if len(numbers) == 1 else f"folds {number_ranges(numbers)}"


def _was(numbers: list[int]) -> str:
    return "was" if len(numbers) == 1 else "were"
