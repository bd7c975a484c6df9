"""Client IJK voxel indices -> (slice, x, y): the one place this conversion happens.

3D Slicer sends clicks as integer IJK triples of the image file's voxel grid (``foreground`` /
``background``), a box as ``roi = [i0, i1, j0, j1, k0, k1]`` (interleaved, IJK) and optionally the
current ``slice``. Arrays in this project are held in SimpleITK order (K, J, I), so voxel (i, j, k)
is ``array[k, j, i]`` and, on slice k, pixel (x, y) = (i, j). Because both sides index the file's own
voxel grid, the mapping needs no orientation matrix (MONAI Label issue #1407 came from mixing
frames); ``tests/data/test_ijk.py`` checks it with a deliberately asymmetric, oblique image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SlicePrompts:
    """Prompts on one 2D slice.

    Attributes:
        slice_index: k of the axial slice for 3D images, None for 2D images.
        points: (x, y) pixels on the slice.
        labels: 1 foreground / 0 background per point.
        box: (x0, y0, x1, y1) inclusive pixels, or None.
    """

    slice_index: int | None
    points: list[tuple[int, int]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[int, int, int, int] | None = None


def _as_ijk(p, what: str, size_ijk: Sequence[int]) -> tuple[int, ...]:
    try:
        vals = tuple(int(round(float(v))) for v in p)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {p!r} is not a list of numbers; send [i, j, k] voxel indices") from None
    if len(vals) not in (2, 3):
        raise ValueError(f"{what} {list(p)} must be [i, j] or [i, j, k] voxel indices")
    for axis, (v, n) in enumerate(zip(vals, size_ijk)):
        if not 0 <= v < n:
            dims = "×".join(str(s) for s in size_ijk)
            raise ValueError(f"{what} {list(vals)} is outside the image (IJK size {dims}; index {'ijk'[axis]}={v})")
    return vals


def request_to_slice_prompts(request: dict, size_ijk: Sequence[int]) -> SlicePrompts:
    """Read ``foreground``, ``background``, ``roi`` and ``slice`` of a client request.

    Args:
        request: the infer request (keys as sent by Slicer / OHIF).
        size_ijk: image size in voxels, (I, J) for 2D or (I, J, K) for 3D.

    Raises:
        ValueError: malformed or out-of-image prompts, clicks on different slices, no prompt at all.
    """
    is3d = len(size_ijk) == 3
    fg = [_as_ijk(p, "foreground click", size_ijk) for p in request.get("foreground") or []]
    bg = [_as_ijk(p, "background click", size_ijk) for p in request.get("background") or []]
    roi = request.get("roi") or []
    if roi and len(roi) not in (4, 6):
        raise ValueError(f"roi {roi} must be [i0, i1, j0, j1] or [i0, i1, j0, j1, k0, k1] (IJK, interleaved)")

    k: int | None = None
    if is3d:
        if request.get("slice") is not None and int(request["slice"]) >= 0:
            k = int(request["slice"])
            if k >= size_ijk[2]:
                raise ValueError(f"slice {k} is outside the image (it has {size_ijk[2]} slices along k)")
        elif fg or bg:
            k = (fg or bg)[0][2] if len((fg or bg)[0]) == 3 else None
        elif len(roi) == 6:
            k = (int(roi[4]) + int(roi[5])) // 2
        if k is None:
            raise ValueError("cannot tell which slice to segment: send clicks as [i, j, k], a 6-value roi or `slice`")
        stray = [p for p in fg + bg if len(p) == 3 and p[2] != k]
        if stray:
            raise ValueError(f"clicks {[list(p) for p in stray]} are not on slice k={k}; this model works on one slice")

    box = None
    if roi:
        i0, i1, j0, j1 = (int(round(float(v))) for v in roi[:4])
        if i0 > i1 or j0 > j1:
            raise ValueError(f"roi {roi} has i0 > i1 or j0 > j1; expected [i0, i1, j0, j1, ...] "
                             "with i0 <= i1, j0 <= j1")
        ni, nj = size_ijk[0], size_ijk[1]
        i0, i1 = max(0, i0), min(ni - 1, i1)
        j0, j1 = max(0, j0), min(nj - 1, j1)
        if i0 > i1 or j0 > j1:
            raise ValueError(f"roi {roi} does not overlap the image (IJK size {list(size_ijk)})")
        box = (i0, j0, i1, j1)
    if not fg and not bg and box is None:
        raise ValueError("no prompt: send at least one `foreground` click or a `roi` box")
    points = [(p[0], p[1]) for p in fg] + [(p[0], p[1]) for p in bg]
    labels = [1] * len(fg) + [0] * len(bg)
    return SlicePrompts(slice_index=k, points=points, labels=labels, box=box)
