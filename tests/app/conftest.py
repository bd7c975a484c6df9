"""One Orthanc (DICOMweb) and one MONAI Label server on it, shared by the DICOMweb tests of this folder
(tests/app/test_dicomweb_*.py): Orthanc from the Debian packages, started by ``scripts/orthanc.sh`` on a free port
with its storage in a temporary folder; the real CT (plain and lossless JPEG 2000) and the real MR turned oblique
(a non-identity direction), written as DICOM and uploaded by ``scripts/upload_dicom_studies.py``.

Skipped, with the reason, when Orthanc or its DICOMweb plugin is not installed (``.ci/run`` installs them with apt
where it can) or the real samples are not cached."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: the oblique MR's direction: rotations about x, y, z in degrees (right-handed, non-identity)
OBLIQUE = (15.0, -10.0, 20.0)


def run(*cmd: str) -> str:
    r = subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A private Orthanc: ``.url`` (DICOMweb root), ``.port``, ``.storage``, ``.stop()``, ``.start()``."""
    if not (ORTHANC.is_file() and DICOMWEB_PLUGIN.is_file()):
        pytest.skip(f"Orthanc with its DICOMweb plugin is not installed ({ORTHANC}, {DICOMWEB_PLUGIN}): "
                    "apt-get install orthanc orthanc-dicomweb (.ci/run does it where apt is available)")
    from serverproc import free_port

    storage, port = str(tmp_path_factory.mktemp("orthanc")), str(free_port())
    script = str(ROOT / "scripts" / "orthanc.sh")
    pacs = SimpleNamespace(url=f"http://127.0.0.1:{port}/dicom-web", port=port, storage=storage,
                           start=lambda: run(script, "start", "--port", port, "--storage", storage),
                           stop=lambda: run(script, "stop", "--storage", storage))
    pacs.start()
    yield pacs
    pacs.stop()


@pytest.fixture(scope="session")
def dicomweb_studies(tmp_path_factory, real_only_studies, orthanc):
    """The studies uploaded to ``orthanc``: ``{"studies": folder of the NIfTI twins, "groundtruth": folder,
    "series": {name: SeriesInstanceUID}}`` with names real_ct_001, real_ct_001-jpeg2000, real_mr_oblique."""
    import SimpleITK as sitk

    from lib.data.dicom import rotation

    root = tmp_path_factory.mktemp("dicomweb-data")
    real = real_only_studies(root)  # real_ct_001 (labelled), real_mr_001 (ground truth outside the datastore)
    studies = root / "twins"
    (studies / "labels" / "final").mkdir(parents=True)
    shutil.copy(real / "real_ct_001.nii.gz", studies)
    shutil.copy(real / "labels" / "final" / "real_ct_001.nii.gz", studies / "labels" / "final")
    # the MR with an oblique direction: same voxels, rotated geometry (its ground truth rotated alike)
    for src, dst in ((real / "real_mr_001.nii.gz", studies / "real_mr_oblique.nii.gz"),
                     (real.parent / "groundtruth" / "real_mr_001.nii.gz", root / "real_mr_oblique_gt.nii.gz")):
        img = sitk.ReadImage(str(src))
        img.SetDirection(rotation(OBLIQUE))
        sitk.WriteImage(img, str(dst), True)
    spec = json.loads((real / "dataset.json").read_text())
    spec["training"] = [{"image": "real_ct_001.nii.gz", "label": "labels/final/real_ct_001.nii.gz", "modality": "CT"}]
    spec["test"] = [{"image": "real_mr_oblique.nii.gz", "label": "../real_mr_oblique_gt.nii.gz", "modality": "MR"}]
    (studies / "dataset.json").write_text(json.dumps(spec))
    upload = [sys.executable, str(ROOT / "scripts" / "upload_dicom_studies.py"), "--studies", str(studies),
              "--out", str(root / "dicom"), "--url", orthanc.url]
    run(*upload)
    run(*upload, "--transfer-syntax", "jpeg2000", "--only", "real_ct_001")
    manifest = json.loads((root / "dicom" / "series.json").read_text())
    return {"root": root, "studies": studies, "labels": {n: int(v) for v, n in spec["labels"].items() if int(v)},
            "series": {k: v["SeriesInstanceUID"] for k, v in manifest.items()}, "manifest": manifest,
            "mr_groundtruth": root / "real_mr_oblique_gt.nii.gz"}


@pytest.fixture(scope="session")
def dicomweb_server(tmp_path_factory, dicomweb_studies, orthanc):
    """The app served on ``orthanc`` (the DICOMweb datastore), the sample label set, the shipped demo policy;
    its DICOMweb cache in a temporary folder."""
    from serverproc import Server

    root = tmp_path_factory.mktemp("dicomweb-app")
    labels = json.dumps(dicomweb_studies["labels"])
    srv = Server(orthanc.url, conf={"labels": labels, "demo_policy": "true", "policy_dir": str(root / "policy"),
                                "threads": "1"},
                 log=root / "server.log",
                 env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(root / "cache"),
                      "MEDSAM_AGENT_DICOMWEB_LIST_TTL_S": "0",  # every request sees the PACS as it is now
                      # dcmqi's itkimage2segimage from the venv, also when the venv is not activated
                      "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}).wait()
    srv.root = root
    yield srv
    srv.stop()
