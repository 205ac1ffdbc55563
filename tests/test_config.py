import re
from pathlib import Path

import pytest

from nasopt.config.docs import keys
from nasopt.config.schema import StudyConfig, load_config
from nasopt.data.sources import SOURCES
from nasopt.errors import ConfigError
from tests.conftest import assert_user_error, nasopt

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("name", "metric"), [("naslung.toml", "val_accuracy"), ("demo.toml", "val_auc")])
def test_shipped_study_files_are_valid(name, metric):
    cfg = load_config(ROOT / "studies" / name)
    assert cfg.space.widths and cfg.study.objectives == [metric, "params"]


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


@pytest.mark.parametrize(
    "override, match",
    [
        ('data.ambiguous="maybe"', r"data\.ambiguous: Input should be 'exclude', 'benign' or 'malignant'"),
        ("data.min_readers=0", r"data\.min_readers: .*greater than or equal to 1"),
        ("data.seed=-1", r"data\.seed: .*greater than or equal to 0"),
        ('data.source="dicom"', r"data\.source: Input should be 'phantom', 'lidc', 'luna16' or 'nodulemnist3d'"),
    ],
)
def test_data_settings_are_validated_once_here(override, match):
    # The data layer (LabelPolicy, PhantomParams) takes these values as given.
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_every_key_has_a_description():
    for section, section_field in StudyConfig.model_fields.items():
        assert section_field.description, section
        for key, key_field in section_field.annotation.model_fields.items():
            assert key_field.description and len(key_field.description) > 15, f"{section}.{key}"


def test_the_source_table_names_the_sources_and_their_input_keys():
    data = StudyConfig.model_fields["data"].annotation.model_fields
    for name, source in SOURCES.items():
        assert load_config(None, [f'data.source="{name}"']).data.source == name
        if source.input is not None:
            assert data[source.input.key].description.startswith(f"{name}: {source.input.help}")


def _schema_keys() -> list[str]:
    return [f"{section}.{key}" for section, key, _, _ in keys(StudyConfig())]


def test_the_docs_study_file_table_lists_exactly_the_schema_keys():
    page = (ROOT / "docs" / "study-files.md").read_text()
    section = page.split("\n## Study files\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", section, flags=re.MULTILINE)
    fix = "paste the table of `nasopt config show --markdown` into docs/study-files.md's Study files section"
    assert len(listed) == len(set(listed)), f"keys listed twice; {fix}"
    missing, extra = set(_schema_keys()) - set(listed), set(listed) - set(_schema_keys())
    assert not missing and not extra, f"docs/study-files.md lacks {sorted(missing)} and lists {sorted(extra)}; {fix}"


def test_config_show_prints_a_study_file_that_loads_back_the_same(tmp_path):
    args = ["--config", str(ROOT / "studies" / "demo.toml"), "--set", "train.epochs=1", "--set", 'data.npz="x y.npz"']
    proc = nasopt(tmp_path, "config", "show", *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# Effective study configuration: defaults < ")
    for _, _, _, description in keys(StudyConfig()):
        assert f"# {description}\n" in proc.stdout
    shown = tmp_path / "shown.toml"
    shown.write_text(proc.stdout)
    expected = load_config(ROOT / "studies" / "demo.toml", ["train.epochs=1", 'data.npz="x y.npz"'])
    assert load_config(shown).fingerprint() == expected.fingerprint()
    assert "\n# dicom_root (unset)\n" in proc.stdout  # TOML has no null: an unset key is a comment

    table = nasopt(tmp_path, "config", "show", "--markdown")
    assert table.returncode == 0, table.stderr
    assert re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", table.stdout, flags=re.MULTILINE) == _schema_keys()
    assert_user_error(nasopt(tmp_path, "config", "show", "--set", "train.epochz=1"), "train.epochz", "unknown key")
