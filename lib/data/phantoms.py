"""Deterministic synthetic abdominal phantoms (CT in HU, T2-like MR) with organ labels.

Arrays are ``(K, J, I)`` = (slice, row, column) like every volume in the project. With an identity
direction in SimpleITK's LPS frame that means: ``i`` grows toward the patient's LEFT, ``j`` toward
POSTERIOR, ``k`` toward SUPERIOR. Displayed the radiological way (row 0 at the top, column 0 on the left),
the patient's right — and so the liver — is on the image's LEFT (small ``i``), the spleen and the left
kidney on the right, and the spine at the bottom (large ``j``). The phantom is deliberately asymmetric so
a flipped axis anywhere in a pipeline shows up as the liver on the wrong side.

Anatomy is drawn in normalised coordinates: ``x`` and ``y`` run from -1 to 1 across the in-plane field
of view (columns and rows), ``z`` from 0 (slice 0, inferior) to 1 (last slice, superior). Organs are
ellipsoids deformed by a smooth random displacement field shared by the whole body plus per-organ
smooth radial noise, so every seed gives different sizes, positions and outlines.

Deliberately hard targets (a single box prompt should not be perfect on them):
- pancreas (6): thin, curved, lobulated, 45 HU, touching bowel loops (35 HU) and vessels;
- lesion (5): irregular, only 10-18 HU darker than the liver (CT) on a liver with a smooth texture of
  the same order, on a few slices;
- kidneys (3, 4): bean-shaped (fat-filled hilum), bright cortex but medulla (~40 HU) as dark as the
  psoas and back muscles they touch; in a non-contrast ("native") CT the cortex is as dark as well;
- liver (1) has a left lobe crossing the midline and a low-contrast border with the abdominal wall;
  liver (1) and spleen (2) touch the stomach, whose wall has their intensity.
Half of the CT seeds are native (non-contrast) scans: vessels, kidneys, pancreas and bowel wall then
all lie within ~20 HU of each other and of muscle, as in real unenhanced abdominal CT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Label ids shared by both phantoms (0 is background). "left"/"right" are the PATIENT's sides.
LABELS: dict[int, str] = {
    1: "liver",
    2: "spleen",
    3: "kidney_left",
    4: "kidney_right",
    5: "lesion",
    6: "pancreas",
}

# Tissue codes: what each voxel is made of, before mapping to intensities.
AIR, SUBCUT_FAT, MUSCLE, VISCERAL_FAT, BONE_CORTEX, BONE_MARROW, CSF = range(7)
AORTA, IVC, LIVER, LIVER_VESSEL, LESION, SPLEEN, KIDNEY_CORTEX, KIDNEY_MEDULLA = range(7, 15)
SINUS_FAT, PANCREAS, BOWEL_WALL, BOWEL_GAS, BOWEL_FLUID, STOMACH_WALL = range(15, 21)
N_TISSUES = 21

# Mean intensity per tissue. CT: Hounsfield units, portal-venous-like contrast on vessels and renal
# cortex. MR: T2-weighted-like arbitrary units (fat and fluid bright, liver dark, lesion bright,
# flowing blood and cortical bone dark).
_CT_TABLE = {
    AIR: -1000, SUBCUT_FAT: -100, MUSCLE: 45, VISCERAL_FAT: -90, BONE_CORTEX: 800, BONE_MARROW: 300,
    CSF: 15, AORTA: 170, IVC: 120, LIVER: 60, LIVER_VESSEL: 110, LESION: 40, SPLEEN: 50,
    KIDNEY_CORTEX: 150, KIDNEY_MEDULLA: 40, SINUS_FAT: -60, PANCREAS: 45, BOWEL_WALL: 35,
    BOWEL_GAS: -900, BOWEL_FLUID: 15, STOMACH_WALL: 55,
}  # fmt: skip
# Non-contrast CT: only these differ from the portal-venous table (blood, renal cortex and enhancing
# walls fall back to unenhanced soft-tissue values, 30-50 HU).
_CT_NATIVE = {
    AORTA: 42, IVC: 40, LIVER_VESSEL: 42, SPLEEN: 46, KIDNEY_CORTEX: 34, KIDNEY_MEDULLA: 30, PANCREAS: 40,
    BOWEL_WALL: 36, STOMACH_WALL: 48,
}  # fmt: skip
#: CT contrast phases; ``ct_phantom(phase=None)`` draws one per seed.
CT_PHASES = ("portal", "native")
_MR_TABLE = {
    AIR: 0, SUBCUT_FAT: 750, MUSCLE: 180, VISCERAL_FAT: 700, BONE_CORTEX: 20, BONE_MARROW: 420,
    CSF: 950, AORTA: 40, IVC: 60, LIVER: 260, LIVER_VESSEL: 60, LESION: 700, SPLEEN: 430,
    KIDNEY_CORTEX: 380, KIDNEY_MEDULLA: 560, SINUS_FAT: 700, PANCREAS: 330, BOWEL_WALL: 300,
    BOWEL_GAS: 10, BOWEL_FLUID: 850, STOMACH_WALL: 330,
}  # fmt: skip


@dataclass(frozen=True)
class _Grid:
    """Normalised coordinates of every voxel; ``X``/``Y`` include the global smooth deformation."""

    shape: tuple[int, int, int]
    X: np.ndarray  # (K, J, I) float32, -1..1 across columns (+ deformation)
    Y: np.ndarray  # (K, J, I) float32, -1..1 across rows (+ deformation)
    Z: np.ndarray  # (K, 1, 1) float32, 0..1 from first to last slice

    @property
    def dz(self) -> float:
        """Normalised z distance between neighbouring slices."""
        return 1.0 / max(self.shape[0] - 1, 1)

    def bbox(self, cx: float, cy: float, cz: float, rxy: float, rz: float) -> tuple[slice, slice, slice]:
        """Index box holding everything within ``rxy`` (in-plane) and ``rz`` (z) of a centre."""
        k, j, i = self.shape
        pad = 0.12  # covers the global deformation (<= 0.05) and a few voxels of safety

        def span(c: float, r: float, n: int, to_index) -> slice:
            lo, hi = to_index(c - r - pad), to_index(c + r + pad)
            return slice(max(0, int(math.floor(lo))), min(n, int(math.ceil(hi)) + 1))

        return (
            span(cz, rz, k, lambda v: v * (k - 1)),
            span(cy, rxy, j, lambda v: (v + 1) * j / 2 - 0.5),
            span(cx, rxy, i, lambda v: (v + 1) * i / 2 - 0.5),
        )


def _interp_matrix(n: int, c: int) -> np.ndarray:
    """(n, c) weights that linearly interpolate c evenly spaced control values onto n samples."""
    pos = np.linspace(0, c - 1, n, dtype=np.float64) if n > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(int), 0, c - 2)
    w = pos - lo
    m = np.zeros((n, c), dtype=np.float32)
    m[np.arange(n), lo] = 1 - w
    m[np.arange(n), lo + 1] = w
    return m


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: tuple[float, ...]) -> np.ndarray:
    """Zero-mean, unit-std smooth random field of ``shape``; ``cell`` = correlation length in voxels per axis.

    White noise on a coarse control grid, Gaussian-smoothed, then linearly upsampled with one small
    matrix product per axis (a full-resolution Gaussian of white noise costs 10x more for the same look).
    """
    coarse = tuple(max(2, int(math.ceil(n / c)) + 1) for n, c in zip(shape, cell, strict=True))
    out = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma=0.7, mode="wrap")
    for axis, (n, c) in enumerate(zip(shape, coarse, strict=True)):
        out = np.moveaxis(np.tensordot(_interp_matrix(n, c), np.moveaxis(out, axis, 0), axes=1), 0, axis)
    out = np.ascontiguousarray(out, dtype=np.float32)
    std = float(out.std())
    return (out - out.mean()) / std if std > 1e-8 else out * 0


def _make_grid(rng: np.random.Generator, shape: tuple[int, int, int], amplitude: float) -> _Grid:
    k, j, i = shape
    x = ((np.arange(i, dtype=np.float32) - (i - 1) / 2) / (i / 2))[None, None, :]
    y = ((np.arange(j, dtype=np.float32) - (j - 1) / 2) / (j / 2))[None, :, None]
    z = (np.arange(k, dtype=np.float32) / max(k - 1, 1))[:, None, None]
    if k == 1:
        z = z + 0.5
    cell = (max(k / 2.5, 1.0), j / 3.0, i / 3.0)
    dx = amplitude * _smooth_noise(rng, shape, cell) / 2.5
    dy = amplitude * _smooth_noise(rng, shape, cell) / 2.5
    return _Grid(shape=shape, X=(x + dx).astype(np.float32), Y=(y + dy).astype(np.float32), Z=z)


def _blob(
    g: _Grid,
    rng: np.random.Generator,
    center: tuple[float, float, float],
    semi: tuple[float, float, float],
    angle: float = 0.0,
    rough: float = 0.0,
    rough_cell: float = 6.0,
) -> np.ndarray:
    """Normalised radius ``r`` of a deformed ellipsoid over the grid: inside where ``r < 1``.

    ``center``/``semi`` are ``(x, y, z)`` in normalised units (use ``semi[2] = inf`` for a column through
    every slice); ``angle`` rotates in-plane (radians); ``rough`` is the relative amplitude of smooth
    radial noise (0.1 gently wavy, 0.3 lobulated). Returns float32 ``(K, J, I)``, +inf outside the box.
    """
    cx, cy, cz = center
    ax, ay, az = semi
    rxy = max(ax, ay) * (1 + 2.5 * rough)
    rz = 2.0 if not math.isfinite(az) else az * (1 + 2.5 * rough)
    sl = g.bbox(cx, cy, cz if math.isfinite(az) else 0.5, rxy, rz)
    r = np.full(g.shape, np.inf, dtype=np.float32)
    X, Y, Z = g.X[sl], g.Y[sl], g.Z[sl[0]]
    if X.size == 0:
        return r
    c, s = math.cos(angle), math.sin(angle)
    u, v = (X - cx) * c + (Y - cy) * s, -(X - cx) * s + (Y - cy) * c
    f = (u / ax) ** 2 + (v / ay) ** 2
    if math.isfinite(az):
        f = f + ((Z - cz) / az) ** 2
    rr = np.sqrt(f)
    if rough > 0:
        cell = (max(2.0, az / g.dz / 1.5) if math.isfinite(az) else 4.0, rough_cell, rough_cell)
        rr = rr / np.clip(1 + rough * _smooth_noise(rng, X.shape, cell), 0.4, None)
    r[sl] = rr
    return r


def _tube(
    g: _Grid,
    rng: np.random.Generator,
    points: np.ndarray,
    radii: np.ndarray,
    rz: float,
    rough: float,
) -> np.ndarray:
    """Normalised radius of a tube along ``points`` ((N, 3) x, y, z) with in-plane ``radii`` (N,)."""
    lo, hi = points.min(0), points.max(0)
    c = (lo + hi) / 2
    sl = g.bbox(c[0], c[1], c[2], float(np.max(hi[:2] - lo[:2]) / 2 + radii.max()), float((hi[2] - lo[2]) / 2 + rz))
    r = np.full(g.shape, np.inf, dtype=np.float32)
    X, Y, Z = g.X[sl], g.Y[sl], np.broadcast_to(g.Z[sl[0]], g.X[sl].shape)
    best = np.full(X.shape, np.inf, dtype=np.float32)
    for (px, py, pz), rad in zip(points, radii, strict=True):
        d = ((X - px) / rad) ** 2 + ((Y - py) / rad) ** 2 + ((Z - pz) / rz) ** 2
        np.minimum(best, d, out=best)
    rr = np.sqrt(best)
    if rough > 0 and X.size:
        rr = rr / np.clip(1 + rough * _smooth_noise(rng, X.shape, (2.0, 4.0, 4.0)), 0.4, None)
    r[sl] = rr
    return r


class _Canvas:
    """Tissue and label maps painted structure by structure (later paint wins where allowed)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.tissue = np.full(shape, AIR, dtype=np.uint8)
        self.label = np.zeros(shape, dtype=np.uint8)

    def paint(self, mask: np.ndarray, tissue: int, label: int = 0) -> None:
        self.tissue[mask] = tissue
        self.label[mask] = label


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> _Canvas:
    """Draw one random abdomen; returns tissue codes and labels, ``(K, J, I)`` uint8 each."""
    if len(shape) != 3 or min(shape) < 1 or min(shape[1:]) < 32:
        raise ValueError(f"phantom shape must be (K, J, I) with K >= 1 and J, I >= 32, got {shape}")
    g = _make_grid(rng, shape, amplitude=_u(rng, 0.03, 0.05))
    cv = _Canvas(shape)
    inf = math.inf

    # Body wall: skin-fat shell, muscle ring, intra-abdominal fat; posterior side flatter (patient supine).
    bx, by = _u(rng, -0.03, 0.03), _u(rng, -0.02, 0.04)
    ax, ay = _u(rng, 0.82, 0.9), _u(rng, 0.6, 0.68)
    zscale = 1 + _u(rng, 0.02, 0.05) * np.sin(2 * np.pi * (g.Z * _u(rng, 0.5, 1.0) + _u(rng, 0, 1)))
    ay_field = np.where(g.Y > by, ay * 0.93, ay) * zscale
    ax_field = ax * zscale
    body = np.sqrt(((g.X - bx) / ax_field) ** 2 + ((g.Y - by) / ay_field) ** 2)
    t_fat, t_mus = _u(rng, 0.06, 0.11), _u(rng, 0.035, 0.055)
    inner_fat = np.sqrt(((g.X - bx) / (ax_field - t_fat)) ** 2 + ((g.Y - by) / (ay_field - t_fat)) ** 2)
    t_in = t_fat + t_mus
    cavity_r = np.sqrt(((g.X - bx) / (ax_field - t_in)) ** 2 + ((g.Y - by) / (ay_field - t_in)) ** 2)
    cv.paint(body < 1, SUBCUT_FAT)
    cv.paint(inner_fat < 1, MUSCLE)
    cavity = cavity_r < 1
    cv.paint(cavity, VISCERAL_FAT)
    under_skin = body < 0.96

    # Spine (posterior midline) with its muscles; protected from organ paint.
    sy = by + _u(rng, 0.2, 0.25)
    for side in (-1, 1):
        para = _blob(g, rng, (bx + side * 0.14, sy + 0.24, 0.5), (0.1, 0.09, inf), rough=0.1)
        cv.paint((para < 1) & under_skin, MUSCLE)
        psoas_scale = 1 + 0.7 * (1 - g.Z)  # psoas grows toward the pelvis (inferior = small z)
        psoas = _blob(g, rng, (bx + side * 0.16, sy - 0.04, 0.5), (0.05, 0.06, inf), angle=side * 0.3)
        cv.paint((psoas < psoas_scale) & cavity, MUSCLE)
    vb = _blob(g, rng, (bx, sy, 0.5), (0.11, 0.095, inf), rough=0.05)
    cv.paint(vb < 1, BONE_CORTEX)
    cv.paint(vb < 0.78, BONE_MARROW)
    canal_c = (bx, sy + 0.16, 0.5)
    cv.paint((_blob(g, rng, canal_c, (0.075, 0.075, inf)) < 1) & under_skin, BONE_CORTEX)
    cv.paint(_blob(g, rng, canal_c, (0.045, 0.045, inf)) < 1, CSF)
    cv.paint((_blob(g, rng, (bx, sy + 0.27, 0.5), (0.025, 0.06, inf)) < 1) & under_skin, BONE_CORTEX)
    aorta = _blob(g, rng, (bx + _u(rng, 0.04, 0.08), sy - 0.18, 0.5), (0.045, 0.045, inf)) < 1
    ivc = _blob(g, rng, (bx - _u(rng, 0.08, 0.12), sy - 0.2, 0.5), (0.055, 0.04, inf)) < 1
    cv.paint(aorta, AORTA)
    cv.paint(ivc, IVC)
    protected = np.isin(cv.tissue, (BONE_CORTEX, BONE_MARROW, CSF, AORTA, IVC))
    free = cavity & ~protected

    # Liver: big right lobe on the image's left plus a left lobe across the midline (anterior).
    liver_r = _blob(
        g, rng,
        (bx - _u(rng, 0.36, 0.44), by + _u(rng, -0.06, 0.02), _u(rng, 0.62, 0.75)),
        (_u(rng, 0.3, 0.36), _u(rng, 0.38, 0.45), _u(rng, 0.4, 0.5)),
        angle=_u(rng, 0.15, 0.45), rough=0.08, rough_cell=10,
    )  # fmt: skip
    left_lobe = _blob(
        g, rng,
        (bx + _u(rng, -0.05, 0.05), by - _u(rng, 0.26, 0.32), _u(rng, 0.7, 0.8)),
        (_u(rng, 0.18, 0.26), _u(rng, 0.1, 0.14), _u(rng, 0.2, 0.3)),
        angle=_u(rng, -0.2, 0.1), rough=0.12,
    )  # fmt: skip
    liver = ((liver_r < 1) | (left_lobe < 1)) & free
    cv.paint(liver, LIVER, 1)

    spleen = _blob(
        g, rng,
        (bx + _u(rng, 0.5, 0.58), by + _u(rng, 0.1, 0.2), _u(rng, 0.62, 0.72)),
        (_u(rng, 0.12, 0.16), _u(rng, 0.2, 0.27), _u(rng, 0.24, 0.32)),
        angle=_u(rng, -0.8, -0.4), rough=0.1,
    ) < 1  # fmt: skip
    cv.paint(spleen & free, SPLEEN, 2)

    # Pancreas: a lobulated tube from the splenic hilum (tail) to beside the IVC (head), tail higher.
    t = np.linspace(0, 1, 28, dtype=np.float32)[:, None]
    tail = np.array([bx + _u(rng, 0.38, 0.45), by + _u(rng, 0.08, 0.15), _u(rng, 0.52, 0.6)], np.float32)
    mid = np.array([bx + _u(rng, 0.1, 0.2), by + _u(rng, -0.06, 0.02), _u(rng, 0.46, 0.52)], np.float32)
    head = np.array([bx - _u(rng, 0.06, 0.14), by + _u(rng, 0.0, 0.06), _u(rng, 0.38, 0.46)], np.float32)
    path = (1 - t) ** 2 * tail + 2 * (1 - t) * t * mid + t**2 * head
    radii = np.linspace(_u(rng, 0.035, 0.045), _u(rng, 0.06, 0.075), len(t)).astype(np.float32)
    pancreas = _tube(g, rng, path, radii, rz=_u(rng, 1.6, 2.4) * g.dz, rough=0.22) < 1
    cv.paint(pancreas & free & (cv.label == 0), PANCREAS, 6)

    # Kidneys: bean-shaped (fat-filled hilum facing the spine), bright cortex, dark medulla; they sit
    # on the psoas and back muscles, which have the medulla's intensity. Patient-left kidney = image right.
    for side, lab in ((1, 3), (-1, 4)):
        cx = bx + side * _u(rng, 0.32, 0.38)
        cy = sy + _u(rng, -0.02, 0.04)
        cz = _u(rng, 0.42, 0.5) if side == 1 else _u(rng, 0.33, 0.42)  # right kidney sits lower
        kax, kay, kaz = _u(rng, 0.12, 0.15), _u(rng, 0.16, 0.2), _u(rng, 0.26, 0.34)
        ang = side * _u(rng, 0.2, 0.5)
        kid = _blob(g, rng, (cx, cy, cz), (kax, kay, kaz), angle=ang, rough=0.06)
        hilum = _blob(g, rng, (cx - side * 0.85 * kax, cy - 0.01, cz), (0.5 * kax, 0.35 * kay, 0.55 * kaz), angle=ang)
        region = (kid < 1) & cavity & ~protected
        cv.paint(region & ~(hilum < 1), KIDNEY_CORTEX, lab)
        cv.paint(region & (kid < _u(rng, 0.62, 0.72)) & ~(hilum < 1), KIDNEY_MEDULLA, lab)
        cv.paint(region & (hilum < 1), SINUS_FAT, 0)

    # Lesion: irregular, low-contrast, on a few slices, entirely inside the liver (overrides its label).
    # Drawn before the vessels so no vessel punches a hole into the lesion label.
    depth = _paint_inside(cv, g, rng, LIVER, LESION, 5, radius=(0.07, 0.11), zslices=(1.6, 2.6), rough=0.4)
    # Liver vessels (part of the liver label, as in clinical liver masks). The lesion's depth map is
    # precise enough for blobs this small (candidates are still restricted to remaining liver voxels).
    for _ in range(int(rng.integers(2, 5))):
        _paint_inside(
            cv, g, rng, LIVER, LIVER_VESSEL, 1, radius=(0.02, 0.035), zslices=(2.0, 4.0), rough=0.1, depth=depth
        )

    _stomach(cv, g, rng, free, bx, by)
    _bowel(cv, g, rng, free & (g.Y < by + 0.25))
    return cv


def _depth(mask: np.ndarray, slice_px: float) -> np.ndarray:
    """Distance (in-plane pixels) of each voxel of ``mask`` to its outside; one slice counts ``slice_px``."""
    depth = np.zeros(mask.shape, dtype=np.float32)
    idx = np.argwhere(mask)
    if not idx.size:
        return depth
    # The transform only needs the organ's bounding box (+1 voxel of outside on every side).
    lo, hi = np.maximum(idx.min(0) - 1, 0), idx.max(0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    padded = np.pad(mask[box], 1)
    d = ndimage.distance_transform_edt(padded, sampling=(slice_px, 1.0, 1.0))[1:-1, 1:-1, 1:-1]
    depth[box] = d
    return depth


def _paint_inside(
    cv: _Canvas,
    g: _Grid,
    rng: np.random.Generator,
    host: int,
    tissue: int,
    label: int,
    radius: tuple[float, float],
    zslices: tuple[float, float],
    rough: float,
    depth: np.ndarray | None = None,
) -> np.ndarray | None:
    """Paint a blob centred deep inside tissue ``host``, clipped to it.

    ``radius`` is the in-plane semi-axis range (normalised units), ``zslices`` the z semi-axis range in
    slices. ``depth`` (from :func:`_depth`) is computed for this blob's own proportions when None.
    Returns the depth map used, for reuse.
    """
    host_mask = cv.tissue == host
    if not host_mask.any():
        return depth
    rad = _u(rng, *radius)
    rz_slices = _u(rng, *zslices)
    rad_px = rad * min(g.shape[1:]) / 2
    if depth is None:
        # One slice counts rad_px / rz_slices pixels, so "deep" means the whole ellipsoid fits in the host,
        # not just its centre slice.
        depth = _depth(host_mask, slice_px=rad_px / rz_slices)
    for frac in (1.3, 1.0, 0.7, 0.4, 0.0):
        cand = np.flatnonzero(host_mask & (depth > frac * rad_px))
        if cand.size:
            break
    kk, jj, ii = np.unravel_index(int(cand[rng.integers(cand.size)]), g.shape)
    # Blobs are evaluated on the deformed grid, so the centre is the chosen voxel's deformed coordinate.
    c = (float(g.X[kk, jj, ii]), float(g.Y[kk, jj, ii]), float(g.Z[kk, 0, 0]))
    r = _blob(g, rng, c, (rad, rad * _u(rng, 0.75, 1.1), rz_slices * g.dz), angle=_u(rng, 0, np.pi), rough=rough)
    cv.paint((r < 1) & host_mask, tissue, label)
    return depth


def _stomach(cv: _Canvas, g: _Grid, rng: np.random.Generator, free: np.ndarray, bx: float, by: float) -> None:
    """Stomach (unlabelled) in the fat between the liver's left lobe and the spleen, touching both.

    Its wall is thick and has the liver's and spleen's intensity, so a box on either organ holds a
    stretch of border that only shape (or a click) separates; the lumen holds fluid or gas.
    """
    r = _blob(
        g, rng,
        (bx + _u(rng, 0.22, 0.34), by - _u(rng, 0.04, 0.12), _u(rng, 0.62, 0.76)),
        (_u(rng, 0.15, 0.2), _u(rng, 0.12, 0.16), _u(rng, 0.22, 0.3)),
        angle=_u(rng, -0.5, -0.1), rough=0.12,
    )  # fmt: skip
    fat = free & (cv.tissue == VISCERAL_FAT)
    cv.paint((r < 1) & fat, STOMACH_WALL)
    cv.paint((r < _u(rng, 0.5, 0.65)) & fat, BOWEL_GAS if rng.random() < 0.3 else BOWEL_FLUID)


def _bowel(cv: _Canvas, g: _Grid, rng: np.random.Generator, region: np.ndarray) -> None:
    """Bowel loops (wall + gas or fluid) filling part of the remaining anterior fat; unlabelled."""
    for _ in range(int(rng.integers(8, 14))):
        cand = np.flatnonzero(region & (cv.tissue == VISCERAL_FAT))
        if not cand.size:
            return
        kk, jj, ii = np.unravel_index(int(cand[rng.integers(cand.size)]), g.shape)
        c = (float(g.X[kk, jj, ii]), float(g.Y[kk, jj, ii]), float(g.Z[kk, 0, 0]))
        semi = (_u(rng, 0.06, 0.11), _u(rng, 0.05, 0.1), _u(rng, 2.0, 5.0) * g.dz)
        r = _blob(g, rng, c, semi, angle=_u(rng, 0, np.pi), rough=0.12)
        fat = cv.tissue == VISCERAL_FAT
        cv.paint((r < 1) & fat, BOWEL_WALL)
        cv.paint((r < _u(rng, 0.55, 0.75)) & fat, BOWEL_GAS if rng.random() < 0.4 else BOWEL_FLUID)


def _intensities(cv: _Canvas, rng: np.random.Generator, table: dict[int, float], jitter: float) -> np.ndarray:
    lut = np.zeros(N_TISSUES, dtype=np.float32)
    for tissue, value in table.items():
        lut[tissue] = value + (rng.uniform(-jitter, jitter) if tissue not in (AIR, BOWEL_GAS) else 0.0)
    return lut[cv.tissue]


def ct_phantom(
    seed: int,
    shape: tuple[int, int, int] = (24, 160, 160),
    spacing: tuple[float, float, float] = (5.0, 1.5, 1.5),
    phase: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """An abdominal CT phantom, portal-venous or non-contrast.

    Args:
        seed: any int; the same seed, shape and phase always give identical arrays.
        shape: ``(K, J, I)`` voxels (J, I >= 32).
        spacing: voxel size in mm in ``(K, J, I)`` order. Only used for the partial-volume blur (anatomy
            is defined relative to the field of view); write it into the image geometry yourself.
        phase: one of :data:`CT_PHASES`; None draws it from the seed (half the seeds are native).

    Returns:
        ``(image, label)``: image int16 ``(K, J, I)`` in Hounsfield units (air -1000, fat about -100,
        soft tissue 30-65, enhanced kidney cortex about 150 in the portal phase, bone 300-800; a smooth
        soft-tissue texture of about 4 HU and Gaussian noise, std about 12 HU); label uint8 ``(K, J, I)``
        with ids from :data:`LABELS`.
    """
    if phase is not None and phase not in CT_PHASES:
        raise ValueError(f"phase must be one of {CT_PHASES} or None, got {phase!r}")
    rng = np.random.default_rng([int(seed), 1])
    # Drawn even when ``phase`` is given: the same random stream follows, so both phases of a seed share
    # one anatomy (and one label array).
    drawn = CT_PHASES[int(rng.integers(len(CT_PHASES)))]
    shape = tuple(int(s) for s in shape)
    cv = _anatomy(rng, shape)
    table = dict(_CT_TABLE)
    if (phase or drawn) == "native":
        table.update(_CT_NATIVE)
    table[LIVER] = _u(rng, 55, 65)
    table[LESION] = table[LIVER] - _u(rng, 10, 18)
    img = _intensities(cv, rng, table, jitter=4.0)
    img[cv.tissue == LIVER] = table[LIVER]  # keep the designed lesion-to-liver contrast exact
    img[cv.tissue == LESION] = table[LESION]
    # Parenchymal texture: lesion-sized smooth blotches of a few HU, so the lesion is not the only
    # darker patch in the liver and organ borders are not flat steps.
    soft = (cv.tissue >= AORTA) & ~np.isin(cv.tissue, (SINUS_FAT, BOWEL_GAS, BOWEL_FLUID))
    k, j, i = shape
    img += np.where(soft, _u(rng, 3.0, 5.0) * _smooth_noise(rng, shape, (max(k / 4, 1.0), j / 16, i / 16)), 0)
    img = ndimage.gaussian_filter(img, sigma=_blur_sigma(spacing))
    img += rng.normal(0.0, _u(rng, 10.0, 14.0), size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16), cv.label


def mr_phantom(
    seed: int,
    shape: tuple[int, int, int] = (20, 160, 160),
    spacing: tuple[float, float, float] = (4.0, 1.5, 1.5),
) -> tuple[np.ndarray, np.ndarray]:
    """A T2-weighted-like abdominal MR phantom (same anatomy generator and label ids as the CT).

    Intensities are arbitrary units, about 0..1000: fat and fluid bright, liver dark, lesion BRIGHTER
    than the liver (the opposite of the CT), vessels dark (flow voids). A smooth multiplicative bias field
    (about +-30 %) and Rician noise (magnitude of complex Gaussian noise) make it MR-like.

    Returns:
        ``(image, label)``: image int16 ``(K, J, I)``, label uint8 ``(K, J, I)`` with ids from :data:`LABELS`.
    """
    rng = np.random.default_rng([int(seed), 2])
    shape = tuple(int(s) for s in shape)
    cv = _anatomy(rng, shape)
    table = dict(_MR_TABLE)
    table[LESION] = table[LIVER] * _u(rng, 1.6, 2.2)
    img = _intensities(cv, rng, table, jitter=20.0)
    img = ndimage.gaussian_filter(img, sigma=_blur_sigma(spacing))
    k, j, i = shape
    bias = 1 + 0.15 * _smooth_noise(rng, shape, (max(k / 1.5, 1.0), j / 1.5, i / 1.5))
    # Surface-coil-like falloff: anterior (small j) brighter than posterior.
    bias = bias * (1 + _u(rng, 0.1, 0.2) * -np.linspace(-1, 1, j, dtype=np.float32)[None, :, None])
    img *= np.clip(bias, 0.5, 1.6)
    sigma = _u(rng, 12.0, 20.0)
    re = img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    im = rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    mag = np.sqrt(re * re + im * im)
    return np.clip(np.rint(mag), 0, 4095).astype(np.int16), cv.label


def _blur_sigma(spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """Partial-volume blur of about 1.2 mm FWHM in-plane and a bit more through-plane, in voxels."""
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive mm values in (K, J, I) order, got {spacing}")
    return (min(0.5, 2.0 / spacing[0]), min(1.0, 1.2 / spacing[1]), min(1.0, 1.2 / spacing[2]))
