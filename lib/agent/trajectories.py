"""Trajectories as data: one episode per JSONL line, schema-versioned, masks run-length encoded.

A ``Trajectory`` is what ``lib.agent.rollout.rollout`` returns and what SFT / RL / evaluation read back.
Images are NOT stored: ``case_id``, ``slice_index``, ``axis`` and ``source`` point back to the dataset
slice, so a trajectory file stays small (a 160x160 mask is ~100 bytes of RLE).

RLE format (COCO "uncompressed RLE"): ``{"size": [H, W], "counts": [n0, n1, ...]}`` over the mask
flattened in COLUMN-MAJOR (Fortran) order, i.e. ``mask.ravel(order="F")`` (down the first column, then the
next), alternating runs of False and True starting with False (``n0`` may be 0). This is exactly what
``pycocotools.mask.frPyObjects`` accepts, so other tools read our masks without a converter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

#: bump when a field changes meaning or is removed (adding an optional field does not need a bump)
SCHEMA_VERSION = 1


class TrajectorySchemaError(ValueError):
    """A trajectory line is not readable by this code (wrong schema version, missing fields, bad JSON)."""


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> COCO uncompressed RLE ``{"size": [H, W], "counts": [...]}`` (column-major runs)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise ValueError(f"rle_encode needs an (H, W) bool mask, got {mask.dtype} {mask.shape}")
    flat = mask.ravel(order="F")
    # run boundaries: positions where the value changes, plus both ends; the first run is False by convention
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Inverse of ``rle_encode``; ValueError when the counts do not add up to H * W."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = [int(c) for c in rle["counts"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"an RLE needs 'size': [H, W] and 'counts': [ints], got {rle!r}") from None
    if sum(counts) != h * w or any(c < 0 for c in counts):
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected H*W = {h * w} non-negative runs")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


@dataclass
class Trajectory:
    """One episode of a policy on one (slice, target).

    Attributes:
        case_id / slice_index / axis: the slice (``slice_index`` None for a 2D image; ``axis`` of the
            ``(K, J, I)`` volume it was cut along).
        label: target label name.
        backend: tool name ("litemedsam", ...); ``prompting``: the ``Prompting`` mode used.
        policy: policy name; ``policy_meta``: its per-episode facts (e.g. the expert's strategy).
        shape: (H, W) of the slice.
        actions: every issued action in order, ``lib.agent.actions.to_dict`` form in PIXELS, the final
            ``{"type": "stop"}`` included; an invalid action carries an ``"invalid"`` reason and no mask.
        ious / dices / scores: per EXECUTED Box/Point action (aligned with ``masks``); ``scores`` is the
            tool's predicted IoU. Empty lists when the episode had no ground truth (``ious``/``dices``).
        masks: RLE (see the module docstring) of the mask after each executed action.
        final_mask: RLE of the episode's answer (the last executed action's mask; empty if none).
        stop_reason: "budget" (turn budget reached) or the policy's reason for Stop ("target_reached",
            "no_improving_candidate", "stop", ...).
        n_invalid: invalid actions issued.
        reward / reward_terms: episode reward and its unweighted terms (None / {} without ground truth).
        timings: milliseconds: ``encoder_ms`` (0 when the session came from a cache), ``decoder_ms``
            (look-ahead included), ``policy_ms`` (decision time without decoder calls), ``other_ms``
            (environment, metrics, bookkeeping) and ``total_ms``; plus ``decoder_calls``.
        qualities: per action in ``actions``, the quality the policy predicted (its calibrated estimate of the IoU
            of the mask it was shown BEFORE that action, ``lib.agent.quality``); None where it was not asked (the
            user's hand-off prompts) or predicts none (oracles). Empty in files written before it existed.
        final_quality: the policy's predicted quality of ``final_mask`` (None when it predicts none).
        prior: RLE of the neighbouring slice's final mask the episode started next to (a volume episode's
            propagated slice: the env's ``prior`` reset option), or None; learners rebuild the policy input from it.
        seed: the episode seed (reproduces the trajectory with the same tool and data).
        source: where the slice comes from (dataset folder, image path, ...).
        schema_version: ``SCHEMA_VERSION`` of the writer.
    """

    case_id: str
    slice_index: int | None
    label: str
    backend: str
    prompting: str
    policy: str
    shape: list[int]
    actions: list[dict[str, Any]]
    ious: list[float]
    dices: list[float]
    scores: list[float]
    masks: list[dict[str, Any]]
    final_mask: dict[str, Any]
    stop_reason: str
    n_invalid: int = 0
    axis: int = 0
    reward: float | None = None
    reward_terms: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    policy_meta: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    source: dict[str, Any] = field(default_factory=dict)
    qualities: list[float | None] = field(default_factory=list)
    final_quality: float | None = None
    prior: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def key(self) -> tuple[str, int | None, str]:
        """(case_id, slice_index, label): what a resumable writer skips when already present."""
        return (self.case_id, self.slice_index, self.label)

    @property
    def n_actions(self) -> int:
        """Executed Box/Point actions (masks produced)."""
        return len(self.masks)

    @property
    def final_iou(self) -> float | None:
        """IoU of the final mask (0.0 when no action executed), None without ground truth."""
        if self.ious:
            return self.ious[-1]
        return 0.0 if self.reward is not None else None

    @property
    def final_dice(self) -> float | None:
        """Dice of the final mask (0.0 when no action executed), None without ground truth."""
        if self.dices:
            return self.dices[-1]
        return 0.0 if self.reward is not None else None

    def mask_arrays(self) -> list[np.ndarray]:
        """(H, W) bool mask after each executed action."""
        return [rle_decode(r) for r in self.masks]

    def prior_array(self) -> np.ndarray | None:
        """(H, W) bool neighbour mask the episode was given (``prior``), or None."""
        return None if self.prior is None else rle_decode(self.prior)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``schema_version`` first)."""
        d = asdict(self)
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trajectory:
        """Inverse of ``to_dict``; ``TrajectorySchemaError`` for another schema version or missing fields."""
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise TrajectorySchemaError(
                f"trajectory schema_version {version!r} is not {SCHEMA_VERSION}, the version this code reads; "
                "regenerate the file with scripts/generate_trajectories.py (or use the code that wrote it)"
            )
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise TrajectorySchemaError(f"trajectory is missing field(s) {missing}")
        kwargs = {k: v for k, v in d.items() if k in names}
        return cls(**kwargs)



def write_jsonl(path: str | Path, trajectories: Iterable[Trajectory], append: bool = True) -> int:
    """Write one JSON line per trajectory; returns how many were written.

    ``append=True`` adds to an existing file (resumable generation); False truncates it first. Each line is
    flushed as it is written, so an interrupted run leaves at most one partial last line (see
    ``repair_tail``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for traj in trajectories:
            f.write(json.dumps(traj.to_dict(), separators=(",", ":")) + "\n")
            f.flush()
            n += 1
    return n


def iter_jsonl(path: str | Path) -> Iterator[Trajectory]:
    """Stream trajectories from a JSONL file (blank lines skipped).

    Raises:
        TrajectorySchemaError: a line that is not JSON, or has another schema version; the message names
            the file and line.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as err:
                raise TrajectorySchemaError(f"{path}:{n} is not JSON ({err.msg}); truncated write?") from None
            try:
                yield Trajectory.from_dict(d)
            except TrajectorySchemaError as err:
                raise TrajectorySchemaError(f"{path}:{n}: {err}") from None


def read_jsonl(path: str | Path) -> list[Trajectory]:
    """All trajectories of a JSONL file (see ``iter_jsonl``)."""
    return list(iter_jsonl(path))


def repair_tail(path: str | Path) -> int:
    """Drop a partial last line left by an interrupted writer; returns the bytes removed (0 if none)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # walk back to the previous newline (files are small per line; read in chunks)
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = pos - step + i + 1
                f.truncate(keep)
                return size - keep
            pos -= step
        f.truncate(0)
        return size


def read_keys(path: str | Path) -> set[tuple[str, int | None, str]]:
    """(case_id, slice_index, label) of every trajectory in a file (empty set if the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return set()
    return {t.key for t in iter_jsonl(path)}
