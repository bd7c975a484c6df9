"""Real abdominal CT and MR sample studies: the test scans shipped in the TotalSegmentator sdist on PyPI.

Source: the source distribution of ``totalsegmentator==2.18.0`` (Apache-2.0), fetched from the Python
package registry once, checked against its pinned SHA-256 and cached OUTSIDE the repository (default
``~/.cache/medsam-agent/``, or ``$MEDSAM_AGENT_CACHE``; the fetch, cache and reorientation code is
:mod:`lib.data.sdist_cache`, shared with :mod:`lib.data.real_lesions`). Only four of its files are kept:

- ``tests/reference_files/example_ct_sm.nii.gz`` + ``example_seg.nii.gz``: an abdominal CT (HU, non-contrast:
  aorta ~42 HU) of (I, J, K) = (122, 101, 30) voxels at 3 mm isotropic, and the ``total`` task's multi-label
  output on that very image (``update_test_files.sh`` in the sdist: ``TotalSegmentator -i example_ct_sm.nii.gz
  -o example_seg.nii.gz -bs --ml``);
- ``tests/reference_files/example_mr_sm.nii.gz`` + ``example_seg_mr.nii.gz``: an abdominal MR (arbitrary units,
  T1-like: liver brighter than spleen) of (117, 91, 20) voxels at 3 mm, and the ``total_mr`` task's output.

THE LABELS ARE A MODEL'S OUTPUT (TotalSegmentator), NOT AN EXPERT'S: good enough to exercise and compare
methods on real anatomy and real image statistics, not a clinical ground truth.

Class ids -> our label names: :data:`CT_CLASS_IDS` (task ``total``) and :data:`MR_CLASS_IDS` (task
``total_mr``), taken from ``totalsegmentator/map_to_binary.py`` (``class_map``) of the same sdist and checked
against it on every fetch, and checked against the images (``tests/data/test_real_samples.py``): mean HU of
liver 45 > spleen 33 (non-contrast CT), gallbladder ~2 HU, lungs ~-750 HU; ``kidney_left`` and the spleen
lie at large ``i`` (patient-left, +x in LPS) in both studies.

Label VALUES are :data:`LABELS`: the phantoms' values (``lib.data.phantoms.LABELS``) for the names they
share, so phantoms and real studies live in one datastore with one label set, and new names at new values.
Structures with fewer than :data:`MIN_VOXELS` voxels in a study are dropped from that study (e.g. the
adrenal glands, 86-184 voxels); structures outside the abdomen (lungs, ribs, vertebrae, muscles) are not
kept at all.

Arrays follow the project's convention (``lib.data.io``): ``(K, J, I)`` = (slice, row, column). Both studies
are reoriented (a lossless flip, no resampling) to an identity direction in SimpleITK's LPS frame, like the
phantoms: ``i`` grows toward the patient's LEFT, ``j`` toward POSTERIOR, ``k`` toward SUPERIOR, so an axial
slice displays radiologically (liver on the image's left). The CT is stored RAS-flipped in the sdist (LPS
direction diag(-1, -1, 1)); the MR already has the identity direction.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lib.data import sdist_cache
from lib.data.io import Volume, save_label_like
from lib.data.phantoms import LABELS as PHANTOM_LABELS
from lib.data.sdist_cache import CACHE_ENV as CACHE_ENV
from lib.data.sdist_cache import MANIFEST as MANIFEST
from lib.data.sdist_cache import RealSamplesUnavailable as RealSamplesUnavailable
from lib.data.sdist_cache import cache_root as cache_root
from lib.data.sdist_cache import label_on_image_grid as label_on_image_grid
from lib.data.sdist_cache import same_grid as _same_grid  # noqa: F401 - used by the tests

SDIST_NAME = "totalsegmentator-2.18.0.tar.gz"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/c3/53/7d654d2ec3fcb801ae54d318b0ffc18021aed528bf4e4df0753caf0c8a73/"
    + SDIST_NAME
)
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
SDIST_BYTES = 38_049_988
#: folder inside the cache that holds the extracted files (one per pinned sdist, so a new pin never mixes)
CACHE_SUBDIR = "totalsegmentator-2.18.0"
FETCH_COMMAND = "python scripts/fetch_real_samples.py"

_PREFIX = "totalsegmentator-2.18.0/"
_REFERENCE = _PREFIX + "tests/reference_files/"
#: the sdist member that defines TotalSegmentator's class ids (``class_map[task][id] = name``)
CLASS_MAP_MEMBER = _PREFIX + "totalsegmentator/map_to_binary.py"
#: cached file name -> sdist member
MEMBERS: dict[str, str] = {
    name: _REFERENCE + name
    for name in ("example_ct_sm.nii.gz", "example_seg.nii.gz", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz")
}

#: label value -> name of the one label set shared by the phantoms and the real studies (0 = background).
#: 1-6 are the phantoms' (lesion, 5, has no voxels in the real studies); 7+ exist in the real studies only.
LABELS: dict[int, str] = {
    **PHANTOM_LABELS,
    7: "stomach",
    8: "gallbladder",
    9: "aorta",
    10: "inferior_vena_cava",
    11: "portal_vein_and_splenic_vein",
    12: "duodenum",
    13: "colon",
    14: "small_bowel",
}
LABEL_VALUES: dict[str, int] = {name: value for value, name in LABELS.items()}

#: TotalSegmentator ``total`` class id -> our label name (ids from map_to_binary.class_map["total"])
CT_CLASS_IDS: dict[int, str] = {
    5: "liver", 1: "spleen", 3: "kidney_left", 2: "kidney_right", 7: "pancreas", 6: "stomach", 4: "gallbladder",
    52: "aorta", 63: "inferior_vena_cava", 64: "portal_vein_and_splenic_vein", 19: "duodenum", 20: "colon",
    18: "small_bowel",
}  # fmt: skip
#: TotalSegmentator ``total_mr`` class id -> our label name (ids from map_to_binary.class_map["total_mr"])
MR_CLASS_IDS: dict[int, str] = {
    5: "liver", 1: "spleen", 3: "kidney_left", 2: "kidney_right", 7: "pancreas", 6: "stomach", 4: "gallbladder",
    23: "aorta", 24: "inferior_vena_cava", 25: "portal_vein_and_splenic_vein", 14: "duodenum", 15: "colon",
    13: "small_bowel",
}  # fmt: skip
#: a structure with fewer voxels than this in a study is dropped from it (27 mm³ voxels: < 5.4 ml)
MIN_VOXELS = 200


@dataclass(frozen=True)
class RealSample:
    """One real study: which cached files hold it and how its class ids map to :data:`LABELS` names."""

    name: str  # study (and datastore image) id, e.g. "real_ct_001"
    modality: str  # "CT" or "MR"
    image_file: str  # cached file name (see MEMBERS)
    label_file: str
    task: str  # TotalSegmentator task whose class ids the label file uses
    class_ids: Mapping[int, str]
    description: str


SAMPLES: dict[str, RealSample] = {
    s.name: s
    for s in (
        RealSample("real_ct_001", "CT", "example_ct_sm.nii.gz", "example_seg.nii.gz", "total", CT_CLASS_IDS,
                   "abdominal CT, non-contrast, 3 mm isotropic (TotalSegmentator example_ct_sm)"),
        RealSample("real_mr_001", "MR", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "total_mr", MR_CLASS_IDS,
                   "abdominal MR, T1-like, 3 mm isotropic (TotalSegmentator example_mr_sm)"),
    )
}


def class_map_from_source(source: str) -> dict[str, dict[int, str]]:
    """``class_map`` (task -> {id: name}) of TotalSegmentator's ``map_to_binary.py``, read without running it.

    Only the first top-level ``class_map = {...}`` literal is read (later lines derive other tasks from it).
    """
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "class_map" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError("no `class_map = {...}` literal in map_to_binary.py")


def check_class_ids(class_map: Mapping[str, Mapping[int, str]]) -> None:
    """Raise ValueError when a class id we use does not carry our label's name in TotalSegmentator's map."""
    wrong = [
        f"{s.task}[{ts_id}] is {class_map.get(s.task, {}).get(ts_id)!r}, expected {name!r}"
        for s in SAMPLES.values()
        for ts_id, name in s.class_ids.items()
        if class_map.get(s.task, {}).get(ts_id) != name
    ]
    if wrong:
        raise ValueError("TotalSegmentator class ids differ from the pinned map: " + "; ".join(wrong))


def _check_sdist(read: Callable[[str], bytes]) -> None:
    """The sdist's own class map must give our class ids our names (checked on every fetch)."""
    check_class_ids(class_map_from_source(read(CLASS_MAP_MEMBER).decode("utf-8")))


#: the pinned archive and the four files kept from it (fetch/cache logic: lib.data.sdist_cache)
SDIST = sdist_cache.PinnedSdist(
    title="totalsegmentator 2.18.0", url=SDIST_URL, sha256=SDIST_SHA256, n_bytes=SDIST_BYTES,
    cache_subdir=CACHE_SUBDIR, members=MEMBERS, what="real sample studies", fetch_command=FETCH_COMMAND,
    log_tag="[real-samples]", labels_are="TotalSegmentator's output (a model), not expert annotations",
    extra_members=(CLASS_MAP_MEMBER,), check=_check_sdist,
)


#: folder of the four extracted files and ``manifest.json``; the cache functions of :mod:`lib.data.sdist_cache` bound
#: to :data:`SDIST`. ``fetch`` returns at once when cached (no network), else reads ``sdist=`` (a local copy) or
#: downloads the 38 MB archive, checks its SHA-256 and the class ids against its ``map_to_binary.py``, and keeps only
#: the ~0.8 MB of extracted files; it raises :class:`RealSamplesUnavailable` saying what to run.
samples_dir = SDIST.folder
is_cached = SDIST.is_cached
unavailable_message = SDIST.unavailable_message
require = SDIST.require
fetch = SDIST.fetch


def map_class_ids(seg: np.ndarray, class_ids: Mapping[int, str], min_voxels: int = MIN_VOXELS) -> np.ndarray:
    """TotalSegmentator class ids -> :data:`LABELS` values; unmapped ids and structures with fewer than
    ``min_voxels`` voxels become 0. Same shape as ``seg``, uint8."""
    lut = np.zeros(max(int(seg.max()), max(class_ids)) + 1, dtype=np.uint8)
    for ts_id, name in class_ids.items():
        lut[ts_id] = LABEL_VALUES[name]
    out = lut[seg.astype(np.int64)]
    counts = np.bincount(out.ravel(), minlength=len(LABELS) + 1)
    small = [v for v in range(1, len(counts)) if 0 < counts[v] < min_voxels]
    if small:
        out[np.isin(out, small)] = 0
    return out


def load_sample(name: str, cache: str | Path | None = None, min_voxels: int = MIN_VOXELS) -> tuple[Volume, np.ndarray]:
    """One real study from the cache, in the project's conventions.

    Args:
        name: a key of :data:`SAMPLES` ("real_ct_001", "real_mr_001").
        cache: cache folder (see :func:`cache_root`).
        min_voxels: structures smaller than this are dropped.

    Returns:
        ``(image, label)``: ``image.array`` int16 ``(K, J, I)`` (CT in HU, MR in the file's units) with an
        identity LPS direction (``i`` -> patient-left, ``j`` -> posterior, ``k`` -> superior), spacing in mm;
        ``label`` uint8 ``(K, J, I)`` on the same grid with :data:`LABELS` values.

    Raises:
        RealSamplesUnavailable: not cached (the message says what to run).
        KeyError: unknown study name.
    """
    sample = SAMPLES[name]
    folder = require(cache)
    image, seg = sdist_cache.read_study(folder / sample.image_file, folder / sample.label_file, sample.modality)
    return image, map_class_ids(seg, sample.class_ids, min_voxels)


def write_sample(name: str, image_path: str | Path, label_path: str | Path,
                 cache: str | Path | None = None) -> tuple[Volume, np.ndarray]:
    """Write one study's image (compressed NIfTI/NRRD, int16) and label map (same geometry); returns them."""
    image, label = load_sample(name, cache)
    sdist_cache.write_study(image, label, image_path, label_path)
    return image, label


def labels_json(values) -> dict[str, str]:
    """MSD ``labels`` for the given label values: {"0": "background", "1": "liver", ...} in value order."""
    return {"0": "background", **{str(v): LABELS[v] for v in sorted(set(values)) if v}}


def write_msd_dataset(out: str | Path, cache: str | Path | None = None) -> Path:
    """A standalone MSD-style folder of just the real studies, for benchmarks::

        out/dataset.json
        out/imagesTr/real_ct_001.nii.gz   out/labelsTr/real_ct_001.nii.gz   ("training": the CT)
        out/imagesTs/real_mr_001.nii.gz   out/labelsTs/real_mr_001.nii.gz   ("test": the MR, held out)

    ``labels`` lists the label values present in either study (values as in :data:`LABELS`, so the lesion's 5
    is absent). Returns ``out``.
    """
    out = Path(out)
    entries, present = {"training": [], "test": []}, set()
    for split, name, sub in (("training", "real_ct_001", "Tr"), ("test", "real_mr_001", "Ts")):
        file = f"{name}.nii.gz"
        _, label = write_sample(name, out / f"images{sub}" / file, out / f"labels{sub}" / file, cache)
        present |= set(np.unique(label).tolist())
        entries[split].append({"image": f"images{sub}/{file}", "label": f"labels{sub}/{file}",
                               "modality": SAMPLES[name].modality})
    spec = {
        "name": "MedSAM-Agent real abdomen samples",
        "description": (
            "The real abdominal CT (training) and MR (test) shipped as test scans in the totalsegmentator 2.18.0 "
            "sdist on PyPI, reoriented to an identity LPS direction. LABELS ARE TOTALSEGMENTATOR'S OUTPUT (a "
            "model), NOT EXPERT ANNOTATIONS. Label values are shared with the synthetic phantoms."
        ),
        "reference": f"{SDIST_URL} (sha256 {SDIST_SHA256}); built by lib/data/real_samples.py",
        "licence": "Apache-2.0 (the totalsegmentator sdist)",
        "tensorImageSize": "3D",
        "modality": "mixed",
        "labels": labels_json(present),
        "numTraining": len(entries["training"]),
        "numTest": len(entries["test"]),
        **entries,
    }
    return sdist_cache.write_dataset_json(out, spec)


def write_adaptation_dataset(out: str | Path, train: str, test: str, n_slabs: int = 4,
                             cache: str | Path | None = None) -> Path:
    """MSD folder for adapting a segmenter on one real study and testing it on the other::

        out/imagesTr/<train>_slab<s>.nii.gz + out/labelsTr/...   "training": ``train`` cut along k into
                                                                  ``n_slabs`` contiguous slabs
        out/imagesTs/<test>.nii.gz + out/labelsTs/...             "test": the whole ``test`` study

    Fine-tuning (``lib.learning.segmenter.finetune``) splits by case and needs at least two; the slabs make one
    study several cases, so one slab validates (early stopping) while the others train, and no slice of the
    test study is ever seen. Slabs keep their physical position (origin of their first slice). ``labels``
    lists the values present in either study. Returns ``out``.
    """
    if train == test:
        raise ValueError("adapt on one study and test on the other")
    if n_slabs < 2:
        raise ValueError(f"n_slabs must be >= 2 (one slab validates), got {n_slabs}")
    out = Path(out)
    image, label = load_sample(train, cache)
    present = set(np.unique(label).tolist())
    training = []
    for s, ks in enumerate(np.array_split(np.arange(image.array.shape[0]), n_slabs)):
        k0, k1 = int(ks[0]), int(ks[-1]) + 1
        sub = image.image[:, :, k0:k1]  # SimpleITK slicing keeps each voxel's physical position
        vol = Volume(array=image.array[k0:k1], image=sub, modality=image.modality)
        file = f"{train}_slab{s}.nii.gz"
        (out / "imagesTr").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sub, str(out / "imagesTr" / file), useCompression=True)
        save_label_like(label[k0:k1], vol, out / "labelsTr" / file)
        training.append({"image": f"imagesTr/{file}", "label": f"labelsTr/{file}", "modality": image.modality,
                         "slices": [k0, k1]})
    file = f"{test}.nii.gz"
    _, test_label = write_sample(test, out / "imagesTs" / file, out / "labelsTs" / file, cache)
    present |= set(np.unique(test_label).tolist())
    spec = {
        "name": f"MedSAM-Agent real samples: adapt on {train}, test on {test}",
        "description": (
            f"{train} in {n_slabs} contiguous slabs along k (training; fine-tuning holds one out for validation), "
            f"{test} whole (test). LABELS ARE TOTALSEGMENTATOR'S OUTPUT (a model), NOT EXPERT ANNOTATIONS."
        ),
        "reference": f"{SDIST_URL} (sha256 {SDIST_SHA256}); lib.data.real_samples.write_adaptation_dataset",
        "licence": "Apache-2.0 (the totalsegmentator sdist)",
        "tensorImageSize": "3D",
        "modality": "mixed" if SAMPLES[train].modality != SAMPLES[test].modality else SAMPLES[train].modality,
        "labels": labels_json(present),
        "numTraining": len(training),
        "numTest": 1,
        "training": training,
        "test": [{"image": f"imagesTs/{file}", "label": f"labelsTs/{file}", "modality": SAMPLES[test].modality}],
    }
    return sdist_cache.write_dataset_json(out, spec)
