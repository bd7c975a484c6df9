"""How well a policy judges its own mask: quality pairs, calibration metrics and the calibrator it serves with.

A policy that predicts a quality (``CompactPolicy``'s value head) states, before each decision, the IoU it
expects between the mask it is shown and the reference; the tool states its own (LiteMedSAM's / SAM's IoU head,
``ToolSession`` scores). ``quality_pairs`` reads (predicted, true IoU) pairs from a trajectory;
``calibration_metrics`` measures them (Spearman rank correlation, expected calibration error in 10 equal-width
bins, mean absolute error); ``QualityCalibration`` is what the policy serves: a logistic blend of the value head
and the tool's IoU output (weights fitted on validation pairs), then a monotone isotonic map, so that a served
``quality`` of 0.8 means "about 0.8 IoU on cases like the validation cases". On the sample studies the tool's
IoU head ranks masks far better than the policy's value head (Spearman 0.76 vs 0.40 on held-out phantom masks),
so the blend leans on it; the value head alone is the fallback where the tool gives no score.

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
#: what a calibration may blend: the policy's value head, the tool's own IoU output
INPUTS = ("policy", "tool")
_EPS = 1e-4


def _logit(v: float) -> float:
    v = min(max(float(v), _EPS), 1 - _EPS)
    return math.log(v / (1 - v))


@dataclass(frozen=True)
class QualityCalibration:
    """Raw predictions -> calibrated quality: an optional logistic blend of the inputs, then a monotone
    non-decreasing map piecewise linear through knots.

    Attributes:
        x: blended-score knots, strictly increasing, in [0, 1].
        y: calibrated value at each knot, non-decreasing, in [0, 1]; below ``x[0]`` / above ``x[-1]`` the end
            values hold (no extrapolation).
        method: how the map was fitted ("isotonic").
        fitted_on: JSON-ready facts about the fit (data, split, number of pairs, metrics before and after).
        inputs: what is blended: ("policy",) = the value head alone; ("policy", "tool") = value head and the
            tool's IoU output.
        weights: blend on the logit scale, ``sigmoid(w0 + sum_i w_i * logit(input_i))``; empty = the single input
            as it is.
        fallback: the calibration to use when an input is missing (a tool without an IoU output).
    """

    x: tuple[float, ...]
    y: tuple[float, ...]
    method: str = "isotonic"
    fitted_on: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ("policy",)
    weights: tuple[float, ...] = ()
    fallback: QualityCalibration | None = None

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
        if not self.inputs or any(i not in INPUTS for i in self.inputs) or len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"QualityCalibration.inputs must be distinct names from {INPUTS}, got {self.inputs!r}")
        if self.weights and len(self.weights) != len(self.inputs) + 1:
            raise ValueError(f"QualityCalibration.weights needs an intercept and one weight per input "
                             f"({len(self.inputs) + 1}), got {len(self.weights)}")
        if not self.weights and len(self.inputs) > 1:
            raise ValueError("blending several inputs needs weights")

    def blend(self, policy: float | None, tool: float | None = None) -> float | None:
        """The blended raw score in [0, 1] (None when an input it needs is missing)."""
        values = {"policy": policy, "tool": tool}
        got = [values[i] for i in self.inputs]
        if any(v is None or not math.isfinite(float(v)) for v in got):
            return None
        if not self.weights:
            return float(got[0])
        z = self.weights[0] + sum(w * _logit(v) for w, v in zip(self.weights[1:], got, strict=True))
        return 1.0 / (1.0 + math.exp(-z))

    def __call__(self, q: float, tool: float | None = None) -> float:
        """The calibrated quality of the value head's ``q`` (and the tool's IoU output ``tool`` of the same mask);
        the fallback (or ``q`` unmapped) when an input is missing."""
        s = self.blend(q, tool)
        if s is None:
            return self.fallback(q) if self.fallback is not None else float(q)
        return float(np.interp(s, self.x, self.y))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "inputs": list(self.inputs), "weights": [float(w) for w in self.weights],
                "x": [float(v) for v in self.x], "y": [float(v) for v in self.y], "fitted_on": dict(self.fitted_on),
                "fallback": None if self.fallback is None else self.fallback.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QualityCalibration:
        try:
            fallback = d.get("fallback")
            return cls(tuple(float(v) for v in d["x"]), tuple(float(v) for v in d["y"]),
                       str(d.get("method", "isotonic")), dict(d.get("fitted_on") or {}),
                       tuple(d.get("inputs") or ("policy",)), tuple(float(w) for w in d.get("weights") or ()),
                       None if not fallback else cls.from_dict(fallback))
        except (KeyError, TypeError) as e:
            raise ValueError(f"a quality calibration needs 'x' and 'y' knot lists, got {dict(d)!r}") from e


def fit_blend(policy: Sequence[float], tool: Sequence[float], true: Sequence[float],
              fitted_on: Mapping[str, Any] | None = None) -> QualityCalibration:
    """The served calibration: logistic blend of value head and tool IoU output (cross-entropy against the true
    IoU, scipy), then isotonic; its fallback is the value head alone, isotonic. Pairs with a missing tool score
    only fit the fallback.

    Raises:
        ValueError: fewer than 10 complete pairs.
    """
    from scipy.optimize import minimize

    q, s, t = (np.asarray(v, dtype=float).ravel() for v in (policy, tool, true))
    if not q.shape == s.shape == t.shape:
        raise ValueError("policy, tool and true qualities must pair up one to one")
    fallback = fit_isotonic(q, t)
    ok = np.isfinite(q) & np.isfinite(s) & np.isfinite(t)
    if ok.sum() < 10:
        raise ValueError(f"fitting a blended quality calibration needs at least 10 complete pairs, got {ok.sum()}")
    X = np.stack([np.ones(ok.sum()), [_logit(v) for v in q[ok]], [_logit(v) for v in s[ok]]], axis=1)
    y = np.clip(t[ok], 0, 1)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        p = np.clip(1 / (1 + np.exp(-(X @ w))), 1e-7, 1 - 1e-7)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()), X.T @ (p - y) / len(y)

    w = minimize(loss, np.array([0.0, 0.5, 0.5]), jac=True, method="L-BFGS-B").x
    blended = QualityCalibration((0.0, 1.0), (0.0, 1.0), inputs=("policy", "tool"), weights=tuple(float(v) for v in w))
    scores = [blended.blend(a, b) for a, b in zip(q[ok], s[ok], strict=True)]
    iso = fit_isotonic(scores, t[ok])
    return QualityCalibration(iso.x, iso.y, "isotonic", dict(fitted_on or {}, n=int(ok.sum())), ("policy", "tool"),
                              blended.weights, fallback)


def fit_isotonic(predicted: Sequence[float], true: Sequence[float],
                 fitted_on: Mapping[str, Any] | None = None) -> QualityCalibration:
    """Isotonic regression of true IoU on predicted quality (sklearn), as a ``QualityCalibration`` of one input.

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
                  stopped_by_budget: bool = False,
                  scores: Sequence[float] | None = None) -> list[tuple[float, float, float]]:
    """(predicted quality, true IoU, the tool's IoU output) of every mask a policy judged in one episode.

    Args:
        actions: the episode's actions (``Trajectory.actions``: the final Stop included, invalid ones marked).
        qualities: per action, the quality the policy predicted for the mask it was shown BEFORE that action
            (``Trajectory.qualities``; None where the policy was not asked, e.g. the user's hand-off box).
        ious: true IoU after each EXECUTED Box/Point action (``Trajectory.ious``).
        final_quality: the predicted quality of the final mask (``Trajectory.final_quality``).
        stopped_by_budget: the turn budget ended the episode, so ``final_quality`` judged a mask no decision saw.
        scores: the tool's IoU output after each executed action (``Trajectory.scores``); NaN where absent.

    Decisions on an empty mask (nothing executed yet: an autonomous first turn) are left out: the answer there
    is trivially 0 and would flatter the correlation.
    """
    judged = [(q, n) for q, n in judged_masks(actions, qualities) if n <= len(ious)]
    executed = sum(1 for a in actions if _executed(a))
    if stopped_by_budget and final_quality is not None and 0 < executed <= len(ious):
        judged.append((float(final_quality), executed))
    return [(q, float(ious[n - 1]), float(scores[n - 1]) if scores is not None and n <= len(scores) else float("nan"))
            for q, n in judged]


def judged_masks(actions: Sequence[Mapping[str, Any]], qualities: Sequence[float | None]) -> list[tuple[float, int]]:
    """(predicted quality, n) per policy decision on a non-empty mask: the mask judged is the one after the n-th
    executed Box/Point action (n >= 1). Arguments as in ``quality_pairs``."""
    out, executed = [], 0
    for a, q in zip(actions, qualities, strict=False):
        if q is not None and executed > 0:
            out.append((float(q), executed))
        executed += _executed(a)
    return out


def _executed(action: Mapping[str, Any]) -> bool:
    return action.get("type") in ("box", "point") and "invalid" not in action


def learned_stop(episodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean Dice and turns of recorded episodes as the policy ended them (``score_episode`` results)."""
    return {"dice": float(np.mean([e["final_dice"] for e in episodes])),
            "turns": float(np.mean([e["turns"] for e in episodes]))}


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
        hit = next((d for d in ep.get("decisions", [])
                    if (transform(d["quality"], d.get("tool")) if transform else d["quality"]) >= threshold), None)
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
    learned = learned_stop(episodes)
    curve = [gated_stop(episodes, t, transform) for t in grid]
    ok = [c for c in curve if c["dice"] >= learned["dice"] - 1e-9 and c["turns"] < learned["turns"] - 1e-9]
    best = min(ok, key=lambda c: (c["turns"], -c["dice"], -c["threshold"])) if ok else None
    return {"threshold": None if best is None else best["threshold"], "learned": learned, "gated": best,
            "curve": curve}
