"""nasopt.ensemble.deploy: the ONNX graph, the TorchScript file and the MONAI bundle decide as the ensemble file.

Real exports of a two-member ensemble, read back with each destination's own runtime:
onnxruntime, plain ``torch.jit.load`` in a process that cannot import nasopt, and MONAI's
``ConfigParser``. The members are conftest's untrained networks with their batch-norm statistics
estimated on toy crops: untrained as they are built, they give 0.5 +- 1e-5 for every crop, which
would make a 1e-5 comparison and a temperature invisible; with estimated statistics the
calibrated probabilities spread over 0.538-0.559, and THRESHOLD splits the test crops 6 / 2.

tests/data/monai_meta_schema.json is MONAI's bundle metadata schema meta_schema_20240725.json as
published (MONAI-extra-test-data release 0.8.1, mirrored verbatim in the repository
Project-MONAI/project-monai.github.io, public/schema/); MONAI's own verify_metadata would download it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from nasopt.artifacts.checkpoint import Calibration, EnsembleHeader, OperatingPoint, build_model, read_checkpoint
from nasopt.data.sources import PHANTOM_CAVEAT
from nasopt.ensemble import deploy
from nasopt.ensemble.module import load_ensemble, save_ensemble
from nasopt.errors import ConfigError
from nasopt.inference.core import center_crop, normalize
from tests.conftest import blob_set

monai = pytest.importorskip("monai")
from monai.bundle import ConfigParser  # noqa: E402
from monai.data import decollate_batch, load_net_with_metadata  # noqa: E402

# Reading a TorchScript file is what these tests are for; torch 2.13 deprecates it in favour of torch.export.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
SCHEMA = Path(__file__).parent / "data" / "monai_meta_schema.json"
TEMPERATURE = 1.7
THRESHOLD = 0.55  # calibrated test probabilities: six in 0.538-0.549, two in 0.556-0.560
TOL = 1e-5


@pytest.fixture(scope="module")
def calibrated_file(tiny_ensemble_file, tmp_path_factory) -> Path:
    """conftest's tiny ensemble with estimated batch-norm statistics, a temperature and an
    operating point, searched (says its header) on the phantom."""
    tensors, header = read_checkpoint(tiny_ensemble_file, "ensemble", EnsembleHeader)
    fit = torch.as_tensor(blob_set(n=24, seed=1).crops).float()
    members = []
    for entry in header.members:
        net = build_model(entry.model, tensors, entry.prefix)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.momentum = None  # the plain average over the one batch
        net.train()
        with torch.no_grad():
            net(normalize(center_crop(fit, 32)[:, None], entry.model.norm))
        members.append((entry.model, net.state_dict(), entry.weight))
    return save_ensemble(
        tmp_path_factory.mktemp("deploy") / "calibrated.safetensors",
        members,
        selection=header.selection,
        study="lungs",
        data={"source": "phantom"},
        split={},
        data_fingerprint="x",
        search_patients=[],
        refit=False,
        calibration=Calibration(
            method="temperature", temperature=TEMPERATURE, fitted_on="validation predictions", val_nodules=10
        ),
        operating_point=OperatingPoint(rule="youden", threshold=THRESHOLD, val_sensitivity=0.8, val_specificity=0.7),
    )


@pytest.fixture(scope="module")
def ensemble(calibrated_file):
    return load_ensemble(calibrated_file)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Eight int16 HU crops (8, 40, 40, 40), larger than the 32^3 input: each path centre-crops."""
    return blob_set(n=8, seed=2).crops


@pytest.fixture(scope="module")
def hu(crops) -> torch.Tensor:
    return center_crop(torch.as_tensor(crops).float(), 32)[:, None].contiguous()


@pytest.fixture(scope="module")
def expected(ensemble, hu) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated probabilities, 0/1 labels) of the torch ensemble."""
    with torch.no_grad():
        return ensemble(hu).numpy(), ensemble.classify(hu).numpy()


@pytest.fixture(scope="module")
def onnx_file(ensemble, tmp_path_factory) -> Path:
    return deploy.export_onnx(ensemble, tmp_path_factory.mktemp("onnx") / "ensemble.onnx")


@pytest.fixture(scope="module")
def ts_file(ensemble, tmp_path_factory) -> Path:
    return deploy.export_torchscript(ensemble, tmp_path_factory.mktemp("ts") / "ensemble.ts")


@pytest.fixture(scope="module")
def bundle(ensemble, tmp_path_factory) -> Path:
    return deploy.export_monai_bundle(ensemble, tmp_path_factory.mktemp("bundles") / "lung_nodule_classification")


def run_onnx(path: Path, hu: torch.Tensor) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"hu": hu.numpy()})))


def run_bundle(folder: Path, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 2) probabilities and the post-processed 0/1 of ``crops``, through MONAI's own parser
    reading the bundle's configs: preprocessing per crop, the inferer on the batch, then
    postprocessing per decollated item, as MONAI's evaluator does."""
    parser = ConfigParser()
    parser.read_meta(folder / "configs" / "metadata.json")
    parser.read_config(folder / "configs" / "inference.json")
    parser["bundle_root"] = str(folder)
    network = parser.get_parsed_content("network")
    pre = parser.get_parsed_content("preprocessing")
    batch = torch.stack([pre({"image": crop[None]})["image"].as_tensor() for crop in crops])
    with torch.no_grad():
        pred = parser.get_parsed_content("inferer")(batch, network)
    post = parser.get_parsed_content("postprocessing")
    labels = [post(item)["pred_malignant"].item() for item in decollate_batch({"pred": pred})]
    return pred.numpy(), np.array(labels)


def test_test_crops_fall_on_both_sides_of_the_threshold(expected):
    """Otherwise every 0/1 comparison below proves nothing; and none sits within rounding of it."""
    prob, labels = expected
    assert 0 < labels.sum() < len(labels), prob
    assert np.abs(prob - THRESHOLD).min() > 1e-3, prob


# --- ONNX ---------------------------------------------------------------------------------------


def test_onnx_outputs_match_the_ensemble(onnx_file, ensemble, hu, expected):
    out = run_onnx(onnx_file, hu)  # a batch of 8 where the graph was traced with 2: dynamic batch
    assert list(out) == ["prob_malignant", "malignant"]
    assert out["prob_malignant"].shape == (8,) and out["prob_malignant"].dtype == np.float64
    assert out["malignant"].shape == (8,) and out["malignant"].dtype == np.int64
    np.testing.assert_allclose(out["prob_malignant"], expected[0], atol=TOL, rtol=0)
    np.testing.assert_array_equal(out["malignant"], expected[1])
    # The temperature is inside: the uncalibrated weighted mean is 0.56-0.60, the graph's 0.54-0.56.
    with torch.no_grad():
        raw = (ensemble.member_probs(hu).double() @ ensemble.weights).numpy()
    assert np.abs(out["prob_malignant"] - raw).min() > 1e-2


def test_onnx_without_onnx_is_one_line(ensemble, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what `import onnx` meets when it is not installed
    with pytest.raises(ConfigError) as err:
        deploy.export_onnx(ensemble, tmp_path / "x.onnx")
    assert str(err.value) == "--onnx needs the onnx package: pip install 'nasopt[onnx]'"
    assert not list(tmp_path.iterdir())


# --- TorchScript --------------------------------------------------------------------------------

_PLAIN_LOAD = """
import json, sys
sys.modules["nasopt"] = None  # the file must not need nasopt
import numpy as np, torch
extra = {"nasopt.json": ""}
module = torch.jit.load(sys.argv[1], _extra_files=extra)
prob, malignant = module(torch.from_numpy(np.load(sys.argv[2])))
print(json.dumps({"prob": prob.tolist(), "malignant": malignant.tolist(), "dtype": str(malignant.dtype),
                  "extra": json.loads(extra["nasopt.json"])}))
"""


def test_torchscript_runs_without_nasopt(ts_file, ensemble, hu, expected, tmp_path):
    np.save(tmp_path / "hu.npy", hu.numpy()[:5])  # a batch of 5: the trace's 2 is not baked in
    proc = subprocess.run(
        [sys.executable, "-c", _PLAIN_LOAD, str(ts_file), str(tmp_path / "hu.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    np.testing.assert_allclose(out["prob"], expected[0][:5], atol=TOL, rtol=0)
    assert out["malignant"] == expected[1][:5].tolist() and out["dtype"] == "torch.int64"
    extra = out["extra"]
    assert extra["threshold"] == THRESHOLD and extra["temperature"] == TEMPERATURE
    assert extra["header"]["study"] == "lungs" and len(extra["header"]["members"]) == 2
    assert EnsembleHeader.model_validate(extra["header"]) == ensemble.header


def test_torchscript_header_of_an_uncalibrated_file(tiny_ensemble_file):
    """Files written before calibration run at T = 1 and 0.5, and their TorchScript says so."""
    meta = deploy.header_json(load_ensemble(tiny_ensemble_file))
    assert meta["threshold"] == 0.5 and meta["temperature"] == 1.0
    assert meta["header"]["calibration"] is None and meta["header"]["operating_point"] is None


# --- MONAI bundle -------------------------------------------------------------------------------


def test_bundle_runs_through_monais_parser(bundle, calibrated_file, crops, expected):
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == [
        "configs/inference.json",
        "configs/metadata.json",
        "models/model.ts",
    ]
    pred, labels = run_bundle(bundle, crops)
    assert pred.shape == (8, 2) and pred.dtype == np.float64
    reloaded = load_ensemble(calibrated_file)
    prob, _ = reloaded.predict(crops)  # nasopt's own centre crop of the 40^3 crops
    np.testing.assert_allclose(pred[:, 1], prob, atol=TOL, rtol=0)
    np.testing.assert_allclose(pred[:, 0], 1 - prob, atol=TOL, rtol=0)
    np.testing.assert_array_equal(labels, expected[1])


def test_bundle_metadata(bundle, ensemble):
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    required = json.loads(SCHEMA.read_text())["required"]
    assert not [k for k in required if k not in meta]
    for key in ("changelog", "intended_use"):
        assert meta[key]
    assert meta["monai_version"] == monai.__version__ and meta["numpy_version"] == np.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert "'lungs'" in meta["description"] and PHANTOM_CAVEAT in meta["description"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert image == {
        "type": "image",
        "format": "hounsfield",
        "modality": "CT",
        "num_channels": 1,
        "spatial_shape": [32, 32, 32],
        "dtype": "float32",
        "value_range": [-1024, 3071],
        "is_patch_data": True,
        "channel_def": {"0": "image"},
    }
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["type"] == "probabilities" and pred["format"] == "classes" and pred["num_channels"] == 2
    assert pred["spatial_shape"] == [2] and pred["value_range"] == [0, 1] and pred["dtype"] == "float64"
    assert pred["channel_def"] == {"0": "benign", "1": "malignant"}
    assert meta["nasopt"]["threshold"] == THRESHOLD and meta["nasopt"]["temperature"] == TEMPERATURE
    # model.ts carries both configs, as MONAI's save_net_with_metadata / ckpt_export write them.
    _, ts_meta, extra = load_net_with_metadata(str(bundle / "models" / "model.ts"), more_extra_files=["inference.json"])
    assert ts_meta == meta
    assert json.loads(extra["inference.json"]) == json.loads((bundle / "configs" / "inference.json").read_text())


def test_bundle_metadata_matches_monais_schema(bundle):
    jsonschema = pytest.importorskip("jsonschema")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))  # raises on any violation
    assert meta["schema"].endswith("/" + "meta_schema_20240725.json")


def test_bundle_refuses_a_non_empty_folder(ensemble, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError) as err:
        deploy.export_monai_bundle(ensemble, folder)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and str(folder) in message and "--force" in message
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    # force: replaced by a whole bundle, and nothing left beside it.
    deploy.export_monai_bundle(ensemble, folder, force=True)
    assert not (folder / "notes.txt").exists() and (folder / "models" / "model.ts").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    # An empty folder is taken as it is.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (deploy.export_monai_bundle(ensemble, empty) / "configs" / "metadata.json").is_file()


class _Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("member fails")


def test_bundle_failure_leaves_nothing_half_written(ensemble, tmp_path):
    """An ensemble whose trace fails, after the configs were written into the temporary folder."""
    broken = copy.deepcopy(ensemble)
    broken.members[0].network = _Fails()
    folder = tmp_path / "bundle"
    with pytest.raises(RuntimeError, match="member fails"):
        deploy.export_monai_bundle(broken, folder)
    assert list(tmp_path.iterdir()) == []
    # With force over an existing bundle: the old one stays as it was.
    deploy.export_monai_bundle(ensemble, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError, match="member fails"):
        deploy.export_monai_bundle(broken, folder, force=True)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_bundle_folder_that_is_a_file(ensemble, tmp_path):
    target = tmp_path / "bundle"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        deploy.check_bundle_folder(target, force=True)


def test_bundle_without_monai_is_one_line(ensemble, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "monai", None)
    with pytest.raises(ConfigError) as err:
        deploy.export_monai_bundle(ensemble, tmp_path / "b")
    assert str(err.value) == "--monai-bundle needs the monai package: pip install 'nasopt[monai]'"
    assert list(tmp_path.iterdir()) == []


# --- all four ------------------------------------------------------------------------------------


def test_round_trip_same_probabilities_and_labels(calibrated_file, onnx_file, ts_file, bundle, crops, hu):
    prob, _ = load_ensemble(calibrated_file).predict(crops)
    labels = (prob >= THRESHOLD).astype(np.int64)
    onnx_out = run_onnx(onnx_file, hu)
    with torch.no_grad():
        ts_prob, ts_labels = torch.jit.load(str(ts_file))(hu)
    bundle_pred, bundle_labels = run_bundle(bundle, crops)
    for other in (onnx_out["prob_malignant"], ts_prob.numpy(), bundle_pred[:, 1]):
        np.testing.assert_allclose(other, prob, atol=TOL, rtol=0)
    for other in (onnx_out["malignant"], ts_labels.numpy(), bundle_labels):
        np.testing.assert_array_equal(other, labels)
