#!/usr/bin/env python
"""Write the sample studies as DICOM series and upload them to a DICOMweb server (STOW-RS), once.

Every 3D CT/MR image of ``--studies`` (its ``dataset.json``: the phantoms, and the real CT/MR when
``make_sample_studies.py --real`` added them) becomes one patient / study / series in ``--out/<name>/``
(``lib.data.dicom``: CT in HU through the rescale tags, MR; the geometry of the NIfTI/NRRD file, deterministic
UIDs). Series the server already holds completely are not sent again, so a second run only checks. The
SeriesInstanceUIDs (MONAI Label's image ids over DICOMweb) are listed in ``--out/series.json``.

Examples::

    ./scripts/orthanc.sh start
    python scripts/upload_dicom_studies.py --studies sample-data/studies --url http://127.0.0.1:8042/dicom-web
    python scripts/upload_dicom_studies.py --transfer-syntax jpeg2000 --only real_ct_001   # as many PACS store it

Exit status: 0 = all there, 2 = the server could not be reached or refused an upload (the message says which).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_URL = "http://127.0.0.1:8042/dicom-web"


def series_count(client, series_uid: str) -> int:
    """Instances the server holds for the series (0 when it does not know it)."""
    found = client.search_for_series(search_filters={"SeriesInstanceUID": series_uid},
                                     fields=["NumberOfSeriesRelatedInstances"])
    for s in found:
        if s.get("0020000E", {}).get("Value") == [series_uid]:
            return int((s.get("00201209", {}).get("Value") or [0])[0])
    return 0


def upload(client, folder: Path) -> int:
    """STOW-RS every .dcm file of ``folder`` (in batches); returns how many were sent."""
    import pydicom

    files = sorted(folder.glob("*.dcm"))
    for start in range(0, len(files), 64):
        client.store_instances([pydicom.dcmread(f) for f in files[start:start + 64]])
    return len(files)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=Path, default=Path("sample-data/studies"),
                   help="MSD-style studies folder with dataset.json (default: sample-data/studies)")
    p.add_argument("--out", type=Path, default=None, help="DICOM output folder (default: <studies>/../dicom)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"DICOMweb root (default: {DEFAULT_URL})")
    p.add_argument("--transfer-syntax", choices=("explicit", "jpeg2000"), default="explicit",
                   help="explicit VR little endian (default) or lossless JPEG 2000; the series get their own UIDs")
    p.add_argument("--only", default="", help="comma-separated image names (e.g. real_ct_001,real_mr_001)")
    p.add_argument("--write-only", action="store_true", help="write the DICOM files, upload nothing")
    args = p.parse_args(argv)

    import requests

    from lib.data.dicom import write_studies

    if not (args.studies / "dataset.json").is_file():
        print(f"[dicom] no {args.studies / 'dataset.json'}: build the sample studies first "
              "(python scripts/make_sample_studies.py --out sample-data --real)", file=sys.stderr)
        return 2
    out = args.out or args.studies.parent / "dicom"
    only = [n for n in args.only.split(",") if n]
    written = write_studies(args.studies, out, transfer_syntax=args.transfer_syntax, only=only)
    manifest_path = out / "series.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for w in written:
        manifest[w.folder.name] = {"name": w.name, "modality": w.modality, "transfer_syntax": args.transfer_syntax,
                                   "StudyInstanceUID": w.study_uid, "SeriesInstanceUID": w.series_uid,
                                   "instances": w.n_files, "folder": str(w.folder)}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    if args.write_only:
        print(f"[dicom] wrote {len(written)} series to {out} (not uploaded); ids in {manifest_path}")
        return 0

    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(args.url)
    sent = 0
    try:
        for w in written:
            if series_count(client, w.series_uid) >= w.n_files:
                continue
            sent += upload(client, w.folder)
            print(f"[dicom] uploaded {w.folder.name} ({w.modality}, {w.n_files} instances): "
                  f"SeriesInstanceUID {w.series_uid}")
    except requests.ConnectionError as e:
        print(f"[dicom] cannot reach the DICOMweb server at {args.url} ({type(e).__name__}); start it "
              "(./scripts/orthanc.sh start) or pass --url", file=sys.stderr)
        return 2
    except requests.HTTPError as e:
        print(f"[dicom] the DICOMweb server at {args.url} refused a request: {e}", file=sys.stderr)
        return 2
    print(f"[dicom] {len(written)} series on {args.url} ({sent} instances sent now); ids in {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
