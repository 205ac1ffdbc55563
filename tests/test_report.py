"""What a study shows people: trial notes and figures, `nasopt report`, `nasopt explain`, attention hooks."""

import re

import numpy as np
import optuna
import pytest
import torch
from matplotlib.image import imread
from optuna_dashboard._note import get_note_from_system_attrs

from nasopt.artifacts.record import Key
from nasopt.ensemble.module import load_ensemble
from nasopt.inference.attention import last_attention, spatial_attention
from nasopt.inference.core import Member
from nasopt.model import Architecture, build_network
from nasopt.visualization.report import hypervolume_2d
from tests.conftest import assert_user_error, nasopt
from tests.test_predict import FLIP, SPHERE_WORLD, write_volume


def png_size(path) -> tuple[int, int]:
    image = imread(path)  # decodes the whole file
    return image.shape[1], image.shape[0]


def test_each_trial_has_a_note_a_learning_curve_and_an_attention_figure(searched_study):
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{searched_study}/storage/nasopt.db")
    system = study._storage.get_study_system_attrs(study._study_id)
    artifacts = searched_study / "storage" / "artifacts"
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        note = get_note_from_system_attrs(system, t._trial_id)["body"]
        arch = Architecture.from_dict(t.user_attrs[Key.ARCH])
        assert f"### Trial {t.number}" in note and "| part | blocks | widths | CBAM |" in note
        for i, widths in enumerate(arch.stages, start=1):
            assert f"| stage {i} | {len(widths)} | {', '.join(map(str, widths))} |" in note
        assert f"**{t.user_attrs[Key.PARAMS]:,}** parameters" in note and "MFLOPs" in note
        assert f"auc **{t.user_attrs['val_auc']:.3f}**" in note and "samples/s on `cpu`" in note
        assert png_size(artifacts / t.user_attrs[Key.CURVE_PNG]) == (800, 224)
        assert png_size(artifacts / t.user_attrs[Key.ATTENTION_PNG]) == (528, 752)  # 4 nodules


def test_report_writes_figures_and_a_page_listing_the_front(searched_study, tmp_path):
    out = tmp_path / "report"
    proc = nasopt(searched_study, "report", "--study", "demo", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(out / "index.html") in proc.stdout
    sizes = {name: png_size(out / name) for name in ("pareto.png", "hypervolume.png", "curves.png")}
    assert sizes == {"pareto.png": (640, 400), "hypervolume.png": (800, 288), "curves.png": (800, 288)}
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{searched_study}/storage/nasopt.db")
    page = (out / "index.html").read_text()
    table = page[page.index('<table id="front">') : page.index("</table>")]
    listed = {int(n) for n in re.findall(r"<tr><td>(\d+)</td>", table)}
    assert listed == {t.number for t in study.best_trials}
    assert "not clinical figures" in page and "LIDC phantom" in (out / "summary.md").read_text()
    assert not list(out.glob("*.tmp"))

    assert_user_error(nasopt(searched_study, "report", "--study", "nope", "--out", str(out)), "no study named 'nope'")


def test_hypervolume_on_hand_made_fronts():
    # One point: (accuracy 0.8, 10^4 parameters) against (0, 10^8): 0.8 x 4 decades.
    assert hypervolume_2d([(0.8, 10**4)]) == pytest.approx(3.2)
    # A dominated point adds nothing; a second front point adds its own strip.
    assert hypervolume_2d([(0.8, 10**4), (0.7, 10**5)]) == pytest.approx(3.2)
    assert hypervolume_2d([(0.8, 10**4), (0.9, 10**6)]) == pytest.approx(3.2 + 0.1 * 2)


def members(seed: int) -> list[Member]:
    torch.manual_seed(seed)
    arch = Architecture(((4,), (8,), (8,)), True, (True, True, True), 2)
    return [Member(build_network(arch).eval(), (-700.0, 300.0)) for _ in range(2)]


def test_attention_hooks_leave_no_state_behind():
    a, b = members(0)
    hu = torch.randn(2, 1, 32, 32, 32) * 300 - 700
    alone_a, alone_b = last_attention(a, hu)[1], last_attention(b, hu)[1]
    with spatial_attention(a.network) as maps_a, spatial_attention(b.network) as maps_b:
        with torch.no_grad():
            a(hu), b(hu)
    assert list(maps_a) == ["stem", "stage1", "stage2", "stage3"] and list(maps_b) == list(maps_a)
    assert not torch.equal(maps_a["stage3"], maps_b["stage3"])  # two networks, two maps
    assert torch.equal(last_attention(a, hu)[1], alone_a) and torch.equal(last_attention(b, hu)[1], alone_b)
    assert alone_a.shape == (2, 32, 32, 32) and float(alone_a.min()) > 0 and float(alone_a.max()) < 1
    for m in (a, b):
        assert all(not module._forward_hooks for module in m.network.modules())


def test_explain_writes_one_figure_per_crop_for_npy_and_mhd(tiny_ensemble_file, tmp_path):
    crop = np.full((40, 40, 40), -850, np.int16)
    crop[16:24, 16:24, 16:24] = 30
    np.save(tmp_path / "crop.npy", crop)
    volume = write_volume(tmp_path / "ct.mhd", FLIP)
    centre = ",".join(map(str, SPHERE_WORLD))
    out = tmp_path / "explain"
    proc = nasopt(
        tmp_path, "explain", str(tiny_ensemble_file), "crop.npy", "ct.mhd", "--centre", centre, "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["0000-crop.png", "0001-ct.png"]
    rows = len(load_ensemble(tiny_ensemble_file).members) + 1  # each member and the ensemble
    assert all(png_size(p) == (528, int(80 * (2.2 * rows + 0.6))) for p in written)
    assert str(volume.name) not in proc.stderr
    assert_user_error(
        nasopt(tmp_path, "explain", str(tiny_ensemble_file), "ct.mhd", "--out", str(out)), "ct.mhd", "centre"
    )
