"""StudyConfig: what a ``studies/*.toml`` file holds, validated with one-line errors.

Every section is a pydantic model that forbids unknown keys, so a typo is an error naming
the file and the key instead of a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nasopt.errors import ConfigError

SAMPLERS = ("nsga2", "nsga3", "tpe", "random")
OBJECTIVES = ("val_accuracy", "val_auc", "params", "flops")
WIDTH_CHOICES = (4, 8, 16, 32, 64, 128)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudySection(_Section):
    sampler: Literal["nsga2", "nsga3", "tpe", "random"] = "nsga2"
    seed: int = 0
    objectives: list[Literal["val_accuracy", "val_auc", "params", "flops"]] = ["val_accuracy", "params"]
    population_size: int = Field(20, ge=2)

    @field_validator("objectives")
    @classmethod
    def _two_or_three(cls, v: list[str]) -> list[str]:
        if not 1 <= len(v) <= 3 or len(set(v)) != len(v):
            raise ValueError("give 1 to 3 distinct objectives")
        return v


class DataSection(_Section):
    source: Literal["phantom", "lidc", "luna16", "nodulemnist3d"] = "phantom"
    cache_dir: str = "storage/cache"
    seed: int = 0
    max_scans: int | None = Field(None, ge=1)
    min_readers: int = Field(3, ge=1, le=4)
    ambiguous: Literal["exclude", "benign", "malignant"] = "exclude"
    crop_size: int = Field(48, ge=32)
    # Where real data lives; only `nasopt data prepare` reads them (training reads the cache).
    dicom_root: str | None = None
    luna_root: str | None = None
    npz: str | None = None


class SplitSection(_Section):
    n_folds: int = Field(10, ge=3)
    test_fold: int = Field(0, ge=0)
    val_fold: int = Field(1, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _folds_in_range(self) -> SplitSection:
        for key in ("test_fold", "val_fold"):
            if getattr(self, key) >= self.n_folds:
                raise ValueError(f"{key} must be below n_folds ({self.n_folds})")
        if self.test_fold == self.val_fold:
            raise ValueError("val_fold must differ from test_fold: the test fold never enters the search")
        return self


class SpaceSection(_Section):
    stages: int = Field(3, ge=1, le=5)
    blocks_per_stage: tuple[int, int] = (1, 4)
    total_depth: tuple[int, int] = (3, 9)
    widths: list[int] = list(WIDTH_CHOICES)
    stem_width: int = Field(4, ge=1)
    cbam: list[bool] = [True, False]
    margins: list[int] = [1, 2, 3, 4]
    lr: tuple[float, float] = (1e-4, 1e-2)
    batch_sizes: list[int] = [8, 16, 32]

    @model_validator(mode="after")
    def _ranges(self) -> SpaceSection:
        lo, hi = self.blocks_per_stage
        if not 1 <= lo <= hi:
            raise ValueError("blocks_per_stage must be [low, high] with 1 <= low <= high")
        dlo, dhi = self.total_depth
        if not (dlo <= dhi and dlo <= self.stages * hi and dhi >= self.stages * lo):
            raise ValueError(
                f"total_depth {list(self.total_depth)} cannot be met by {self.stages} stages of "
                f"{lo}..{hi} blocks"
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
    epochs: int = Field(20, ge=1)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    lr_decay_start: float = Field(0.5, ge=0, le=1)
    input_size: int = Field(32, ge=8)
    max_shift: int = Field(4, ge=0)
    flip: bool = True
    zero_out: int = Field(4, ge=0)
    zero_out_p: float = Field(0.5, ge=0, le=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    margin_lambda: tuple[float, float, float] = (1000.0, 0.12, 5.0)


class StudyConfig(_Section):
    """A whole study file."""

    study: StudySection = StudySection()
    data: DataSection = DataSection()
    split: SplitSection = SplitSection()
    space: SpaceSection = SpaceSection()
    train: TrainSection = TrainSection()

    @model_validator(mode="after")
    def _crop_fits(self) -> StudyConfig:
        need = self.train.input_size + 2 * self.train.max_shift
        if need > self.data.crop_size:
            raise ValueError(
                f"train.input_size + 2*train.max_shift = {need} exceeds data.crop_size "
                f"{self.data.crop_size}"
            )
        return self

    def fingerprint(self) -> str:
        """Stable hash of everything that changes what a trial means."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


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
