from pathlib import Path

import pytest

from nasopt.config import StudyConfig, load_config
from nasopt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["naslung.toml", "demo.toml"])
def test_shipped_study_files_are_valid(name):
    cfg = load_config(ROOT / "studies" / name)
    assert cfg.space.widths and cfg.study.objectives[:2] == ["val_accuracy", "params"]


def test_naslung_matches_the_paper():
    cfg = load_config(ROOT / "studies" / "naslung.toml")
    assert cfg.space.widths == [4, 8, 16, 32, 64, 128] and cfg.space.total_depth == (3, 9)
    assert cfg.space.margins == [1, 2, 3, 4] and cfg.train.betas == (0.5, 0.999)
    assert cfg.train.epochs == 20 and cfg.split.n_folds == 10 and 8 in cfg.space.batch_sizes


def _write(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, match",
    [
        ("[train]\nepochz = 3\n", r"s\.toml: train\.epochz: unknown key"),
        ("[train]\nepochs = 'many'\n", r"s\.toml: train\.epochs: .*integer"),
        ("[train]\nepochs = 0\n", r"train\.epochs: .*greater than or equal to 1"),
        ("[space]\nblocks_per_stage = [3, 1]\n", r"space: .*blocks_per_stage"),
        ("[space]\ntotal_depth = [13, 20]\n", r"total_depth \[13, 20\] cannot be met"),
        ("[space]\nmargins = [5]\n", r"margins must be taken from 1, 2, 3, 4"),
        ("[split]\ntest_fold = 1\nval_fold = 1\n", r"val_fold must differ from test_fold"),
        ("[split]\nn_folds = 5\ntest_fold = 5\n", r"test_fold must be below n_folds"),
        ("[study]\nsampler = 'cmaes'\n", r"study\.sampler: Input should be 'nsga2'"),
        ("[data]\nsource = 'dicom'\n", r"data\.source"),
        ("[train]\nmax_shift = 20\n", r"exceeds data\.crop_size"),
        ("not toml at all [", r"s\.toml: not valid TOML"),
    ],
)
def test_bad_study_files_give_one_line_naming_file_and_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="no such study file"):
        load_config("studies/absent.toml")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["epochs=3"])


def test_overrides_apply_with_toml_types():
    cfg = load_config(None, ["train.epochs=2", "space.widths=[4, 8]", 'data.ambiguous="benign"', "train.flip=false"])
    assert cfg.train.epochs == 2 and cfg.space.widths == [4, 8] and cfg.data.ambiguous == "benign"
    assert cfg.train.flip is False


def test_fingerprint_tracks_meaningful_changes():
    a = StudyConfig()
    assert a.fingerprint() == StudyConfig().fingerprint()
    assert a.fingerprint() != load_config(None, ["train.epochs=3"]).fingerprint()
