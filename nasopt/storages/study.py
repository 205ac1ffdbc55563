"""Creating and loading nasopt's studies: the configuration each is made with, and its checks."""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage

from nasopt.artifacts.store import ARTIFACTS_ATTR, absolute_location, default_artifacts
from nasopt.config.schema import OBJECTIVES, StudyConfig, config_from_json
from nasopt.errors import ConfigError
from nasopt.storages.url import quiet_experimental, storage_url

CONFIG_ATTR = "nasopt_config"
FINGERPRINT_ATTR = "nasopt_config_fingerprint"


def create_or_load(
    name: str,
    cfg: StudyConfig,
    storage: BaseStorage,
    sampler: optuna.samplers.BaseSampler,
    url: str | None = None,
    artifacts: str | None = None,
) -> optuna.Study:
    """Create the study, or load it when it exists; the config must match the one it was made with.

    A new study records where its artifacts go (``artifacts``, else :func:`default_artifacts`),
    so every reader on any host finds them without a flag.
    """
    directions = [OBJECTIVES[o] for o in cfg.study.objectives]
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, directions=directions, load_if_exists=True
        )
    except ValueError as exc:
        raise ConfigError(f"study {name!r}: {exc}") from None
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is None:
        with quiet_experimental():
            study.set_metric_names(list(cfg.study.objectives))
        study.set_user_attr(CONFIG_ATTR, cfg.model_dump_json())
        study.set_user_attr(FINGERPRINT_ATTR, cfg.fingerprint())
        location = default_artifacts(storage_url(url)) if artifacts is None else absolute_location(artifacts)
        study.set_user_attr(ARTIFACTS_ATTR, location)
    elif stored != cfg.fingerprint():
        raise ConfigError(
            f"study {name!r} was created with a different configuration; run it with the same study "
            "file and --set values, or pick a new --study name"
        )
    elif artifacts is not None and (recorded := study.user_attrs.get(ARTIFACTS_ATTR)) != absolute_location(artifacts):
        raise ConfigError(
            f"--artifacts {artifacts}: study {name!r} keeps its artifacts in {recorded}; drop --artifacts"
        )
    return study


def load_study(name: str, storage: BaseStorage) -> tuple[optuna.Study, StudyConfig]:
    """An existing study and the config it was created with."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise ConfigError(f"no study named {name!r} in this storage (studies here: {names})") from None
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise ConfigError(f"study {name!r} was not created by nasopt (no {CONFIG_ATTR} attribute)")
    return study, config_from_json(raw)


def completed_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
