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

Label ids: lib.data.phantoms.LABELS. The same arguments always give identical label arrays.
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
    modality = "mixed" if n_ct and n_mr else ("CT" if n_ct else "MR")
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
        "labels": _labels_json(),
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (studies / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return len(training), len(test)


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
    args = p.parse_args(argv)
    if min(args.n_ct, args.n_mr, args.n_2d) < 0 or args.n_ct + args.n_mr < 1:
        p.error("counts must be >= 0 and --n-ct + --n-mr >= 1")
    out: Path = args.out
    if (out / "studies" / "dataset.json").exists() and not args.force:
        print(f"sample data already in {out}/studies (dataset.json exists); pass --force to regenerate")
        return 0
    for sub in ("studies", "groundtruth", "slices2d"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    t0 = time.perf_counter()
    n_lab, n_unlab = _write_studies(out, args.seed, args.n_ct, args.n_mr)
    n2d = _write_slices2d(out, args.seed, args.n_2d)
    print(
        f"wrote {args.n_ct} CT + {args.n_mr} MR studies ({n_lab} labelled, {n_unlab} unlabelled) to "
        f"{out / 'studies'} and {n2d} 2D slices to {out / 'slices2d'} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
