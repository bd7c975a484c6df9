"""How well a policy judges its own mask: quality pairs, calibration metrics and the calibrator it serves with.

A policy that predicts a quality (``CompactPolicy``'s value head) states, before each decision, the IoU it
expects between the mask it is shown and the reference. ``quality_pairs`` reads (predicted, true IoU) pairs from
a trajectory; ``calibration_metrics`` measures them (Spearman rank correlation, expected calibration error in
10 equal-width bins, mean absolute error); ``QualityCalibration`` is a monotone map fitted on held-out pairs
(isotonic regression) that the policy applies when serving, so that a served ``quality`` of 0.8 means "about
0.8 IoU on cases like the validation cases".

Units: qualities and IoUs are fractions in [0, 1]; nothing here depends on image size or frame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: what a served ``quality`` means (the result JSON states it next to the number)
QUALITY_MEANING = ("the policy's estimate of the IoU (intersection over union, 0-1) between the mask and an "
                   "expert's label of the structure on this slice")
CALIBRATION_METHODS = ("isotonic",)


@dataclass(frozen=True)
class QualityCalibration:
    """A monotone non-decreasing map raw quality -> calibrated quality, piecewise linear through knots.

    Attributes:
        x: raw-quality knots, strictly increasing, in [0, 1].
        y: calibrated value at each knot, non-decreasing, in [0, 1]; below ``x[0]`` / above ``x[-1]`` the end
            values hold (no extrapolation).
        method: how it was fitted ("isotonic").
        fitted_on: JSON-ready facts about the fit (data, split, number of pairs, metrics before and after).
    """

    x: tuple[float, ...]
    y: tuple[float, ...]
    method: str = "isotonic"
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        x, y = np.asarray(self.x, dtype=float), np.asarray(self.y, dtype=float)
        if x.ndim != 1 or x.shape != y.shape or x.size < 1:
            raise ValueError(f"QualityCalibration needs equal-length non-empty knots, got {x.size} x and {y.size} y")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("QualityCalibration knots must be finite")
        if (np.diff(x) <= 0).any() or (np.diff(y) < -1e-12).any():
            raise ValueError("QualityCalibration: x must be strictly increasing and y non-decreasing (a monotone map)")
        if x.min() < 0 or x.max() > 1 or y.min() < 0 or y.max() > 1:
            raise ValueError("QualityCalibration knots must lie in [0, 1]")
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"QualityCalibration.method must be one of {CALIBRATION_METHODS}, got {self.method!r}")

    def __call__(self, q: float) -> float:
        """The calibrated quality of a raw quality ``q``."""
        return float(np.interp(float(q), self.x, self.y))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "x": [float(v) for v in self.x], "y": [float(v) for v in self.y],
                "fitted_on": dict(self.fitted_on)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QualityCalibration:
        try:
            return cls(tuple(float(v) for v in d["x"]), tuple(float(v) for v in d["y"]),
                       str(d.get("method", "isotonic")), dict(d.get("fitted_on") or {}))
        except (KeyError, TypeError) as e:
            raise ValueError(f"a quality calibration needs 'x' and 'y' knot lists, got {dict(d)!r}") from e


def fit_isotonic(predicted: Sequence[float], true: Sequence[float],
                 fitted_on: Mapping[str, Any] | None = None) -> QualityCalibration:
    """Isotonic regression of true IoU on predicted quality (sklearn), as a ``QualityCalibration``.

    Raises:
        ValueError: fewer than 10 pairs (too few to fit a calibration worth serving).
    """
    from sklearn.isotonic import IsotonicRegression

    p, t = _pairs_array(predicted, true)
    if p.size < 10:
        raise ValueError(f"fitting a quality calibration needs at least 10 (predicted, true) pairs, got {p.size}")
    reg = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True).fit(p, t)
    x, y = np.asarray(reg.X_thresholds_, dtype=float), np.asarray(reg.y_thresholds_, dtype=float)
    if x.size == 1:  # every prediction equal: a constant map
        x, y = np.array([0.0, 1.0]), np.array([y[0], y[0]])
    # sklearn may repeat an x at a step; keep the last value of each so x is strictly increasing
    keep = np.append(np.diff(x) > 0, True)
    return QualityCalibration(tuple(np.clip(x[keep], 0, 1)), tuple(np.clip(np.maximum.accumulate(y[keep]), 0, 1)),
                              "isotonic", dict(fitted_on or {}, n=int(p.size)))


def calibration_metrics(predicted: Sequence[float], true: Sequence[float], bins: int = 10) -> dict[str, Any]:
    """How well predicted qualities track true IoUs.

    Returns ``{"n", "spearman", "ece", "mae", "bins"}``: Spearman rank correlation (NaN with fewer than 3 pairs or
    constant values), expected calibration error = sum over ``bins`` equal-width bins of the predicted quality of
    (fraction of pairs in the bin) x |mean predicted - mean true IoU|, mean absolute error, and per bin
    ``{"lo", "hi", "n", "predicted", "true"}`` (the reliability diagram's points).
    """
    from scipy.stats import spearmanr

    p, t = _pairs_array(predicted, true)
    n = int(p.size)
    out: dict[str, Any] = {"n": n, "spearman": float("nan"), "ece": float("nan"), "mae": float("nan"), "bins": []}
    if n == 0:
        return out
    out["mae"] = float(np.abs(p - t).mean())
    if n >= 3 and np.ptp(p) > 0 and np.ptp(t) > 0:
        out["spearman"] = float(spearmanr(p, t).statistic)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if not sel.any():
            continue
        mp, mt = float(p[sel].mean()), float(t[sel].mean())
        ece += sel.mean() * abs(mp - mt)
        out["bins"].append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(sel.sum()),
                            "predicted": mp, "true": mt})
    out["ece"] = float(ece)
    return out


def quality_pairs(actions: Sequence[Mapping[str, Any]], qualities: Sequence[float | None],
                  ious: Sequence[float], final_quality: float | None = None,
                  stopped_by_budget: bool = False) -> list[tuple[float, float]]:
    """(predicted quality, true IoU) of every mask a policy judged in one episode.

    Args:
        actions: the episode's actions (``Trajectory.actions``: the final Stop included, invalid ones marked).
        qualities: per action, the quality the policy predicted for the mask it was shown BEFORE that action
            (``Trajectory.qualities``; None where the policy was not asked, e.g. the user's hand-off box).
        ious: true IoU after each EXECUTED Box/Point action (``Trajectory.ious``).
        final_quality: the predicted quality of the final mask (``Trajectory.final_quality``).
        stopped_by_budget: the turn budget ended the episode, so ``final_quality`` judged a mask no decision saw.

    Decisions on an empty mask (nothing executed yet: an autonomous first turn) are left out: the answer there
    is trivially 0 and would flatter the correlation.
    """
    out: list[tuple[float, float]] = []
    executed = 0
    for a, q in zip(actions, qualities, strict=False):
        if q is not None and executed > 0 and executed <= len(ious):
            out.append((float(q), float(ious[executed - 1])))
        if a.get("type") in ("box", "point") and "invalid" not in a:
            executed += 1
    if stopped_by_budget and final_quality is not None and 0 < executed <= len(ious):
        out.append((float(final_quality), float(ious[executed - 1])))
    return out


def _pairs_array(predicted: Sequence[float], true: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(predicted, dtype=float).ravel(), np.asarray(true, dtype=float).ravel()
    if p.shape != t.shape:
        raise ValueError(f"predicted ({p.size}) and true ({t.size}) qualities must pair up one to one")
    ok = np.isfinite(p) & np.isfinite(t)
    return p[ok], t[ok]


def nan_to_none(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready copy (NaN -> None)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def gated_stop(episodes: Sequence[Mapping[str, Any]], threshold: float,
               transform: QualityCalibration | None = None) -> dict[str, float]:
    """What a quality-gated stop at ``threshold`` would have answered on recorded episodes of a greedy policy.

    Args:
        episodes: ``lib.agent.evaluation.score_episode`` results (``decisions``, ``final_dice``, ``turns``).
        threshold: stop at the first decision whose (transformed) predicted quality is at least this.
        transform: a calibration to apply to the recorded qualities first (None: as recorded).

    The gate only ends episodes earlier, so for a deterministic policy the answer at the gate is the mask that
    decision judged, exactly as the online gate (``CompactPolicy(stop_quality=...)``) would return it.
    Returns the mean ``dice``, ``turns`` and the fraction of episodes the gate ``stopped``.
    """
    dice, turns, stopped = [], [], 0
    for ep in episodes:
        f = transform or (lambda q: q)
        hit = next((d for d in ep.get("decisions", []) if f(d["quality"]) >= threshold), None)
        if hit is None:
            dice.append(ep["final_dice"])
            turns.append(ep["turns"])
        else:
            dice.append(hit["dice"])
            turns.append(hit["turns"])
            stopped += hit["turns"] < ep["turns"]
    n = max(len(dice), 1)
    return {"threshold": float(threshold), "dice": float(np.mean(dice)) if dice else float("nan"),
            "turns": float(np.mean(turns)) if turns else float("nan"), "stopped": stopped / n}


#: thresholds a quality-gated stop is chosen from
STOP_GRID = tuple(round(0.50 + 0.02 * i, 2) for i in range(25))


def choose_stop_threshold(episodes: Sequence[Mapping[str, Any]], transform: QualityCalibration | None = None,
                          grid: Sequence[float] = STOP_GRID) -> dict[str, Any]:
    """The quality-gated stop threshold chosen on validation episodes (hand-off mode).

    Rule: among the thresholds whose mean Dice is at least the learned stop's, the one with the fewest mean turns
    (ties: the higher Dice, then the higher threshold); None when no threshold saves a turn without losing Dice.
    Returns ``{"threshold", "learned": {dice, turns}, "gated": {...} | None, "curve": [...]}``.
    """
    learned = {"dice": float(np.mean([e["final_dice"] for e in episodes])),
               "turns": float(np.mean([e["turns"] for e in episodes]))}
    curve = [gated_stop(episodes, t, transform) for t in grid]
    ok = [c for c in curve if c["dice"] >= learned["dice"] - 1e-9 and c["turns"] < learned["turns"] - 1e-9]
    best = min(ok, key=lambda c: (c["turns"], -c["dice"], -c["threshold"])) if ok else None
    return {"threshold": None if best is None else best["threshold"], "learned": learned, "gated": best,
            "curve": curve}
