"""Fit a compact policy's quality calibration on validation targets (``scripts/calibrate_quality.py`` and the
in-server trainers ``agent_sft`` / ``agent_rl`` call it after training).

The policy plays every validation (slice, label) target in hand-off and autonomous mode with the served episode
settings (``lib.agent.evaluation.evaluate_targets``: one encoding per slice); each mask it judges gives (value-head
quality, the tool's IoU output, true IoU). ``lib.agent.quality.fit_blend`` turns them into the served calibration;
the quality-gated stop threshold is chosen on the hand-off episodes (``choose_stop_threshold``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lib.agent.evaluation import MODES, PolicyContext, Run, evaluate_targets
from lib.agent.policies.compact import CompactPolicy
from lib.agent.quality import (
    QualityCalibration,
    calibration_metrics,
    choose_stop_threshold,
    fit_blend,
    fit_isotonic,
    nan_to_none,
)
from lib.agent.settings import EpisodeSettings
from lib.data.dataset import SliceSample
from lib.tools.base import Tool

#: fewest judged masks worth fitting a calibration on
MIN_PAIRS = 10


@dataclass
class CalibrationFit:
    """What ``fit_calibration`` measured and fitted.

    Attributes:
        calibration: the served calibration (``fitted_on`` holds the data, metrics and the stop threshold).
        before / tool / after: ``calibration_metrics`` of the raw value head, of the tool's IoU output and of the
            calibrated quality, on the fitting pairs (in-sample: measure held-out cases with scripts/evaluate.py).
        stop: ``choose_stop_threshold`` on the hand-off episodes (None without hand-off mode).
        cases: the case ids whose targets were played.
    """

    calibration: QualityCalibration
    before: dict[str, Any]
    tool: dict[str, Any]
    after: dict[str, Any]
    stop: dict[str, Any] | None
    cases: list[str]

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers for training stats (no reliability bins, no curve)."""
        f = self.calibration.fitted_on
        return {"n": f.get("n"), "cases": self.cases, "before": f.get("before"), "tool": f.get("tool"),
                "after": f.get("after"), "stop_threshold": f.get("stop_threshold")}


def fit_calibration(policy: CompactPolicy, tool: Tool, groups: Sequence[Iterable[SliceSample]],
                    settings: EpisodeSettings | None = None, *, modes: Sequence[str] = MODES, seed: int = 0,
                    inputs: str = "policy,tool", meta: Mapping[str, Any] | None = None,
                    progress: Callable[[dict], None] | None = None) -> CalibrationFit:
    """Play ``policy`` (its raw value head) on the validation targets and fit its calibration.

    Args:
        policy: the compact policy; it is played with ``calibration`` None (raw qualities) and left unchanged.
        tool: the segmenter it drives.
        groups: validation targets, as a list of iterables (one evaluation each, e.g. one per dataset).
        settings: episode settings (default: what the app serves).
        modes: subset of ("handoff", "autonomous").
        inputs: "policy,tool" (blend, ``fit_blend``) or "policy" (value head alone, isotonic).
        meta: extra facts stored in ``fitted_on`` (data folders, backend, ...).

    Raises:
        ValueError: fewer than ``MIN_PAIRS`` judged masks, unknown mode or inputs.
    """
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {modes!r}")
    if inputs not in ("policy,tool", "policy"):
        raise ValueError(f"inputs must be 'policy,tool' or 'policy', got {inputs!r}")
    settings = settings or EpisodeSettings()
    saved, policy.calibration = policy.calibration, None
    try:
        ctx = PolicyContext(settings)
        ctx.loaded[("compact", "<policy>")] = policy
        runs = [Run("compact", m, "<policy>", name=m) for m in modes]
        episodes: dict[str, list[dict]] = {m: [] for m in modes}
        cases: set[str] = set()
        for group in groups:
            ev = evaluate_targets(tool, group, runs, settings, seed=seed, measure_noc=False, context=ctx,
                                  desc="calibrate quality")
            cases |= {r["case_id"] for r in ev.rows}
            for m in modes:
                episodes[m] += ev.runs[m]
            if progress is not None:
                progress({"stage": "calibrate", "targets": sum(len(v) for v in episodes.values())})
    finally:
        policy.calibration = saved
    pairs = [p for m in modes for e in episodes[m] for p in e["quality_pairs"]]
    if len(pairs) < MIN_PAIRS:
        raise ValueError(f"only {len(pairs)} judged masks on {len(cases)} validation case(s); a quality calibration "
                         f"needs at least {MIN_PAIRS}")
    q, true, t = [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]
    cal = fit_blend(q, t, true) if inputs == "policy,tool" else fit_isotonic(q, true)
    before, tool_m = calibration_metrics(q, true), calibration_metrics(t, true)
    after = calibration_metrics([cal(a, b) for a, b in zip(q, t, strict=True)], true)
    stop = choose_stop_threshold(episodes["handoff"], transform=cal) if "handoff" in episodes else None

    def brief(m: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in nan_to_none(m).items() if k != "bins"}

    fitted_on = {**dict(meta or {}), "cases": sorted(cases), "modes": list(modes), "seed": seed, "n": len(pairs),
                 "before": brief(before), "tool": brief(tool_m), "after": brief(after),
                 "stop_threshold": None if stop is None else stop["threshold"],
                 "stop_choice": None if stop is None else {"learned": stop["learned"], "gated": stop["gated"]},
                 "fitted_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cal = QualityCalibration(cal.x, cal.y, cal.method, fitted_on, cal.inputs, cal.weights, cal.fallback)
    return CalibrationFit(cal, before, tool_m, after, stop, sorted(cases))
