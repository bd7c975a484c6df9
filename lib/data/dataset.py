"""MSD-style dataset folders and the 2D slice samples the agent is trained and evaluated on.

A dataset is a folder with a ``dataset.json`` in the Medical Segmentation Decathlon layout::

    {"name": "...", "labels": {"0": "background", "1": "liver", ...},
     "modality": {"0": "CT"}            # or a plain string; per-entry "modality" overrides it
     "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}, ...],
     "test": [{"image": ..., "label": ...}, "./imagesTs/b.nii.gz", ...]}   # plain strings: no label

Paths are relative to the folder (absolute paths are allowed). Images may be 2D or 3D, in any format
:func:`lib.data.io.load_image` reads. 3D cases are cut into 2D slices along an axis of the ``(K, J, I)``
array; the slices keep the raw intensities (windowing happens later, per tool).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib.data.io import get_slice, load_image, normalize_modality

SPLITS = ("training", "test")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".dcm")
# Modality values that describe the whole dataset only loosely; the volume's own guess is better.
_VAGUE_MODALITIES = {None, "unknown", "mixed"}


class DatasetError(ValueError):
    """dataset.json is missing, malformed or points at files that are not there."""


def case_id_from_path(path: str | Path) -> str:
    """File name without its image extension (``a/ct_001.nii.gz`` -> ``ct_001``); a folder keeps its name."""
    name = Path(path).name
    low = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class Case:
    """One image and (optionally) its label map.

    Attributes:
        image_path: image file or DICOM folder.
        label_path: integer label map with the image's grid, or None when the case has no ground truth.
        case_id: unique id within the dataset (the image file name without extension).
        modality: per-case modality when dataset.json gives one, else None.
    """

    image_path: Path
    label_path: Path | None
    case_id: str
    modality: str | None = None

    def __post_init__(self) -> None:
        if not self.case_id:
            raise ValueError(f"case_id must be a non-empty string (image {self.image_path})")


@dataclass
class Dataset:
    """A parsed dataset.json.

    Attributes:
        root: folder holding dataset.json; relative paths resolve against it.
        labels: label value -> name, background (0) excluded.
        modality: dataset-wide modality ("CT", "MR", ...), or None when not given.
        training / test: cases of each split in file order.
    """

    root: Path
    labels: dict[int, str]
    modality: str | None = None
    name: str = ""
    description: str = ""
    training: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)

    @classmethod
    def from_dir(cls, root: str | Path, check_files: bool = True) -> Dataset:
        """Read ``root/dataset.json``; with ``check_files`` every referenced image and label must exist."""
        root = Path(root)
        spec_path = root / "dataset.json"
        if not spec_path.is_file():
            raise DatasetError(
                f"no dataset.json in {root}: a dataset folder needs an MSD-style dataset.json with 'labels' and "
                "'training'/'test' lists of {'image': relpath, 'label': relpath}"
            )
        try:
            spec = json.loads(spec_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{spec_path} is not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from e
        if not isinstance(spec, dict):
            raise DatasetError(f"{spec_path} must hold a JSON object, found {type(spec).__name__}")
        labels = _parse_labels(spec.get("labels"), spec_path)
        if not any(isinstance(spec.get(s), list) for s in SPLITS):
            raise DatasetError(f"{spec_path} has no 'training' or 'test' list of cases")
        ds = cls(
            root=root,
            labels=labels,
            modality=_parse_modality(spec.get("modality"), spec_path),
            name=str(spec.get("name", "")),
            description=str(spec.get("description", "")),
        )
        seen: dict[str, str] = {}
        missing: list[str] = []
        for split in SPLITS:
            entries = spec.get(split, [])
            if not isinstance(entries, list):
                raise DatasetError(f"{spec_path}: '{split}' must be a list, found {type(entries).__name__}")
            cases = [_parse_case(e, root, spec_path, split, n) for n, e in enumerate(entries)]
            for c in cases:
                if c.case_id in seen:
                    raise DatasetError(
                        f"{spec_path}: case id {c.case_id!r} is used twice ({seen[c.case_id]} and {c.image_path}); "
                        "image file names must be unique without their extension"
                    )
                seen[c.case_id] = str(c.image_path)
                if check_files:
                    missing += [str(p) for p in (c.image_path, c.label_path) if p is not None and not p.exists()]
            setattr(ds, split, cases)
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise DatasetError(
                f"{spec_path} references {len(missing)} missing file(s): {', '.join(missing[:5])}{more}; "
                "fix the paths (relative to the dataset folder) or remove those entries"
            )
        return ds

    def cases(self, split: str = "training") -> list[Case]:
        """Cases of ``split`` ("training" or "test")."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return list(getattr(self, split))

    def label_values(self, labels: Iterable[int | str] | None = None) -> list[int]:
        """Label values for names/values in ``labels`` (all foreground labels when None), sorted."""
        if labels is None:
            return sorted(self.labels)
        by_name = {n.lower(): v for v, n in self.labels.items()}
        out = set()
        for item in labels:
            if isinstance(item, str) and not item.strip().isdigit():
                v = by_name.get(item.strip().lower())
            else:
                v = int(item) if int(item) in self.labels else None
            if v is None:
                known = ", ".join(f"{k}={n}" for k, n in sorted(self.labels.items()))
                raise ValueError(f"unknown label {item!r}; this dataset has {known}")
            out.add(v)
        return sorted(out)


def _parse_labels(raw: object, spec_path: Path) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(
            f'{spec_path} needs a non-empty \'labels\' object mapping index to name, e.g. {{"1": "liver"}}'
        )
    labels: dict[int, str] = {}
    for k, v in raw.items():
        try:
            value = int(k)
        except (TypeError, ValueError):
            raise DatasetError(f'{spec_path}: label key {k!r} must be an integer index such as "1"') from None
        if value < 0 or not isinstance(v, str) or not v.strip():
            raise DatasetError(f"{spec_path}: label {k!r} -> {v!r} must map a non-negative index to a name")
        if value != 0:
            labels[value] = v.strip()
    if not labels:
        raise DatasetError(f"{spec_path}: 'labels' has no foreground label (only background)")
    return labels


def _parse_modality(raw: object, spec_path: Path) -> str | None:
    if raw is None or isinstance(raw, str):
        return normalize_modality(raw)
    if isinstance(raw, dict) and raw:
        # MSD lists one modality per input channel; single-channel datasets are the only ones used here.
        first = raw.get("0", next(iter(raw.values())))
        return normalize_modality(str(first))
    raise DatasetError(f"{spec_path}: 'modality' must be a string or an object like {{'0': 'CT'}}, got {raw!r}")


def _parse_case(entry: object, root: Path, spec_path: Path, split: str, n: int) -> Case:
    if isinstance(entry, str):
        image, label, modality = entry, None, None
    elif isinstance(entry, dict) and isinstance(entry.get("image"), str):
        image, label, modality = entry["image"], entry.get("label"), entry.get("modality")
        if label is not None and not isinstance(label, str):
            raise DatasetError(f"{spec_path}: {split}[{n}] 'label' must be a path string, got {label!r}")
    else:
        raise DatasetError(f"{spec_path}: {split}[{n}] must be an image path or {{'image': ..., 'label': ...}}")
    image_path = root / image
    return Case(
        image_path=image_path,
        label_path=root / label if label else None,
        case_id=case_id_from_path(image_path),
        modality=normalize_modality(modality),
    )


@dataclass(frozen=True)
class SliceSample:
    """One 2D target: a slice of a case and the ground-truth mask of one label on it.

    Attributes:
        case_id: the case the slice comes from.
        slice_index: index along the slicing axis of the ``(K, J, I)`` volume; None for a 2D image.
        label_value / label_name: the target.
        image: ``(H, W)`` raw intensities (HU for CT); ``(H, W, 3)`` uint8 for a colour 2D image.
        gt: ``(H, W)`` bool, True on the target.
        modality: "CT", "MR", "unknown", ...
        axis: the slicing axis (0 = K). For axis 1 the slice is ``(K, I)``, for axis 2 ``(K, J)``.
    """

    case_id: str
    slice_index: int | None
    label_value: int
    label_name: str
    image: np.ndarray
    gt: np.ndarray
    modality: str
    axis: int = 0

    def __post_init__(self) -> None:
        if self.gt.dtype != bool or self.gt.ndim != 2:
            raise ValueError(f"gt must be a 2D bool mask, got {self.gt.dtype} {self.gt.shape}")
        if self.image.shape[:2] != self.gt.shape:
            raise ValueError(f"image {self.image.shape} and gt {self.gt.shape} must share (H, W)")


def iter_slices(
    dataset: Dataset,
    split: str = "training",
    axis: int = 0,
    labels: Iterable[int | str] | None = None,
    min_area: int = 20,
    max_per_case: int | None = None,
) -> Iterator[SliceSample]:
    """Yield every (slice, label) pair whose label covers at least ``min_area`` pixels.

    Order is deterministic: cases in dataset.json order, then slice index ascending, then label value.
    With ``max_per_case`` a case contributes at most that many samples, evenly spaced over its list (so a
    cap keeps samples from the whole organ, not only its first slices). Cases without a label raise.
    """
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1 pixel, got {min_area}")
    if max_per_case is not None and max_per_case < 1:
        raise ValueError(f"max_per_case must be >= 1 or None, got {max_per_case}")
    values = dataset.label_values(labels)
    for case in dataset.cases(split):
        yield from _case_slices(dataset, case, axis, values, min_area, max_per_case)


def _case_slices(
    dataset: Dataset, case: Case, axis: int, values: Sequence[int], min_area: int, max_per_case: int | None
) -> Iterator[SliceSample]:
    if case.label_path is None:
        raise ValueError(f"case {case.case_id} ({case.image_path}) has no label; slices need ground truth")
    modality = case.modality or (dataset.modality if dataset.modality not in _VAGUE_MODALITIES else None)
    vol = load_image(case.image_path, modality=modality)
    lab_vol = load_image(case.label_path)
    lab = lab_vol.array
    if lab_vol.is_rgb or lab.shape != vol.spatial_shape:
        raise ValueError(
            f"label {case.label_path} has shape {lab.shape} but image {case.image_path} has {vol.spatial_shape}; "
            "a label must be a scalar map on the image's grid"
        )
    if not np.issubdtype(lab.dtype, np.integer):
        lab = np.rint(lab).astype(np.int64)  # float label files (common in NIfTI) hold whole numbers
    picks: list[tuple[int | None, int]] = []
    if vol.is_3d:
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2 for a (K, J, I) volume, got {axis}")
        other = tuple(a for a in range(3) if a != axis)
        areas = {v: (lab == v).sum(axis=other) for v in values}
        for idx in range(lab.shape[axis]):
            picks += [(idx, v) for v in values if areas[v][idx] >= min_area]
    else:
        picks = [(None, v) for v in values if int((lab == v).sum()) >= min_area]
    if max_per_case is not None and len(picks) > max_per_case:
        keep = np.unique(np.linspace(0, len(picks) - 1, max_per_case).round().astype(int))
        picks = [picks[i] for i in keep]
    for idx, v in picks:
        image = get_slice(vol, idx, axis=axis)
        gt = np.take(lab, idx, axis=axis) if idx is not None else lab
        yield SliceSample(
            case_id=case.case_id,
            slice_index=idx,
            label_value=v,
            label_name=dataset.labels[v],
            image=np.ascontiguousarray(image),
            gt=np.ascontiguousarray(gt == v),
            modality=vol.modality,
            axis=axis if idx is not None else 0,
        )


def split_cases(cases: Sequence[Case], val_fraction: float, seed: int = 0) -> tuple[list[Case], list[Case]]:
    """Split cases (never slices of one case) into (train, val), reproducibly for a seed.

    ``round(n * val_fraction)`` cases go to validation, at least one when ``val_fraction > 0`` and at
    least one always stays in training; both parts keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be unique to split by case")
    n = len(cases)
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [c for i, c in enumerate(cases) if i not in val_idx]
    val = [c for i, c in enumerate(cases) if i in val_idx]
    return train, val
