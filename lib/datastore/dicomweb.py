"""MONAI Label's DICOMweb datastore, made to hold up with a real PACS (Orthanc) and this app's label set.

What MONAI Label 0.8.5 does on its own, and what this adapter changes (docs/architecture.md, section 1):

- **Compressed series.** It asks for every series in the default transfer syntax (explicit VR little endian), so a
  server that cannot transcode what it stores (Debian's Orthanc 1.10 and JPEG 2000: "Cannot transcode image")
  answers 500. Here the series is asked for as stored (``transfer-syntax=*``) and decoded on our side by
  SimpleITK's GDCM (JPEG 2000, JPEG lossless / baseline, RLE). A series GDCM cannot decode is a 422 naming its
  transfer syntax; its half-downloaded cache is removed.
- **Which series are images.** Its listing searches one modality (``Modality=CT``). Here: CT and MR (``modalities``),
  so MR studies are listed and a SEG / SR / other series is never taken for an image.
- **Labels saved from a viewer** become DICOM SEG in the PACS (dcmqi's ``itkimage2segimage``, which must be on
  ``PATH``: the PyPI package ``dcmqi``; nothing is downloaded). The segments are named from this app's label set,
  and reading a SEG back maps each segment to its label VALUE by name (MONAI Label's reader returns segment
  numbers 1..n, so a SEG holding only kidney_left would train as liver) on the image's own grid.
- **Errors.** An unknown or non-image series is a 404 saying what it is; a PACS that does not answer is a 503
  naming its URL. Nothing in the PACS or in the local cache of labels is changed by a failed request.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import SimpleITK as sitk
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

#: ask for instances as the server stores them; we decode (GDCM) whatever it holds
STORED_SYNTAX = (("application/dicom", "*"),)
IMAGE_MODALITIES = ("CT", "MR")
#: how long the series listing is reused (seconds): a few requests in a row ask the PACS once
LIST_TTL_S = float(os.environ.get("MEDSAM_AGENT_DICOMWEB_LIST_TTL_S", "10"))
DCMQI_TOOL = "itkimage2segimage"


def ensure_dcmqi() -> str:
    """Path of dcmqi's ``itkimage2segimage`` (writes DICOM SEG), put on ``PATH`` when it sits next to this
    interpreter (a virtual environment that was not activated).

    Raises:
        RuntimeError: not installed; says how to install it (MONAI Label would download it from GitHub).
    """
    found = shutil.which(DCMQI_TOOL)
    if found:
        return found
    beside = Path(sys.executable).parent / DCMQI_TOOL
    if beside.is_file() and os.access(beside, os.X_OK):
        os.environ["PATH"] = f"{beside.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return str(beside)
    raise RuntimeError(f"{DCMQI_TOOL} (dcmqi) is not installed: it writes the DICOM SEG of saved labels. "
                       "Install the PyPI package `dcmqi` into the server's environment (requirements.txt has it; "
                       "./scripts/setup_env.sh installs it); this app does not download it")


class StoredSyntaxClient(DICOMwebClientX):
    """A DICOMweb client that retrieves series in their stored transfer syntax unless told otherwise, and gives
    up on a PACS that does not answer after one retry (dicomweb-client's default backs off for 30 s)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=200)

    def retrieve_series(self, study_instance_uid, series_instance_uid, media_types=None):
        return super().retrieve_series(study_instance_uid, series_instance_uid,
                                       media_types=media_types or STORED_SYNTAX)


def _unreachable(url: str, e: Exception) -> HTTPException:
    return HTTPException(status_code=503, detail=(
        f"the DICOMweb server {url} does not answer ({type(e).__name__}); start it (./scripts/orthanc.sh start) "
        "or check --studies; nothing was changed"))


class AgentDICOMwebDatastore(DICOMWebDatastore):
    """:class:`DICOMWebDatastore` with stored-syntax retrieval, CT+MR listing, label values kept through DICOM SEG
    and clear 4xx/5xx errors (module docstring)."""

    def __init__(self, url: str, labels: dict[str, int], cache_path: str | None = None,
                 modalities: tuple[str, ...] = IMAGE_MODALITIES, session=None) -> None:
        client = StoredSyntaxClient(url=url, session=session)
        self.labels = dict(labels)  # name -> value
        self.modalities = tuple(m.upper() for m in modalities)
        self._listed: tuple[float, list[str]] = (0.0, [])
        self._list_lock = threading.Lock()
        super().__init__(client=client, search_filter={"Modality": self.modalities[0]}, cache_path=cache_path,
                         fetch_by_frame=False, convert_to_nifti=True)

    # -- listing ------------------------------------------------------------------------------------------------
    def _search(self, **filters) -> list[dict]:
        try:
            return self._client.search_for_series(search_filters=filters)
        except requests.ConnectionError as e:
            raise _unreachable(self._client.base_url, e) from e

    def list_images(self) -> list[str]:
        """SeriesInstanceUIDs of the CT and MR series (cached for a few seconds)."""
        with self._list_lock:
            t, ids = self._listed
            if time.time() - t < LIST_TTL_S:
                return list(ids)
            found: list[str] = []
            for modality in self.modalities:
                found += [str(Dataset.from_json(s)["SeriesInstanceUID"].value) for s in self._search(Modality=modality)]
            self._listed = (time.time(), list(dict.fromkeys(found)))
            return list(self._listed[1])

    def describe_missing(self, image_id: str) -> str:
        """Why ``image_id`` is not an image of this datastore, for a 404."""
        found = [Dataset.from_json(s) for s in self._search(SeriesInstanceUID=image_id)]
        found = [s for s in found if str(s.get("SeriesInstanceUID", "")) == image_id]
        where = f"the DICOMweb server {self._client.base_url}"
        if not found:
            return (f"image {image_id!r} is not a series on {where}: pass a SeriesInstanceUID of a "
                    f"{'/'.join(self.modalities)} series (MONAI Label's DICOMweb image ids)")
        modality = str(found[0].get("Modality", "unknown"))
        return (f"series {image_id!r} on {where} is a {modality} series, not an image this app segments "
                f"({'/'.join(self.modalities)}); pick the image series it refers to")

    # -- images -------------------------------------------------------------------------------------------------
    def get_image_uri(self, image_id: str) -> str:
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        try:
            return super().get_image_uri(image_id)
        except HTTPException:
            raise
        except requests.ConnectionError as e:
            shutil.rmtree(image_dir, ignore_errors=True)
            raise _unreachable(self._client.base_url, e) from e
        except requests.HTTPError as e:
            shutil.rmtree(image_dir, ignore_errors=True)
            status = e.response.status_code if e.response is not None else 502
            if status == 404:
                raise HTTPException(status_code=404, detail=self.describe_missing(image_id)) from e
            raise HTTPException(status_code=502, detail=(
                f"the DICOMweb server {self._client.base_url} failed to send series {image_id!r} "
                f"(HTTP {status}: {e}); nothing was changed")) from e
        except (RuntimeError, IndexError) as e:
            syntax = _transfer_syntax(image_dir)
            shutil.rmtree(image_dir, ignore_errors=True)
            raise HTTPException(status_code=422, detail=(
                f"series {image_id!r} could not be read as an image volume (transfer syntax {syntax}): "
                f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}. Supported: uncompressed,"
                " JPEG 2000, JPEG lossless/baseline and RLE single-frame CT/MR slices of one orientation")) from e

    # -- labels -------------------------------------------------------------------------------------------------
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any],
                   label_id: str = "") -> str:
        """As MONAI Label (a final label goes to the PACS as DICOM SEG), with the segments named from the app's
        label set by their values (a client's names are kept when they are in the label set)."""
        if label_tag == DefaultLabelTag.FINAL and not str(label_filename).endswith(".bin"):
            label_info = dict(label_info or {})
            label_info["label_info"] = self._segment_info(label_filename, label_info.get("label_info"))
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def _segment_info(self, label_file: str, given) -> list[dict[str, Any]]:
        values = [int(v) for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))) if v > 0]
        by_value = {v: n for n, v in self.labels.items()}
        given = list(given or [])
        names = [g.get("name") for g in given if isinstance(g, dict)]
        if len(names) == len(values) and all(n in self.labels and self.labels[n] == v for n, v in zip(names, values)):
            return given
        unknown = [v for v in values if v not in by_value]
        if unknown:
            raise HTTPException(status_code=422, detail=(
                f"label values {unknown} are not in the app's label set {self.labels}; nothing was saved"))
        return [{"name": by_value[v], "idx": v} for v in values]

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """The final label of ``image_id`` from DICOM SEG series ``label_id``: values from the segment names, on the
        image's grid; converted once per SEG series and kept in the local cache."""
        if label_tag != DefaultLabelTag.FINAL or not image_id:
            return LocalDatastore.get_label_uri(self, label_id or image_id, label_tag)
        local = LocalDatastore.get_label_uri(self, image_id, label_tag)
        if local and os.path.exists(local) and \
                LocalDatastore.get_label_info(self, image_id, label_tag).get("SeriesInstanceUID") == label_id:
            return local
        seg_dir = os.path.realpath(os.path.join(self._datastore.label_path(label_tag), label_id))
        if not os.path.isdir(seg_dir) or not os.listdir(seg_dir):
            dicom_web_download_series(None, label_id, seg_dir, self._client, False)
        image = sitk.ReadImage(self.get_image_uri(image_id))
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, f"{image_id}.nii.gz")
            sitk.WriteImage(seg_to_label(seg_dir, image, self.labels), out, True)
            LocalDatastore.save_label(self, image_id, out, label_tag,
                                      {"SeriesInstanceUID": label_id, "source": "DICOM SEG"})
        return LocalDatastore.get_label_uri(self, image_id, label_tag)


def seg_to_label(seg_dir: str, image: sitk.Image, labels: dict[str, int]) -> sitk.Image:
    """A DICOM SEG (one file in ``seg_dir``) as a label map on ``image``'s grid, each segment written with the value
    its ``SegmentLabel`` has in ``labels`` (segments with other names are left out, with a warning)."""
    import pydicom
    import pydicom_seg

    file = next(p for p in sorted(Path(seg_dir).iterdir()) if p.is_file())
    dcm = pydicom.dcmread(str(file))
    result = pydicom_seg.SegmentReader().read(dcm)
    out = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    for number in result.available_segments:
        name = str(result.segment_infos[number].get("SegmentLabel", ""))
        if name not in labels:
            logger.warning("DICOM SEG %s: segment %d %r is not in the label set; left out", file.name, number, name)
            continue
        seg = result.segment_image(number)
        seg = sitk.Resample(seg, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        out[sitk.GetArrayViewFromImage(seg) > 0] = labels[name]
    label = sitk.GetImageFromArray(out)
    label.CopyInformation(image)
    return label


def _transfer_syntax(folder: str) -> str:
    import pydicom

    try:
        first = next(p for p in sorted(Path(folder).iterdir()) if p.is_file())
        return str(pydicom.dcmread(str(first), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except (StopIteration, OSError, AttributeError, pydicom.errors.InvalidDicomError):
        return "unknown"
