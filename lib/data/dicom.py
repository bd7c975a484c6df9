"""Write a 3D volume as a DICOM series (one file per slice) whose geometry a DICOM reader gives back exactly.

What a PACS holds: CT (CT Image Storage, HU stored as unsigned integers with ``RescaleIntercept`` /
``RescaleSlope`` / ``RescaleType HU``) and MR (MR Image Storage). Geometry comes from the SimpleITK image of the
:class:`~lib.data.io.Volume` (LPS, like DICOM): ``ImageOrientationPatient`` = the direction's first two columns
(i then j), ``ImagePositionPatient`` of slice ``k`` = origin + ``k`` x slice spacing x the third column,
``PixelSpacing`` = (row spacing, column spacing) = (spacing j, spacing i). A reader that sorts the slices along
the normal of the orientation (GDCM, SimpleITK, OHIF/cornerstone) then rebuilds the very same ``(K, J, I)``
array, origin, spacing and direction: no flips, no offsets. A left-handed direction (the third column against
the cross product of the first two) cannot be written that way and is refused with what to do.

UIDs are deterministic (derived from the ``uid_key`` names), so writing and uploading the same study twice gives
the same study, series and instances. ``transfer_syntax="jpeg2000"`` writes lossless JPEG 2000 (what many PACS
store), encoded with Pillow's OpenJPEG.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from lib.data.io import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
TRANSFER_SYNTAXES = {"explicit": ExplicitVRLittleEndian, "jpeg2000": JPEG2000Lossless}
#: modalities this writer makes image series for
MODALITIES = ("CT", "MR")


def uid_for(*key: str) -> str:
    """A deterministic UID for ``key``: ``2.25.<128-bit integer of its hash>`` (UUID-derived form, no registered
    root needed); the same names always give the same UID."""
    digest = hashlib.sha256("\x1f".join(("medsam-agent", *key)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@dataclass(frozen=True)
class SeriesInfo:
    """Who and what a written series is; the UIDs follow from ``uid_key`` unless given."""

    patient_id: str
    study_description: str = "MedSAM-Agent sample study"
    series_description: str = ""
    patient_name: str = ""
    uid_key: str = ""
    study_uid: str = ""
    series_uid: str = ""
    series_number: int = 1

    def uids(self) -> tuple[str, str, str]:
        """(StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID)."""
        key = self.uid_key or self.patient_id
        return (self.study_uid or uid_for(key, "study"), self.series_uid or uid_for(key, "series"),
                uid_for(key, "frame-of-reference"))


def _check_geometry(vol: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not vol.is_3d or vol.is_rgb:
        raise ValueError(f"a DICOM series needs a 3D scalar volume, got spatial shape {vol.spatial_shape}")
    d = np.asarray(vol.image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(vol.image.GetSpacing(), dtype=float)  # (i, j, k)
    origin = np.asarray(vol.image.GetOrigin(), dtype=float)
    if np.dot(np.cross(d[:, 0], d[:, 1]), d[:, 2]) < 0:
        raise ValueError(
            "the volume's direction is left-handed (its slice axis points against row x column): DICOM readers "
            "would stack the slices the other way round. Flip the slice axis first (reverse array axis 0 and move "
            "the origin to the last slice), e.g. with SimpleITK's DICOMOrient or Flip")
    return d, spacing, origin


def _stored_values(array: np.ndarray, modality: str) -> tuple[np.ndarray, float]:
    """(uint16 stored values, rescale intercept): stored + intercept gives back ``array`` exactly."""
    a = np.asarray(array)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError("the writer stores whole numbers (CT in HU, MR as integers); round or rescale first")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    intercept = min(-1024.0, lo) if modality == "CT" else min(0.0, lo)
    if hi - intercept > 65535:
        raise ValueError(f"values {lo:g}..{hi:g} do not fit 16 bits after the rescale intercept {intercept:g}")
    return np.rint(a - intercept).astype(np.uint16), intercept


def _window(array: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "CT":
        return 40.0, 400.0
    lo, hi = np.percentile(array, [0.5, 99.5]) if array.size else (0.0, 1.0)
    return float((lo + hi) / 2), float(max(hi - lo, 1.0))


def _encode_jpeg2000(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # lossless (reversible 5/3 wavelet), a bare J2K codestream as DICOM encapsulates it
    Image.fromarray(pixels).save(buf, format="JPEG2000", no_jp2=True, irreversible=False)
    return buf.getvalue()


def write_series(vol: Volume, out_dir: str | Path, info: SeriesInfo, modality: str | None = None,
                 transfer_syntax: str = "explicit", when: _dt.datetime | None = None) -> list[Path]:
    """Write ``vol`` as a DICOM series, one ``<instance number>.dcm`` per slice, into ``out_dir``.

    Args:
        vol: a 3D scalar volume; CT in HU, MR as integers.
        out_dir: created if needed; files of an earlier write are overwritten.
        info: patient/study/series names and UIDs.
        modality: "CT" or "MR" (default: the volume's).
        transfer_syntax: "explicit" (Explicit VR Little Endian) or "jpeg2000" (lossless JPEG 2000).
        when: study/series date and time (default: a fixed date, so a rewrite is byte-identical).

    Returns:
        The files written, slice 0 first.

    Raises:
        ValueError: not a 3D scalar volume, left-handed direction, unsupported modality or transfer syntax,
            values that do not fit 16 bits.
    """
    modality = (modality or vol.modality or "").upper()
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r}: the writer makes {' or '.join(MODALITIES)} image series")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax {transfer_syntax!r}: one of {sorted(TRANSFER_SYNTAXES)}")
    d, spacing, origin = _check_geometry(vol)
    stored, intercept = _stored_values(vol.array, modality)
    center, width = _window(vol.array, modality)
    study_uid, series_uid, for_uid = info.uids()
    when = when or _dt.datetime(2026, 1, 1, 12, 0, 0)
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    ts = TRANSFER_SYNTAXES[transfer_syntax]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_k, n_j, n_i = stored.shape
    orientation = [*d[:, 0], *d[:, 1]]
    files = []
    for k in range(n_k):
        sop_uid = uid_for(info.uid_key or info.patient_id, series_uid, "instance", str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ts
        ds = FileDataset(None, Dataset(), file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer = "MedSAM-Agent"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = info.study_description
        ds.SeriesDescription = info.series_description or f"{modality} {info.patient_id}"
        ds.PatientName = info.patient_name or info.patient_id
        ds.PatientID = info.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.StudyID = "1"
        ds.SeriesNumber = info.series_number
        ds.InstanceNumber = k + 1
        ds.PositionReferenceIndicator = ""
        position = origin + k * spacing[2] * d[:, 2]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.SliceLocation = _ds(float(np.dot(position, np.cross(d[:, 0], d[:, 1]))))
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (row spacing, column spacing)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = n_j, n_i
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.WindowCenter, ds.WindowWidth = _ds(center), _ds(width)
        if modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(intercept), "1", "HU"
            ds.KVP = "120"
        else:
            if intercept:
                ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), "1"
            ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "3D"
        pixels = np.ascontiguousarray(stored[k])
        if ts == ExplicitVRLittleEndian:
            ds.PixelData = pixels.astype("<u2").tobytes()
            ds.is_little_endian, ds.is_implicit_VR = True, False
        else:
            ds.PixelData = encapsulate([_encode_jpeg2000(pixels)])
            ds["PixelData"].VR = "OB"
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.LossyImageCompression = "00"
        path = out / f"{k + 1:04d}.dcm"
        ds.save_as(path, write_like_original=False)
        files.append(path)
    (out / ".complete").write_text(f"{n_k} slices, {transfer_syntax}\n")
    return files


def _ds(value: float) -> str:
    """A decimal string (DICOM DS, at most 16 characters) holding ``value`` as exactly as it fits."""
    v = float(value)
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    for digits in range(15, 5, -1):
        s = f"{v:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{v:.6g}"


def read_series_uids(folder: str | Path) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of the DICOM series written in ``folder``."""
    first = sorted(Path(folder).glob("*.dcm"))
    if not first:
        raise FileNotFoundError(f"no .dcm files in {folder}")
    ds = pydicom.dcmread(first[0], stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def rotation(angles_deg: Sequence[float]) -> tuple[float, ...]:
    """A right-handed direction matrix (row-major, 9 numbers): rotations about x, then y, then z (degrees).

    For test and sample volumes with a non-identity orientation (an oblique MR)."""
    ax, ay, az = np.radians(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return tuple(float(v) for v in (rz @ ry @ rx).ravel())


@dataclass(frozen=True)
class WrittenSeries:
    """One image of a studies folder written as a DICOM series."""

    name: str
    folder: Path
    modality: str
    study_uid: str
    series_uid: str
    n_files: int


def write_studies(studies: str | Path, out: str | Path, transfer_syntax: str = "explicit",
                  only: Sequence[str] = ()) -> list[WrittenSeries]:
    """Write every 3D CT/MR image listed in ``studies/dataset.json`` (training and test) as a DICOM series in
    ``out/<image name>/``: one patient and one study per image, the series described by the image name. An image
    whose series folder is already complete is not rewritten (the UIDs are deterministic).

    Args:
        studies: an MSD-style studies folder (``make_sample_studies.py`` writes one).
        out: where the series folders go.
        transfer_syntax: "explicit" or "jpeg2000" (lossless); part of the UIDs, so both can live in one PACS.
        only: image names (without extension) to write; default all.
    """
    import json

    from lib.data.io import load_image

    studies, out = Path(studies), Path(out)
    spec = json.loads((studies / "dataset.json").read_text(encoding="utf-8"))
    written = []
    for entry in [*spec.get("training", []), *spec.get("test", [])]:
        file = Path(entry["image"]).name
        name = file.split(".")[0]
        modality = str(entry.get("modality") or spec.get("modality") or "").upper()
        if (only and name not in only) or modality not in MODALITIES:
            continue
        tag = "" if transfer_syntax == "explicit" else f"-{transfer_syntax}"
        key = f"{name}{tag}"
        info = SeriesInfo(patient_id=name, uid_key=key, series_description=f"{name}{tag}",
                          study_description=f"MedSAM-Agent sample {modality}: {name}")
        folder = out / key
        if not _complete(folder):
            vol = load_image(studies / entry["image"], modality=modality)
            write_series(vol, folder, info, modality=modality, transfer_syntax=transfer_syntax)
        study_uid, series_uid, _ = info.uids()
        written.append(WrittenSeries(name=name, folder=folder, modality=modality, study_uid=study_uid,
                                     series_uid=series_uid, n_files=len(list(folder.glob("*.dcm")))))
    return written


def _complete(folder: Path) -> bool:
    """True when ``folder`` holds a series this writer finished (it writes ``.complete`` last)."""
    return (folder / ".complete").is_file()
