"""``nasopt predict``: an exported ensemble's malignancy probability for new nodules.

Holds everything between the command line and :meth:`Ensemble.predict`: reading inputs (HU
crops as ``.npy``; CT volumes as ``.mhd``/``.mha``, ``.nii``/``.nii.gz`` or a folder holding
one DICOM series), reading nodule centres (``--centre`` or a CSV, world mm or voxel index),
cutting the same 1 mm crops the training data was cut as (:func:`~nasopt.data.geometry.crop_at_point`),
and writing one CSV row per nodule, atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nasopt.atomic import atomic_write
from nasopt.data.geometry import AIR_HU, crop_at_point
from nasopt.data.volume import VOLUME_SUFFIXES, load_volume, refuse_non_finite
from nasopt.errors import ConfigError, DataError

if TYPE_CHECKING:
    from nasopt.ensemble.module import Ensemble

Centre = tuple[float, float, float]
Coords = Literal["world", "voxel"]
COORDS: tuple[str, ...] = ("world", "voxel")
#: Columns a ``--centres`` CSV must have.
CENTRE_COLUMNS: tuple[str, ...] = ("input", "x", "y", "z")
#: A crop of lung CT in HU always holds some voxels below this (parenchyma is near -850 HU).
_LUNG_HU = -500.0


@dataclass(frozen=True)
class CentreSpec:
    """A nodule centre as the user gave it: ``where`` names its origin for error messages."""

    point: Centre
    where: str


@dataclass(frozen=True)
class Row:
    """One prediction: an input, the centre in world mm (None for a crop), the ensemble's
    calibrated probability, its decision at the ensemble's threshold, and each member's raw probability."""

    input: str
    centre: Centre | None
    edge_padded: bool | None
    prob: float
    malignant: int  # 1 when prob >= the ensemble's threshold
    member_probs: tuple[float, ...]
    crop_file: Path | None = None


@dataclass
class PredictResult:
    """The rows, the member column names (``trial_<n>``) and notes worth telling the user."""

    members: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    crops_saved: bool = False
    threshold: float | None = None  # the ensemble's decision threshold

    @property
    def columns(self) -> list[str]:
        extra = ["crop"] if self.crops_saved else []
        return ["input", "x", "y", "z", "edge_padded", "prob_malignant", "malignant", *self.members, *extra]


# ------------------------------------------------------------------------------------ inputs


def input_kind(path: Path) -> Literal["npy", "volume"]:
    """``npy`` for a HU crop, ``volume`` for a CT volume; a missing path or unknown type is a DataError."""
    if path.is_dir():
        return "volume"
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; check the path")
    name = path.name.lower()
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(VOLUME_SUFFIXES):
        return "volume"
    raise DataError(
        f"{path}: unknown input type; pass a HU crop (.npy), a CT volume ({', '.join(VOLUME_SUFFIXES)}) "
        "or a folder holding one DICOM series"
    )


def load_crop(path: Path, min_size: int = 1) -> np.ndarray:
    """The HU cube (S, S, S) in a ``.npy`` file (``(1, S, S, S)`` is accepted), S >= ``min_size``."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
        if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):  # PK: an .npz archive, refused below
            raise DataError(f"{path}: not a NumPy .npy file (no .npy header); save the HU crop with numpy.save")
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable .npy array ({reason}); save the HU crop with numpy.save") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        array.close()
        raise DataError(f"{path}: an .npz archive, not one array; save the HU crop with numpy.save")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{path}: dtype {array.dtype} is not a number type; save HU as an integer or float array")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or len(set(array.shape)) != 1 or array.shape[0] < min_size:
        raise DataError(f"{path}: shape {array.shape}; {_crop_shape(max(min_size, 32))}")
    refuse_non_finite(array, str(path))
    return array


def _crop_shape(size: int) -> str:
    return (
        f"expected one HU cube (S, S, S) or (1, S, S, S) with S >= {size}, 1 mm voxels, the nodule at the centre "
        "(or pass the CT volume with --centre)"
    )


# ----------------------------------------------------------------------------------- centres


def parse_centre(text: str, where: str = "--centre") -> Centre:
    """``"X,Y,Z"`` as three finite floats."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not np.all(np.isfinite(values)):
        raise ConfigError(f"{where} {text!r}: expected three numbers X,Y,Z, e.g. --centre=-61.5,102.3,-215.0")
    return values  # type: ignore[return-value]


def read_centres(path: Path) -> list[tuple[str, CentreSpec]]:
    """(input, centre) for every row of a ``--centres`` CSV with columns ``input,x,y,z``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = list(reader)
    except FileNotFoundError:
        raise DataError(f"{path}: no such centres file; pass a CSV with columns input,x,y,z") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"{path}: unreadable centres CSV ({exc}); save it as a UTF-8 CSV with columns input,x,y,z"
        ) from None
    names = [h.strip().lower() for h in header or []]
    missing = [c for c in CENTRE_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; the first row must be a header naming input,x,y,z"
        )
    at = {c: names.index(c) for c in CENTRE_COLUMNS}
    out = []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path} line {line}"
        cells = {c: row[i].strip() if i < len(row) else "" for c, i in at.items()}
        if not cells["input"]:
            raise DataError(f"{where}: the input column is empty; name the volume (its path or file name)")
        try:
            point = parse_centre(f"{cells['x']},{cells['y']},{cells['z']}", where)
        except ConfigError:
            raise DataError(
                f"{where}: x, y, z must be numbers, got {cells['x']!r}, {cells['y']!r}, {cells['z']!r}"
            ) from None
        out.append((cells["input"], CentreSpec(point, where)))
    return out


def _match_input(name: str, inputs: Sequence[str], where: str) -> str | None:
    """The command-line input a CSV ``input`` cell names: the same path, else the same file name."""
    same_path = [i for i in inputs if i == name or Path(i).resolve() == Path(name).resolve()]
    if same_path:
        return same_path[0]
    same_name = sorted({i for i in inputs if Path(i).name == name})
    if len(same_name) > 1:
        raise DataError(f"{where}: {name!r} names several inputs ({', '.join(same_name)}); write the path as given")
    return same_name[0] if same_name else None


def assign_centres(
    inputs: Sequence[str],
    kinds: dict[str, str],
    centre: str | None,
    centres_csv: Path | None,
    notes: list[str],
) -> dict[str, list[CentreSpec]]:
    """The centres of each volume input; a volume without any is a DataError."""
    if centre is not None and centres_csv is not None:
        raise ConfigError("--centre and --centres both given; pass one (--centre X,Y,Z or --centres CSV)")
    volumes = [i for i in dict.fromkeys(inputs) if kinds[i] == "volume"]
    found: dict[str, list[CentreSpec]] = {v: [] for v in volumes}
    if centre is not None:
        spec = CentreSpec(parse_centre(centre), "--centre")
        found = {v: [spec] for v in volumes}
    elif centres_csv is not None:
        unmatched = 0
        for name, spec in read_centres(centres_csv):
            match = _match_input(name, list(dict.fromkeys(inputs)), spec.where)
            if match is None:
                unmatched += 1
            elif kinds[match] == "npy":
                raise DataError(f"{spec.where}: {name} is a .npy crop, already centred; remove its row")
            else:
                found[match].append(spec)
        if unmatched:
            notes.append(f"{centres_csv}: {unmatched} row(s) name no input on the command line; ignored")
    for volume, specs in found.items():
        if not specs:
            how = f"add rows for it to {centres_csv}" if centres_csv else "pass --centre X,Y,Z or --centres CSV"
            raise DataError(f"{volume}: a CT volume needs nodule centres (input,x,y,z); {how}")
    return found


def _fmt(point: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in point) + ")"


def world_centre(image: Any, spec: CentreSpec, coords: Coords, item: str) -> Centre:
    """``spec`` in world mm (LPS); a centre outside the scanned box is a DataError.

    A centre inside but near the edge is fine: its crop is padded with air.
    """
    if coords == "voxel":
        world = tuple(float(v) for v in image.TransformContinuousIndexToPhysicalPoint([float(v) for v in spec.point]))
    else:
        world = spec.point
    size = np.array(image.GetSize(), dtype=float)
    index = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in world]))
    if (index < -0.5).any() or (index > size - 0.5).any():  # the scanned box reaches half a voxel past the centres
        corners = np.array(
            [image.TransformContinuousIndexToPhysicalPoint(c) for c in product(*[(-0.5, n - 0.5) for n in size])]
        )
        spans = ", ".join(f"{a} {lo:.1f}..{hi:.1f}" for a, lo, hi in zip("xyz", corners.min(0), corners.max(0)))
        given = (
            f"voxel index {_fmt(spec.point)} = world {_fmt(np.round(world, 2))} mm"
            if coords == "voxel"
            else f"{_fmt(world)} mm"
        )
        raise DataError(
            f"{item}: centre {given} from {spec.where} is outside the volume, which spans {spans} mm (world, LPS); "
            "check the centre, the x,y,z order and --coords world|voxel"
        )
    return world  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ predict


def member_columns(header: Any) -> list[str]:
    """``trial_<n>`` per member (``member_<i>`` without a trial number), made unique."""
    names: list[str] = []
    for i, entry in enumerate(header.members if header else []):
        trial = entry.model.trial
        name = f"trial_{trial}" if trial is not None else f"member_{i}"
        names.append(name if name not in names else f"{name}_member_{i}")
    return names


def stem(item: str) -> str:
    name = Path(item).name or "input"
    for suffix in (".nii.gz", *VOLUME_SUFFIXES, ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "input"
    return name


def _save_crop(folder: Path, number: int, item: str, crop: np.ndarray) -> Path:
    path = folder / f"{number:04d}-{stem(item)}.npy"
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:  # np.save(name) would append .npy to the temp name
        np.save(handle, crop)
    return path


def _check_hu(array: np.ndarray, item: str, notes: list[str]) -> None:
    low, high = float(array.min()), float(array.max())
    if low > _LUNG_HU:
        notes.append(
            f"{item}: values span {low:g}..{high:g} with no voxel below {_LUNG_HU:g}; the networks expect "
            "Hounsfield units (lung near -850 HU), not normalised intensities"
        )


def resolve_inputs(
    ensemble_file: Path, inputs: Sequence[str], centre: str | None, centres_csv: Path | None, coords: str
) -> tuple[dict[str, str], dict[str, list[CentreSpec]], list[str]]:
    """(kind of each input, centres of each volume, notes): every flag, path and centre checked
    before any file is read."""
    if coords not in COORDS:
        raise ConfigError(f"--coords {coords!r}: choose world (mm, patient LPS) or voxel (continuous i,j,k index)")
    kinds = {item: input_kind(Path(item)) for item in inputs}
    notes: list[str] = []
    centres = assign_centres(inputs, kinds, centre, centres_csv, notes)
    if not Path(ensemble_file).is_file():
        raise DataError(f"{ensemble_file}: no such ensemble file; pass a file written by `nasopt export`")
    return kinds, centres, notes


def predict(
    ensemble_file: Path,
    inputs: Sequence[str],
    *,
    centre: str | None = None,
    centres_csv: Path | None = None,
    coords: str = "world",
    save_crops: Path | None = None,
) -> PredictResult:
    """One :class:`Row` per crop and per nodule centre in each volume, in input order.

    Flags, paths and centres are checked before any file is read; the ensemble is loaded once
    the first input has been read and its centres checked, so bad input fails before torch loads.
    """
    if save_crops is not None and save_crops.exists() and not save_crops.is_dir():
        raise ConfigError(f"--save-crops {save_crops}: a file, not a folder; pass a folder for the crops")
    kinds, centres, notes = resolve_inputs(ensemble_file, inputs, centre, centres_csv, coords)

    ensemble: Ensemble | None = None
    result = PredictResult([], notes=notes, crops_saved=save_crops is not None)
    for item in inputs:
        loaded = load_input(item, kinds[item], centres.get(item, []), coords)  # type: ignore[arg-type]
        if ensemble is None:  # imports torch: after the first input proved readable
            from nasopt.ensemble.module import load_ensemble

            ensemble = load_ensemble(ensemble_file)
            result.members = member_columns(ensemble.header)
            result.threshold = ensemble.threshold
        cut = cut_crops(loaded, ensemble.input_size, notes)
        probs, member_probs = ensemble.predict(np.stack([c.crop.astype(np.float32) for c in cut]))
        for c, p, pm in zip(cut, probs, member_probs):
            crop_file = _save_crop(save_crops, len(result.rows), item, c.crop) if save_crops is not None else None
            members = tuple(float(v) for v in pm)
            decision = int(p >= ensemble.threshold)
            result.rows.append(Row(item, c.centre, c.edge_padded, float(p), decision, members, crop_file))
    return result


@dataclass
class Loaded:
    """One input, read: a crop (``array``) or a volume (``image``) with its centres in world mm."""

    item: str
    array: np.ndarray | None = None
    image: Any = None
    worlds: list[Centre] = field(default_factory=list)


@dataclass(frozen=True)
class Cut:
    """One crop fed to the networks, and where it came from (``centre`` None for a .npy crop)."""

    crop: np.ndarray
    centre: Centre | None = None
    edge_padded: bool | None = None


def load_input(item: str, kind: str, centres: list[CentreSpec], coords: Coords) -> Loaded:
    """Read one input; a volume's centres are checked against it (world mm)."""
    path = Path(item)
    if kind == "npy":
        return Loaded(item, array=load_crop(path))
    image = load_volume(path)
    return Loaded(item, image=image, worlds=[world_centre(image, spec, coords, item) for spec in centres])


def cut_crops(loaded: Loaded, size: int, notes: list[str]) -> list[Cut]:
    """The ``size``³ crops of one input: the central cube of a .npy crop, or a 1 mm crop resampled
    around each centre of a volume (as the training data was cut)."""
    from nasopt.inference.core import center_crop

    if loaded.array is not None:
        if loaded.array.shape[0] < size:
            raise DataError(f"{loaded.item}: shape {loaded.array.shape}; {_crop_shape(size)}")
        crop = np.asarray(center_crop(loaded.array, size))
        _check_hu(crop, loaded.item, notes)
        return [Cut(crop)]
    cuts = []
    for world in loaded.worlds:
        crop, padded = crop_at_point(loaded.image, world, size)
        if padded:
            notes.append(
                f"{loaded.item}: the crop at {_fmt(np.round(world, 1))} mm reaches past the scanned volume; "
                f"padded with air ({AIR_HU:g} HU)"
            )
        cuts.append(Cut(crop, world, padded))
    return cuts


# ------------------------------------------------------------------------------------- output


def _prob(p: float) -> str:
    return format(p, ".9g")  # 9 significant digits: a member's float32 probability exactly


def csv_text(result: PredictResult) -> str:
    """The result as CSV: one row per nodule, centre in world mm (empty for crops)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        centre = [f"{v:.3f}" for v in row.centre] if row.centre is not None else ["", "", ""]
        padded = "" if row.edge_padded is None else str(row.edge_padded).lower()
        extra = [str(row.crop_file)] if result.crops_saved else []
        # repr: the shortest text that reads back as the same float64, so the CSV decides as the ensemble did
        probs = [repr(row.prob), row.malignant, *map(_prob, row.member_probs)]
        writer.writerow([row.input, *centre, padded, *probs, *extra])
    return buffer.getvalue()


def write_csv(result: PredictResult, path: Path) -> Path:
    """Write :func:`csv_text` to ``path`` atomically."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        handle.write(csv_text(result))
    return path


def result_table(result: PredictResult, title: str) -> Any:  # -> rich.table.Table
    """A short terminal table of the result."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title=escape(title))
    for name, justify in (("input", "left"), ("centre (mm)", "right"), ("prob_malignant", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column(f"malignant (>= {result.threshold:.3f})" if result.threshold is not None else "malignant")
    for name in result.members:
        table.add_column(name, justify="right")
    table.add_column("edge padded")
    for row in result.rows:
        centre = "-" if row.centre is None else ", ".join(f"{v:.1f}" for v in row.centre)
        padded = "-" if row.edge_padded is None else ("yes" if row.edge_padded else "no")
        decision = "yes" if row.malignant else "no"
        table.add_row(
            Text(row.input), centre, f"{row.prob:.3f}", decision, *(f"{p:.3f}" for p in row.member_probs), padded
        )
    return table
