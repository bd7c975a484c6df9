"""Real LESION studies: the five tumour test cases shipped in the pyradiomics sdist on PyPI.

Source: the source distribution of ``pyradiomics==3.1.0`` (BSD-3-Clause, ``LICENSE.txt``: "Copyright 2017 Harvard
Medical School"), fetched from the Python package registry once, checked against its pinned SHA-256 and cached
OUTSIDE the repository (``<cache>/pyradiomics-3.1.0/``, cache = ``~/.cache/medsam-agent/`` or
``$MEDSAM_AGENT_CACHE``; fetch/cache/reorientation code: :mod:`lib.data.sdist_cache`, shared with
:mod:`lib.data.real_samples`). Only ten files are kept: ``data/<case>_image.nrrd`` and ``data/<case>_label.nrrd``
for the cases brain1, brain2, breast1, lung1, lung2.

PROVENANCE, as far as the sdist documents it: ``data/README.md`` calls them "the test cases and baseline used to
ensure consistent results from features implemented in PyRadiomics"; each ``_label.nrrd`` is a binary mask
(1 = the tumour, 0 = background) drawn on the image, i.e. a segmented tumour (region of interest) supplied as a
radiomics test case. The sdist says nothing about who drew the masks, how, or where the scans come from, so
neither does this module. Unlike :mod:`lib.data.real_samples` (a model's organ labels), these labels are tumour
masks drawn for these scans, but one mask per study, not a reviewed clinical ground truth.

Modality (not stated by the sdist; read from the intensities and checked by ``tests/data/test_real_lesions.py``):
lung1 and lung2 are CT (Hounsfield units, air at -1024); brain1, brain2 and breast1 have non-negative arbitrary
units (air at 0), recorded as "MR" (the app then normalises them by percentiles instead of a HU window).

The studies, as read (arrays ``(K, J, I)`` = (slice, row, column), spacing (x, y, z) in mm):

=========  ============  ==============  ========================  =========================  =============
case id    modality      shape (K,J,I)   spacing (mm)              tumour slices k (voxels)   stored dir.
=========  ============  ==============  ========================  =========================  =============
brain1     MR            (25, 256, 256)  0.78 x 0.78 x 6.5         11-17 (4137)               diag(1,-1,1)
brain2     MR            (23, 256, 256)  0.78 x 0.78 x 6.5         8-10 (453)                 diag(1,-1,1)
breast1    MR            (21, 120, 45)   0.66 x 0.66 x 2.1         8-10 (143)                 identity
lung1      CT            (48, 512, 512)  0.57 x 0.57 x 5.0         32-34 (837)                identity
lung2      CT            (61, 512, 512)  0.63 x 0.63 x 5.0         15-25 (24644)              identity
=========  ============  ==============  ========================  =========================  =============

Every label file has exactly its image's grid (size, spacing, origin, direction); :func:`load_lesion` refuses one
that does not. Both are reoriented (a lossless flip, no resampling) to an identity direction in SimpleITK's LPS
frame, like the phantoms: ``i`` grows toward the patient's LEFT, ``j`` toward POSTERIOR, ``k`` toward SUPERIOR
(the brains are stored with ``j`` toward ANTERIOR and are flipped along ``j``; no case is flipped along ``k``, so
the tumour slices above stay the same). The tumour becomes our ``lesion`` label value (:data:`LESION`, from
``lib.data.phantoms.LABELS``), so phantom lesions and real ones share one label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.data import sdist_cache
from lib.data.io import Volume
from lib.data.phantoms import LABELS as PHANTOM_LABELS
from lib.data.sdist_cache import RealSamplesUnavailable as RealSamplesUnavailable

SDIST_NAME = "pyradiomics-3.1.0.tar.gz"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
    + SDIST_NAME
)
SDIST_SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
SDIST_BYTES = 34_461_233
CACHE_SUBDIR = "pyradiomics-3.1.0"
FETCH_COMMAND = "python scripts/fetch_real_samples.py --lesions"
LICENCE = "BSD-3-Clause (pyradiomics-3.1.0/LICENSE.txt, Copyright 2017 Harvard Medical School)"

#: the sdist's case names, in dataset order
SOURCE_CASES = ("brain1", "brain2", "breast1", "lung1", "lung2")
#: cached file name -> sdist member
MEMBERS: dict[str, str] = {
    f"{case}_{kind}.nrrd": f"pyradiomics-3.1.0/data/{case}_{kind}.nrrd"
    for case in SOURCE_CASES
    for kind in ("image", "label")
}
#: the tumour's value in the sdist's label files
TUMOUR_VALUE = 1
#: our label value for it: the phantoms' "lesion"
LESION: int = next(v for v, name in PHANTOM_LABELS.items() if name == "lesion")
LABELS: dict[int, str] = {LESION: "lesion"}

SDIST = sdist_cache.PinnedSdist(
    title="pyradiomics 3.1.0", url=SDIST_URL, sha256=SDIST_SHA256, n_bytes=SDIST_BYTES, cache_subdir=CACHE_SUBDIR,
    members=MEMBERS, what="real lesion studies", fetch_command=FETCH_COMMAND, log_tag="[real-lesions]",
    labels_are="tumour masks shipped as pyradiomics test cases (label 1 = tumour); who drew them is not documented",
)


@dataclass(frozen=True)
class LesionCase:
    """One real tumour study: its id here, the sdist's case name, the modality read from its intensities."""

    case_id: str  # e.g. "real_lesion_lung1"
    source: str  # the sdist's name, e.g. "lung1"
    modality: str  # "CT" or "MR"
    description: str

    @property
    def image_file(self) -> str:
        return f"{self.source}_image.nrrd"

    @property
    def label_file(self) -> str:
        return f"{self.source}_label.nrrd"


CASES: dict[str, LesionCase] = {
    c.case_id: c
    for c in (
        LesionCase("real_lesion_brain1", "brain1", "MR", "brain MR, 0.78 mm in-plane, 6.5 mm slices"),
        LesionCase("real_lesion_brain2", "brain2", "MR", "brain MR, 0.78 mm in-plane, 6.5 mm slices"),
        LesionCase("real_lesion_breast1", "breast1", "MR", "breast MR crop, 0.66 mm in-plane, 2.1 mm slices"),
        LesionCase("real_lesion_lung1", "lung1", "CT", "chest CT (HU), 0.57 mm in-plane, 5 mm slices"),
        LesionCase("real_lesion_lung2", "lung2", "CT", "chest CT (HU), 0.63 mm in-plane, 5 mm slices"),
    )
}  # fmt: skip


#: folder of the ten extracted NRRD files and ``manifest.json``; the cache functions of :mod:`lib.data.sdist_cache`
#: bound to :data:`SDIST` (``fetch`` reads a local copy with ``sdist=``, else downloads 34 MB once; about 33 MB stay)
lesions_dir = SDIST.folder
is_cached = SDIST.is_cached
unavailable_message = SDIST.unavailable_message
require = SDIST.require
fetch = SDIST.fetch


def map_tumour(label: np.ndarray) -> np.ndarray:
    """The sdist's mask (0 / :data:`TUMOUR_VALUE`) -> uint8 with :data:`LESION` for the tumour, same shape.

    Raises ValueError on any other value (a changed label file must not be silently mapped)."""
    values = set(np.unique(label).tolist())
    if not values <= {0, TUMOUR_VALUE}:
        raise ValueError(f"tumour mask holds values {sorted(values)}; expected 0 and {TUMOUR_VALUE}")
    return np.where(label == TUMOUR_VALUE, LESION, 0).astype(np.uint8)


def load_lesion(case_id: str, cache: str | Path | None = None) -> tuple[Volume, np.ndarray]:
    """One real tumour study from the cache, in the project's conventions.

    Args:
        case_id: a key of :data:`CASES` ("real_lesion_lung1", ...).
        cache: cache folder (see :func:`lib.data.sdist_cache.cache_root`).

    Returns:
        ``(image, label)``: ``image.array`` int16 ``(K, J, I)`` (CT in HU, MR in the file's arbitrary units) with
        an identity LPS direction (``i`` -> patient-left, ``j`` -> posterior, ``k`` -> superior), spacing and
        origin in mm; ``label`` uint8 ``(K, J, I)`` on the same grid, :data:`LESION` on the drawn tumour, else 0.

    Raises:
        RealSamplesUnavailable: not cached (the message says what to run).
        KeyError: unknown case id.
        ValueError: the label file is not on the image's grid, or holds values other than 0 and 1.
    """
    case = CASES[case_id]
    folder = require(cache)
    image, mask = sdist_cache.read_study(folder / case.image_file, folder / case.label_file, case.modality,
                                         resample_label=False)
    return image, map_tumour(mask)


def write_msd_dataset(out: str | Path, cache: str | Path | None = None) -> Path:
    """A standalone MSD-style folder of the five tumour studies, all in split ``test`` (for benchmarks)::

        out/dataset.json
        out/imagesTs/real_lesion_brain1.nii.gz   out/labelsTs/real_lesion_brain1.nii.gz   ... (5 cases)

    Images int16 (NIfTI, identity LPS direction), labels uint8 with ``{"5": "lesion"}``; each entry records its
    modality. Returns ``out``.
    """
    out = Path(out)
    test = []
    for case in CASES.values():
        file = f"{case.case_id}.nii.gz"
        image, label = load_lesion(case.case_id, cache)
        sdist_cache.write_study(image, label, out / "imagesTs" / file, out / "labelsTs" / file)
        test.append({"image": f"imagesTs/{file}", "label": f"labelsTs/{file}", "modality": case.modality})
    spec = {
        "name": "MedSAM-Agent real lesions",
        "description": (
            "The five tumour test cases (brain1, brain2, breast1 MR; lung1, lung2 CT) shipped in the pyradiomics "
            "3.1.0 sdist on PyPI, reoriented to an identity LPS direction. Labels are the tumour masks shipped with "
            "them as radiomics test cases (who drew them is not documented), mapped to the phantoms' lesion value."
        ),
        "reference": f"{SDIST_URL} (sha256 {SDIST_SHA256}); built by lib/data/real_lesions.py",
        "licence": LICENCE,
        "tensorImageSize": "3D",
        "modality": "mixed",
        "labels": {"0": "background", **{str(v): name for v, name in LABELS.items()}},
        "numTraining": 0,
        "numTest": len(test),
        "training": [],
        "test": test,
    }
    return sdist_cache.write_dataset_json(out, spec)
