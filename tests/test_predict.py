"""`nasopt predict`: the real command on a tiny untrained ensemble, HU crops and synthetic CT volumes."""

import csv
import io
import locale
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nasopt.data.geometry import image_from_array
from nasopt.ensemble.module import load_ensemble
from tests.conftest import assert_user_error, nasopt

S = 32
SPACING = (0.7, 0.7, 2.5)
SIZE_XYZ = (60, 60, 30)
SPHERE_INDEX = (27.0, 33.0, 11.0)  # (i, j, k): off the volume's centre, the crop inside the volume
SPHERE_WORLD = (-31.4, 12.6, -55.0)  # mm, LPS
FLIP = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
PERMUTE = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # index i runs along y, j along x, k down z


@pytest.fixture(scope="module")
def ensemble_file(tiny_ensemble_file) -> Path:
    return tiny_ensemble_file


def sphere_array(direction, origin) -> np.ndarray:
    """(z, y, x) int16 volume: -850 HU, and +50 HU within 6 mm of SPHERE_WORLD."""
    k, j, i = np.indices(SIZE_XYZ[::-1])
    index_mm = np.stack([i, j, k], axis=-1) * np.array(SPACING)
    world = np.asarray(origin) + index_mm @ np.asarray(direction).reshape(3, 3).T
    inside = np.linalg.norm(world - np.array(SPHERE_WORLD), axis=-1) <= 6.0
    return np.where(inside, 50, -850).astype(np.int16)


def origin_for(direction) -> np.ndarray:
    """The origin that puts voxel index SPHERE_INDEX at SPHERE_WORLD."""
    return np.array(SPHERE_WORLD) - np.asarray(direction).reshape(3, 3) @ (np.array(SPHERE_INDEX) * np.array(SPACING))


def write_volume(path: Path, direction) -> Path:
    origin = origin_for(direction)
    image = image_from_array(sphere_array(direction, origin), SPACING, origin, direction)
    assert np.allclose(image.TransformContinuousIndexToPhysicalPoint(SPHERE_INDEX), SPHERE_WORLD)
    sitk.WriteImage(image, str(path))
    return path


def write_dicom_series(folder: Path, uid: str) -> Path:
    """An axial DICOM series of the sphere volume, HU stored with a rescale intercept of -1024."""
    folder.mkdir(parents=True, exist_ok=True)
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        return _write_dicom_series(folder, uid)
    finally:  # GDCM's writer sets the process locale to "C"; subprocess output would then decode as ASCII
        locale.setlocale(locale.LC_ALL, saved_locale)


def _write_dicom_series(folder: Path, uid: str) -> Path:
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    origin = origin_for(direction)
    hu = sphere_array(direction, origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(hu.shape[0]):
        image = sitk.GetImageFromArray(hu[k])
        image.SetSpacing(SPACING[:2])
        position = origin + np.array([0.0, 0.0, k * SPACING[2]])
        tags = {
            "0008|0060": "CT",
            "0008|0018": f"{uid}.3.{k}",
            "0010|0020": "P1",
            "0020|000d": f"{uid}.1",
            "0020|000e": f"{uid}.2",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|1052": "-1024",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid}-{k:03d}.dcm"))
        writer.Execute(image)
    return folder


def read_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def assert_sphere_centred(crop_file: str) -> None:
    crop = np.load(crop_file)
    assert crop.shape == (S, S, S) and crop.dtype == np.int16
    bright = np.argwhere(crop > -400)
    assert 500 < len(bright) < 1400, len(bright)  # a 6 mm sphere holds about 905 voxels of 1 mm
    assert np.abs(bright.mean(axis=0) - (S - 1) / 2).max() <= 1.0, bright.mean(axis=0)


def test_npy_crops_match_ensemble_predict(ensemble_file, tmp_path):
    rng = np.random.default_rng(1)
    cube = rng.normal(-850, 40, (40, 40, 40)).astype(np.int16)
    cube[14:26, 14:26, 14:26] = 30
    batch = rng.normal(-700, 200, (1, 36, 36, 36)).astype(np.float32)  # (1, S, S, S) is accepted too
    np.save(tmp_path / "cube.npy", cube)
    np.save(tmp_path / "batch.npy", batch)

    proc = nasopt(tmp_path, "predict", str(ensemble_file), "cube.npy", "batch.npy", "--save-crops", "seen")
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(proc.stdout)
    columns = ["input", "x", "y", "z", "edge_padded", "prob_malignant", "malignant", "trial_3", "trial_7", "crop"]
    assert list(rows[0]) == columns
    assert [r["input"] for r in rows] == ["cube.npy", "batch.npy"]

    ensemble = load_ensemble(ensemble_file)
    for row, crop in zip(rows, (cube, batch[0])):
        prob, members = ensemble.predict(crop[None])
        assert float(row["prob_malignant"]) == prob[0]  # float64, written exactly
        assert row["malignant"] == str(int(prob[0] >= 0.5))  # a file without an operating point: 0.5
        assert [np.float32(row["trial_3"]), np.float32(row["trial_7"])] == list(members[0])
        assert row["x"] == row["y"] == row["z"] == row["edge_padded"] == ""
        lo = (crop.shape[0] - S) // 2
        np.testing.assert_array_equal(np.load(tmp_path / row["crop"]), crop[lo : lo + S, lo : lo + S, lo : lo + S])


def test_volume_crop_centres_the_nodule_at_a_world_point(ensemble_file, tmp_path):
    write_volume(tmp_path / "flipped.mhd", FLIP)
    write_volume(tmp_path / "permuted.nii.gz", PERMUTE)
    inputs = ["flipped.mhd", "permuted.nii.gz"]
    world = ",".join(map(str, SPHERE_WORLD))

    proc = nasopt(tmp_path, "predict", str(ensemble_file), *inputs, f"--centre={world}", "--save-crops", "seen")
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(proc.stdout)
    assert [r["input"] for r in rows] == inputs
    for row in rows:
        assert [float(row[a]) for a in "xyz"] == pytest.approx(SPHERE_WORLD, abs=1e-3)
        assert row["edge_padded"] == "false"
        assert_sphere_centred(tmp_path / row["crop"])
    # one physical point, two differently stored volumes on one voxel lattice: the same crop and probability
    np.testing.assert_array_equal(np.load(tmp_path / rows[0]["crop"]), np.load(tmp_path / rows[1]["crop"]))
    assert rows[0]["prob_malignant"] == rows[1]["prob_malignant"]


def test_centres_csv_in_voxel_coordinates_gives_one_row_per_nodule(ensemble_file, tmp_path):
    write_volume(tmp_path / "scan.mhd", FLIP)
    write_dicom_series(tmp_path / "series", "1.2.826.0.1.3680043.2.1125.7")
    i, j, k = SPHERE_INDEX
    # the second row is inside the volume, one slice from its end: its crop is padded with air
    (tmp_path / "centres.csv").write_text(
        f"input,x,y,z\nscan.mhd,{i},{j},{k}\nseries,{i},{j},{k}\n{tmp_path / 'scan.mhd'},{i},{j},1\n"
    )

    proc = nasopt(
        tmp_path, "predict", str(ensemble_file), "scan.mhd", "series", "--centres", "centres.csv",
        "--coords", "voxel", "--out", "out/predictions.csv", "--save-crops", "seen",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "prob_malignant" in proc.stdout and "scan.mhd" in proc.stdout  # the table
    assert "padded with air" in proc.stdout
    rows = read_rows((tmp_path / "out" / "predictions.csv").read_text(encoding="utf-8"))
    assert [r["input"] for r in rows] == ["scan.mhd", "scan.mhd", "series"]  # input order, then CSV order
    assert [r["edge_padded"] for r in rows] == ["false", "true", "false"]
    assert [float(rows[0][a]) for a in "xyz"] == pytest.approx(SPHERE_WORLD, abs=1e-3)  # world mm, always
    near_edge = (SPHERE_WORLD[0], SPHERE_WORLD[1], SPHERE_WORLD[2] + 10 * SPACING[2])  # k runs down z
    assert [float(rows[1][a]) for a in "xyz"] == pytest.approx(near_edge, abs=1e-3)
    assert_sphere_centred(tmp_path / rows[0]["crop"])
    assert_sphere_centred(tmp_path / rows[2]["crop"])  # DICOM: HU after the rescale intercept
    assert rows[0]["prob_malignant"] != rows[1]["prob_malignant"]


BAD_INPUTS = {
    "npy_wrong_size": (["small.npy"], ["small.npy", "shape (20, 20, 20)", "S >= 32"]),
    "npy_2d": (["flat.npy"], ["flat.npy", "shape (32, 32)"]),
    "npy_garbage": (["garbage.npy"], ["garbage.npy", "not a NumPy .npy file"]),
    "npy_not_numbers": (["words.npy"], ["words.npy", "not a number type"]),
    "mhd_garbage": (["garbage.mhd", "--centre", "0,0,0"], ["garbage.mhd", "not a MetaImage header"]),
    "nii_truncated": (["cut.nii.gz", "--centre", "0,0,0"], ["cut.nii.gz", "truncated"]),
    "centre_outside": (["scan.mhd", "--centre", "500,0,0"], ["scan.mhd", "outside the volume", "--coords"]),
    "voxel_outside": (["scan.mhd", "--centre", "0,0,30", "--coords", "voxel"], ["scan.mhd", "outside the volume"]),
    "no_centre": (["scan.mhd"], ["scan.mhd", "needs nodule centres", "--centre"]),
    "no_centre_in_csv": (["scan.mhd", "--centres", "other.csv"], ["scan.mhd", "add rows for it to other.csv"]),
    "both_centre_flags": (["scan.mhd", "--centre", "0,0,0", "--centres", "other.csv"], ["--centre and --centres"]),
    "csv_missing_columns": (["scan.mhd", "--centres", "nox.csv"], ["nox.csv", "missing column(s) x"]),
    "unknown_extension": (["scan.png", "--centre", "0,0,0"], ["scan.png", "unknown input type"]),
    "two_dicom_series": (["mixed", "--centre", "0,0,0"], ["mixed", "holds 2 DICOM series"]),
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("bad")
    np.save(where / "small.npy", np.full((20, 20, 20), -850, np.int16))
    np.save(where / "flat.npy", np.full((32, 32), -850, np.int16))
    np.save(where / "words.npy", np.array(["lung"] * 8))
    (where / "garbage.npy").write_bytes(np.random.default_rng(0).bytes(600))
    (where / "garbage.mhd").write_bytes(np.random.default_rng(1).bytes(600))
    (where / "scan.png").write_bytes(b"\x89PNG")
    write_volume(where / "scan.mhd", FLIP)
    write_volume(where / "whole.nii.gz", FLIP)
    whole = (where / "whole.nii.gz").read_bytes()
    (where / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    (where / "other.csv").write_text("input,x,y,z\nelse.mhd,0,0,0\n")
    (where / "nox.csv").write_text("input,y,z\nscan.mhd,0,0\n")
    write_dicom_series(where / "mixed", "1.2.826.0.1.3680043.2.1125.8")
    write_dicom_series(where / "mixed", "1.2.826.0.1.3680043.2.1125.9")
    return where


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(ensemble_file, bad_inputs, case):
    args, fragments = BAD_INPUTS[case]
    assert_user_error(nasopt(bad_inputs, "predict", str(ensemble_file), *args), *fragments)


def test_the_malignant_column_decides_at_the_exported_threshold_after_calibration(tiny_ensemble_file, tmp_path):
    from nasopt.artifacts.checkpoint import Calibration, OperatingPoint, read_checkpoint
    from nasopt.artifacts.checkpoint import EnsembleHeader as Header
    from nasopt.ensemble.module import save_ensemble

    rng = np.random.default_rng(2)
    crops = [rng.normal(mean, 150, (S, S, S)).astype(np.int16) for mean in (-850, -300, 100)]
    for i, crop in enumerate(crops):
        np.save(tmp_path / f"c{i}.npy", crop)
    tensors, header = read_checkpoint(tiny_ensemble_file, "ensemble", Header)
    calibration = Calibration(method="temperature", temperature=0.001, fitted_on="validation", val_nodules=9)
    uncalibrated = load_ensemble(tiny_ensemble_file).predict(np.stack(crops))[0]
    assert np.ptp(uncalibrated) > 0  # the crops differ to the networks
    # Untrained networks say about 0.5: a low temperature spreads that; a threshold between the
    # calibrated probabilities makes both decisions occur.
    calibrated = 1 / (1 + np.exp(-np.log(uncalibrated / (1 - uncalibrated)) / 0.001))
    threshold = float(np.sort(calibrated)[:2].mean())  # between two crops, not on one
    point = OperatingPoint(rule="youden", threshold=threshold, val_sensitivity=1.0, val_specificity=1.0)
    members = [
        (m.model, {k.removeprefix(m.prefix): v for k, v in tensors.items() if k.startswith(m.prefix)}, m.weight)
        for m in header.members
    ]
    kept = header.model_dump(exclude={"members", "calibration", "operating_point", "nasopt_version"})
    path = save_ensemble(tmp_path / "cal.safetensors", members, **kept, calibration=calibration, operating_point=point)

    proc = nasopt(tmp_path, "predict", str(path), "c0.npy", "c1.npy", "c2.npy")
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(proc.stdout)
    got = np.array([float(r["prob_malignant"]) for r in rows])
    assert np.abs(got - calibrated).max() < 1e-6 and np.abs(got - uncalibrated).max() > 1e-3
    assert [r["malignant"] for r in rows] == [str(int(p >= threshold)) for p in got]
    assert {r["malignant"] for r in rows} == {"0", "1"}
    ensemble = load_ensemble(path)
    assert ensemble.threshold == threshold
    import torch

    from nasopt.inference.core import center_crop

    x = center_crop(torch.from_numpy(np.stack(crops)), 32)[:, None]
    assert ensemble.classify(x).tolist() == [int(r["malignant"]) for r in rows]
