"""``EpisodeSettings``: how an episode is played, defined once for serving, training and evaluation.

A policy learns the states its episodes produce. If training windowed CT at 40/400 HU and the server
at 50/350, or training replaced the mask on every click while the server merges clicks locally, the
served policy meets states it never saw (train/serve drift). So every consumer builds its episodes
from one ``EpisodeSettings``:

- the app: ``--conf prompting / local_radius / max_turns / ct_window / box_jitter``
  (``lib.configs.app_conf.AppConf.episode``), for the infer tasks and the in-server trainers alike;
- the recipes (``configs/*.yaml``): an ``episode:`` mapping nested in each config;
- the command lines: ``add_episode_args`` / ``episode_from_args`` override a recipe's values.

Trained policies (``policy.json``) and adapted segmenter weights (``adapted.json``) record
``EpisodeSettings.record(backend)`` under the conf keys' names; ``EpisodeSettings.differences`` tells the
server what it serves differently from what a checkpoint was trained with.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lib.agent.clicks import DEFAULT_BOX_JITTER
from lib.data.intensity import DEFAULT_CT_WINDOW, Windowing
from lib.data.slices import windowing_for
from lib.tools.interaction import Prompting
from lib.tools.local_merge import DEFAULT_LOCAL_RADIUS

#: which prompts reach each backend per turn. LiteMedSAM: box + all clicks without logits scored best of
#: the three modes (BENCHMARKS.md); SAM 2.1 / MedSAM2 keep their logits, as their own predictors do.
DEFAULT_PROMPTING = {"litemedsam": "all", "sam2": "all_logits", "medsam2": "all_logits"}
#: executed Box/Point actions per episode: the reference MedSAM-Agent's inference cap
DEFAULT_MAX_TURNS = 5
#: the keys a checkpoint records and the server compares (the ``--conf`` keys' names)
RECORDED_KEYS = ("prompting", "local_radius", "max_turns", "ct_window")


@dataclass(frozen=True)
class EpisodeSettings:
    """The rules every agent episode is played by, whoever plays it.

    Attributes:
        prompting: backend name -> which prompts reach that backend each turn (``Prompting`` values).
            A plain string in a recipe applies to every backend; a mapping is merged over the defaults.
        local_radius: a click's answer changes the mask only near the click, within this multiple of the
            mask's equivalent radius (``lib.tools.local_merge``); 0 = off, the answer replaces the mask.
        max_turns: turn budget of one slice's episode, in executed Box/Point actions (Stop is not a turn).
        ct_window: (level, width) in HU applied to CT slices before a tool or a policy sees them; other
            modalities use robust percentiles (``lib.data.slices.windowing_for``).
        box_jitter: side fraction by which a simulated hand-drawn box's sides move (hand-off starts, expert
            boxes, evaluation), uniform +/-.
    """

    prompting: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PROMPTING))
    local_radius: float = DEFAULT_LOCAL_RADIUS
    max_turns: int = DEFAULT_MAX_TURNS
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW
    box_jitter: float = DEFAULT_BOX_JITTER

    def __post_init__(self) -> None:
        raw = self.prompting
        merged = dict.fromkeys(DEFAULT_PROMPTING, raw) if isinstance(raw, str) else {**DEFAULT_PROMPTING,
                                                                                    **dict(raw or {})}
        for backend, mode in merged.items():
            try:
                merged[backend] = Prompting(mode).value
            except ValueError:
                raise ValueError(f"prompting: {backend}={mode!r}; use one of "
                                 f"{', '.join(p.value for p in Prompting)}") from None
        object.__setattr__(self, "prompting", merged)
        r = self.local_radius
        if r is None:
            r = 0.0  # a checkpoint written before settings were unified records "no merge" as null
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or r < 0:
            raise ValueError(f"local_radius must be a number >= 0 (0 = off), got {self.local_radius!r}")
        object.__setattr__(self, "local_radius", float(r))
        t = self.max_turns
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 1 <= t <= 20:
            raise ValueError(f"max_turns must be an integer between 1 and 20, got {t!r}")
        object.__setattr__(self, "max_turns", int(t))
        try:
            level, width = (float(v) for v in self.ct_window)
        except (TypeError, ValueError):
            raise ValueError(f"ct_window must be (level, width) in HU, e.g. (40, 400), got {self.ct_window!r}") \
                from None
        if not (math.isfinite(level) and math.isfinite(width) and width > 0):
            raise ValueError(f"ct_window width must be > 0 HU and both values finite, got {self.ct_window!r}")
        object.__setattr__(self, "ct_window", (level, width))
        j = self.box_jitter
        if isinstance(j, bool) or not isinstance(j, numbers.Real) or not 0 <= j < 0.5:
            raise ValueError(f"box_jitter must be a side fraction in [0, 0.5), got {j!r}")
        object.__setattr__(self, "box_jitter", float(j))

    # -- what an episode needs -------------------------------------------------------------------------
    def prompting_for(self, backend: str) -> Prompting:
        """The prompting mode for ``backend`` (unknown backends, e.g. the test double, get LiteMedSAM's)."""
        return Prompting(self.prompting.get(backend, self.prompting["litemedsam"]))

    @property
    def merge_radius(self) -> float | None:
        """``local_radius`` in the convention of ``EnvConfig`` / ``Interaction``: None = no local merge."""
        return self.local_radius or None

    def env_config(self, backend: str, **rules: Any):
        """``EnvConfig`` for episodes over ``backend``; ``rules`` sets its reward/penalty fields."""
        from lib.agent.env import EnvConfig

        return EnvConfig(max_turns=self.max_turns, prompting=self.prompting_for(backend),
                         local_radius=self.merge_radius, **rules)

    def windowing(self, modality: str) -> Windowing:
        """How a slice of ``modality`` is mapped to [0, 1] before a tool or a policy sees it."""
        return windowing_for(modality, self.ct_window)

    def replace(self, **changes: Any) -> EpisodeSettings:
        """A copy with ``changes`` applied; None values are ignored (an unset command-line flag)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    # -- provenance ------------------------------------------------------------------------------------
    def record(self, backend: str) -> dict[str, Any]:
        """What a checkpoint trained over ``backend`` records, under the ``--conf`` keys' names."""
        return {"prompting": self.prompting_for(backend).value, "local_radius": self.local_radius,
                "max_turns": self.max_turns, "ct_window": list(self.ct_window)}

    def differences(self, recorded: Mapping[str, Any] | None, backend: str,
                    keys: tuple[str, ...] = RECORDED_KEYS) -> list[str]:
        """Human-readable ``key: trained X, served Y`` lines where ``recorded`` (a checkpoint's ``record``)
        differs from these settings in ``keys``; keys the checkpoint did not record are reported as unknown."""
        if not recorded:
            return ["the checkpoint does not record its episode settings (trained before they were recorded)"]
        served = self.record(backend)
        out = []
        for key in keys:
            if key not in recorded:
                out.append(f"{key}: not recorded, served {served[key]}")
                continue
            trained = recorded[key]
            same = (list(map(float, trained)) == served[key] if key == "ct_window"
                    else float(trained or 0) == served[key] if key == "local_radius" else trained == served[key])
            if not same:
                out.append(f"{key}: trained {trained}, served {served[key]}")
        return out


def add_episode_args(parser: argparse.ArgumentParser) -> None:
    """``--prompting --local-radius --max-turns --ct-window --box-jitter``, all defaulting to None = keep the
    recipe's value (or ``EpisodeSettings``' default, which is what the app serves)."""
    d = EpisodeSettings()
    g = parser.add_argument_group("episode settings (default: what the app serves)")
    g.add_argument("--prompting", default=None, choices=[m.value for m in Prompting],
                   help=f"which prompts reach the tool each turn (served: {d.prompting})")
    g.add_argument("--local-radius", type=float, default=None,
                   help=f"local merge of each click's answer, multiples of the mask's equivalent radius "
                        f"(0 = off; served {d.local_radius})")
    g.add_argument("--max-turns", type=int, default=None, help=f"turn budget per slice (served {d.max_turns})")
    g.add_argument("--ct-window", default=None, metavar="LEVEL,WIDTH",
                   help=f"CT window in HU (served {d.ct_window[0]:g},{d.ct_window[1]:g})")
    g.add_argument("--box-jitter", type=float, default=None,
                   help=f"side fraction of a simulated hand-drawn box's jitter (default {d.box_jitter})")


def episode_from_args(args: argparse.Namespace, base: EpisodeSettings | None = None,
                      backend: str | None = None) -> EpisodeSettings:
    """``base`` (default: the served settings) with the flags of ``add_episode_args`` that were given.
    ``--prompting`` applies to ``backend`` (every backend when None)."""
    base = base or EpisodeSettings()
    window = getattr(args, "ct_window", None)
    if isinstance(window, str):
        window = parse_ct_window(window)
    prompting = getattr(args, "prompting", None)
    if prompting is not None:
        prompting = {**base.prompting, backend: prompting} if backend else prompting
    return base.replace(prompting=prompting, local_radius=getattr(args, "local_radius", None),
                        max_turns=getattr(args, "max_turns", None), ct_window=window,
                        box_jitter=getattr(args, "box_jitter", None))


def parse_ct_window(text: str) -> tuple[float, float]:
    """``"40,400"`` -> (40.0, 400.0); ValueError saying the expected form."""
    try:
        level, width = (float(x) for x in str(text).split(","))
    except ValueError:
        raise ValueError(f"ct_window {text!r}: expected 'level,width' in HU, e.g. 40,400") from None
    return level, width
