"""Image I/O: 2D/3D medical images in, integer label maps with the same geometry out.

Array convention (the whole project's): a 3D volume is held in SimpleITK order ``(K, J, I)`` =
(slice, row, column), so ``array[k, j, i]`` is the voxel with file index ``(i, j, k)`` — the IJK that
3D Slicer shows. A 2D gray image is ``(H, W)`` = ``(J, I)``; a 2D colour image is ``(H, W, 3)`` uint8.
Pixel ``(x, y)`` is ``(column, row)`` = ``(i, j)``.

Geometry (origin in mm, spacing in mm, direction cosines; all in SimpleITK's LPS physical frame and in
``(x, y, z)`` = ``(i, j, k)`` order) stays on the SimpleITK reference image, so a label written with
:func:`save_label_like` overlays the source exactly in any viewer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: File name endings :func:`load_image` accepts (a folder is read as a DICOM series).
SUPPORTED_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".dcm")
#: File name endings :func:`save_label_like` can write.
LABEL_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".png")

_SUPPORTED_DIMS = "2D gray (H, W), 2D colour (H, W, 3) and 3D (K, J, I) scalar images"
_MR_ALIASES = {"MR", "MRI", "T1", "T1W", "T1GD", "T1CE", "T2", "T2W", "FLAIR", "ADC", "DWI", "PD"}

# CT stores air at about -1000 HU and anything denser than soft tissue above +100 HU; MR and photographs
# are non-negative, so "something well below zero and something above soft tissue" separates them.
_CT_MIN_HU = -500.0
_CT_MAX_HU = 100.0


class ImageLoadError(ValueError):
    """An image could not be read; the message says which file, why, and what to do about it."""


@dataclass
class Volume:
    """An image's pixels plus the geometry needed to write results back.

    Attributes:
        array: pixel data. 3D: ``(K, J, I)`` (slice, row, column), scalar. 2D gray: ``(H, W)``.
            2D colour: ``(H, W, 3)`` uint8 (alpha dropped). Values as stored in the file (HU for CT).
        image: the SimpleITK image the array came from; carries origin/spacing/direction (mm, LPS,
            ``(x, y, z)`` order). Its pixels are not kept in sync with ``array``.
        path: the file or DICOM folder read, or None for in-memory volumes.
        modality: "CT", "MR", "unknown", or another explicit name (e.g. "PET").
    """

    array: np.ndarray
    image: sitk.Image
    path: Path | None = None
    modality: str = "unknown"

    def __post_init__(self) -> None:
        a = np.asarray(self.array)
        if a.ndim == 3 and a.shape[-1] == 3 and self.is_rgb:
            expected = (a.shape[0], a.shape[1])
        elif a.ndim in (2, 3):
            expected = a.shape
        else:
            raise ValueError(f"Volume array must be 2D or 3D ({_SUPPORTED_DIMS}), got shape {a.shape}")
        if tuple(reversed(self.image.GetSize())) != tuple(expected):
            raise ValueError(
                f"Volume array shape {a.shape} does not match the reference image size "
                f"{self.image.GetSize()} (SimpleITK size is (x, y[, z]); the array must be its reverse)"
            )

    @property
    def is_rgb(self) -> bool:
        """True for a 2D colour image ``(H, W, 3)`` (an RGBA file's alpha channel is dropped on load)."""
        return self.image.GetDimension() == 2 and self.image.GetNumberOfComponentsPerPixel() in (3, 4)

    @property
    def is_3d(self) -> bool:
        """True for a ``(K, J, I)`` volume (including one with a single slice)."""
        return self.image.GetDimension() == 3

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``(K, J, I)`` for 3D, ``(H, W)`` for 2D (colour channel excluded)."""
        return tuple(reversed(self.image.GetSize()))

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm in array axis order (``(K, J, I)`` or ``(H, W)``)."""
        return tuple(reversed(self.image.GetSpacing()))

    @property
    def num_slices(self) -> int:
        """Number of slices along axis 0 (1 for a 2D image)."""
        return self.spatial_shape[0] if self.is_3d else 1


def normalize_modality(name: str | None) -> str | None:
    """Canonical modality name: "CT", "MR" for MR sequence names (MSD uses "MRI", "T2", "FLAIR"...).

    Returns None for None/empty, "unknown"/"mixed" in lower case (they are not modalities); other names
    are returned stripped and upper-cased ("PET", "US").
    """
    if name is None or not str(name).strip():
        return None
    n = str(name).strip().upper()
    if n == "CT":
        return "CT"
    if n in _MR_ALIASES:
        return "MR"
    if n in ("UNKNOWN", "MIXED"):
        return n.lower()
    return n


def guess_modality(array: np.ndarray) -> str:
    """Return "CT" when the value range looks like Hounsfield units (min <= -500, max > 100), else "unknown".

    MR cannot be told from arbitrary-unit photographs or PET by intensities alone, so it is only ever
    reported when the file (DICOM Modality tag) or the caller says so.
    """
    if array.size == 0 or not np.issubdtype(array.dtype, np.number):
        return "unknown"
    lo, hi = float(np.min(array)), float(np.max(array))
    return "CT" if lo <= _CT_MIN_HU and hi > _CT_MAX_HU else "unknown"


def _ext(path: Path) -> str:
    name = path.name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def _dicom_modality(reader_or_file: str) -> str | None:
    """Modality tag (0008|0060) of one DICOM file, or None when absent/unreadable."""
    try:
        r = sitk.ImageFileReader()
        r.SetFileName(reader_or_file)
        r.ReadImageInformation()
        if r.HasMetaDataKey("0008|0060"):
            return normalize_modality(r.GetMetaData("0008|0060"))
    except RuntimeError:
        return None
    return None


def _read_dicom_series(folder: Path) -> tuple[sitk.Image, str | None]:
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as e:
        raise ImageLoadError(f"cannot scan DICOM folder {folder}: {e}") from e
    if not series:
        raise ImageLoadError(
            f"{folder} is a folder but holds no readable DICOM series; pass a folder of .dcm slices "
            f"or an image file ({', '.join(SUPPORTED_EXTENSIONS)})"
        )
    if len(series) > 1:
        # Several series in one folder: the first one SimpleITK lists is not necessarily the one meant.
        raise ImageLoadError(
            f"{folder} holds {len(series)} DICOM series ({', '.join(series)}); put each series in its own folder"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ImageLoadError(f"DICOM series in {folder} could not be read (corrupted or incomplete?): {e}") from e
    return image, _dicom_modality(files[0])


def _to_array(image: sitk.Image, path: Path) -> np.ndarray:
    dim, comps = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    if dim not in (2, 3):
        raise ImageLoadError(
            f"{path} is a {dim}D image (size {image.GetSize()}); supported are {_SUPPORTED_DIMS}. "
            "Split it into 3D volumes (e.g. one per time point or channel) first."
        )
    array = sitk.GetArrayFromImage(image)
    if comps == 1:
        return array
    if dim == 2 and comps in (3, 4):
        return np.ascontiguousarray(array[..., :3]).astype(np.uint8, copy=False)
    raise ImageLoadError(
        f"{path} is a {dim}D image with {comps} components per pixel; supported are {_SUPPORTED_DIMS}. "
        "Save each channel as its own scalar image."
    )


def load_image(path: str | Path, modality: str | None = None) -> Volume:
    """Read a 2D or 3D image: .nii(.gz), .nrrd/.nhdr, .mha/.mhd, .png/.jpg, one .dcm, or a DICOM folder.

    Args:
        path: image file, or a folder holding exactly one DICOM series.
        modality: "CT", "MR", ... when known; otherwise taken from the DICOM Modality tag or guessed
            from the intensity range (see :func:`guess_modality`).

    Returns:
        A :class:`Volume`; ``array`` is ``(K, J, I)`` for 3D, ``(H, W)`` or ``(H, W, 3)`` uint8 for 2D.
        A single DICOM file usually reads as a 3D volume with one slice (its z position is geometry).

    Raises:
        ImageLoadError: missing, empty, unreadable or unsupported file, or unsupported dimensionality.
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"image not found: {p} (check the path; relative paths resolve from {Path.cwd()})")
    file_modality: str | None = None
    if p.is_dir():
        image, file_modality = _read_dicom_series(p)
    else:
        ext = _ext(p)
        if ext not in SUPPORTED_EXTENSIONS:
            raise ImageLoadError(
                f"unsupported image type {ext or '(no extension)'!r} for {p}; "
                f"supported: {', '.join(SUPPORTED_EXTENSIONS)} or a DICOM series folder"
            )
        if p.stat().st_size == 0:
            raise ImageLoadError(f"image file is empty (0 bytes): {p}; re-export or re-copy it")
        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reader error"
            raise ImageLoadError(f"cannot read {p} as {ext} (corrupted or not really a {ext} file?): {first}") from e
        if ext == ".dcm":
            file_modality = _dicom_modality(str(p))
    array = _to_array(image, p)
    chosen = normalize_modality(modality) or file_modality
    if chosen is None:
        chosen = "unknown" if array.ndim == 3 and image.GetDimension() == 2 else guess_modality(array)
    return Volume(array=array, image=image, path=p, modality=chosen)


def volume_from_array(
    array: np.ndarray,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    modality: str | None = None,
    rgb: bool = False,
) -> Volume:
    """Wrap an in-memory array as a :class:`Volume` (phantoms, tests).

    Args:
        array: ``(K, J, I)`` or ``(H, W)`` scalar, or ``(H, W, 3)`` uint8 colour.
        spacing: voxel size in mm in ARRAY order (``(K, J, I)`` / ``(H, W)``); default 1 mm.
        origin: physical position (mm, LPS) of voxel 0 in SimpleITK ``(x, y[, z])`` order.
        direction: row-major direction cosine matrix in SimpleITK order (9 or 4 numbers).
        modality: as for :func:`load_image`; guessed from the intensities when None.
        rgb: True when ``array`` is a 2D colour image ``(H, W, 3)`` (a 3D volume can also end in 3).
    """
    a = np.asarray(array)
    if a.ndim not in (2, 3):
        raise ValueError(f"array must be {_SUPPORTED_DIMS}, got shape {a.shape}")
    if rgb:
        if a.ndim != 3 or a.shape[-1] != 3:
            raise ValueError(f"rgb=True needs an (H, W, 3) array, got shape {a.shape}")
        a = a.astype(np.uint8, copy=False)
    image = sitk.GetImageFromArray(a, isVector=rgb)
    nd = image.GetDimension()
    if spacing is not None:
        if len(spacing) != nd:
            raise ValueError(f"spacing needs {nd} values in array order, got {tuple(spacing)}")
        image.SetSpacing([float(s) for s in reversed(spacing)])
    if origin is not None:
        image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in direction])
    mod = normalize_modality(modality) or ("unknown" if rgb else guess_modality(a))
    return Volume(array=a, image=image, path=None, modality=mod)


def _label_array(label: np.ndarray, ref: Volume) -> np.ndarray:
    lab = np.asarray(label)
    if lab.shape != ref.spatial_shape:
        raise ValueError(
            f"label shape {lab.shape} does not match the reference image's spatial shape {ref.spatial_shape}"
            + (" (colour references take an (H, W) label)" if ref.is_rgb else "")
        )
    if lab.dtype == bool:
        return lab.astype(np.uint8)
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.issubdtype(lab.dtype, np.floating) or not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise ValueError("label must hold whole numbers (class ids); threshold or argmax probabilities first")
    if lab.size and lab.min() < 0:
        raise ValueError(f"label values must be >= 0, found {lab.min()}")
    top = int(lab.max()) if lab.size else 0
    if top > np.iinfo(np.uint16).max:
        raise ValueError(f"label value {top} does not fit in uint16 (max 65535)")
    return lab.astype(np.uint8 if top < 256 else np.uint16)


def result_extension(vol: Volume) -> str:
    """The input's own format when it can hold a label (as MONAI Label's writer does), else .nii.gz."""
    name = str(vol.path or "").lower()
    for ext in (".nii.gz", ".nii", ".nrrd", ".png"):
        if name.endswith(ext):
            return ext
    return ".nii.gz"


def save_label_like(label: np.ndarray, ref: Volume, path: str | Path) -> Path:
    """Write an integer label map with exactly the reference's geometry (origin, spacing, direction).

    Args:
        label: class ids, shape ``ref.spatial_shape`` (``(K, J, I)`` or ``(H, W)``; an ``(H, W)`` label for
            a colour reference). bool, int or whole-number float; written as uint8 if max < 256 else uint16.
        ref: the image the label belongs to.
        path: output file; the format follows the extension (.nii.gz, .nii, .nrrd, .png — PNG for 2D only).

    Returns:
        The written path. Parent folders are created.
    """
    out = Path(path)
    name = out.name.lower()
    ext = next((e for e in LABEL_EXTENSIONS if name.endswith(e)), None)
    if ext is None:
        raise ValueError(f"cannot write a label as {out.name!r}; use one of {', '.join(LABEL_EXTENSIONS)}")
    lab = _label_array(label, ref)
    if ext == ".png" and lab.ndim != 2:
        raise ValueError(f"PNG labels must be 2D, got shape {lab.shape}; write 3D labels as .nii.gz or .nrrd")
    image = sitk.GetImageFromArray(lab)
    # CopyInformation copies origin/spacing/direction only (size must match, pixel type may differ).
    image.CopyInformation(ref.image)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(out), useCompression=ext in (".nii.gz", ".nrrd"))
    return out


def get_slice(vol: Volume, index: int | None, axis: int = 0) -> np.ndarray:
    """One 2D slice of a volume, as stored (no reorientation, no copy).

    Args:
        vol: the volume.
        index: slice number along ``axis`` (0 <= index < size). For a 2D image it must be 0 or None.
        axis: 0 = K (axial for usual CT: returns ``(J, I)``), 1 = J (returns ``(K, I)``), 2 = I (``(K, J)``).

    Returns:
        ``(H, W)`` raw values (``(H, W, 3)`` for a colour 2D image).
    """
    if not vol.is_3d:
        if index not in (0, None):
            raise IndexError(f"{vol.path or 'image'} is 2D: the only slice index is 0 (or None), got {index}")
        return vol.array
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0 (K), 1 (J) or 2 (I) for a (K, J, I) volume, got {axis}")
    n = vol.array.shape[axis]
    if index is None or not 0 <= int(index) < n:
        raise IndexError(
            f"slice index {index} out of range for axis {axis} of {vol.path or 'volume'} with shape "
            f"{vol.array.shape}: valid indices are 0..{n - 1}"
        )
    key = [slice(None)] * 3
    key[axis] = int(index)
    return vol.array[tuple(key)]


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints and archives are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
