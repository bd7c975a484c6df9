"""``SegmentationEnv``: one slice, one target, a promptable segmenter, turn by turn (Gymnasium contract).

The environment owns the episode's prompt state (an ``Interaction`` over ONE tool session shared by
every action of the episode; the released MedSAM-Agent code opened one session per tool) and
scores each mask against the ground truth when one is given. Policies only ever see pixels, masks and
the turn counter; oracle policies (the expert) may additionally *look ahead* with ``peek``.

Action encodings accepted by ``step`` (all end up as a ``lib.agent.actions`` value):

- an ``Action`` (``Box`` / ``Point`` / ``Stop``) in PIXELS of the slice, ``(x, y)`` = (column, row);
- a ``str``: the MedSAM-Agent tool-call text, parsed with ``lib.agent.grammar.parse`` (0..999 frame);
- an integer vector from ``action_space``: ``[kind, gx0, gy0, gx1, gy1, positive]`` with ``kind`` 0 = stop,
  1 = box ``(gx0, gy0, gx1, gy1)``, 2 = point ``(gx0, gy0)`` (``gx1, gy1`` ignored), ``positive`` 1/0 for a
  point. Coordinates are grammar integers 0..999 (``lib.agent.coords``), so the space does not depend
  on the slice size and a random sample is a plausible action on any slice.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lib.agent import coords
from lib.agent.actions import Action, Box, Point, Stop, from_dict, to_dict, validate
from lib.agent.grammar import GrammarError, parse
from lib.agent.metrics import dice, iou
from lib.agent.rewards import RewardConfig, episode_reward
from lib.tools.base import BOX, MASK_INPUT, POINT, SegOutput, Tool, ToolSession
from lib.tools.interaction import Interaction, Prompting
from lib.tools.local_merge import check_local_radius

#: ``kind`` codes of the encoded action vector (index 0 of an ``action_space`` sample)
KIND_STOP, KIND_BOX, KIND_POINT = 0, 1, 2
#: ``kind`` code of ``obs["last_action"]`` before the first executed action of an episode
KIND_NONE = 3
_GRID = coords.GRAMMAR_MAX + 1
#: reset option keys the environment understands
OPTION_KEYS = ("image", "gt", "target", "session", "meta", "prior")


@dataclass(frozen=True)
class EnvConfig:
    """Episode rules of ``SegmentationEnv``.

    Attributes:
        max_turns: turn budget = Box/Point actions issued (valid or not). Default 5, the reference's
            inference cap of executed actions (as in the released MedSAM-Agent code); Stop is not a turn.
        prompting: which prompts reach the tool each turn (``Prompting``). Default ``newest`` = the
            reference (newest prompt + previous logits); ``all`` = box + every click, no logits.
        local_radius: None = a click's answer replaces the mask; else it is merged locally (``Interaction``,
            ``lib.tools.local_merge``), in multiples of the mask's equivalent radius.
        iou_gain_weight: weight of the per-step reward ``IoU_t - IoU_{t-1}`` (dense shaping; needs gt).
        episode_weight: weight of ``rewards.episode_reward`` added on the final step (needs gt).
        invalid_penalty: reward subtracted for an invalid action (off-image, empty box, unsupported by
            the backend, unparseable text). 0.1 is the size of a typical good click's IoU gain, so a
            policy learns that a wasted turn costs about one useful action.
        reward: weights of the episode reward (defaults = the reference's).
    """

    max_turns: int = 5
    prompting: Prompting = Prompting.NEWEST
    local_radius: float | None = None
    iou_gain_weight: float = 1.0
    episode_weight: float = 1.0
    invalid_penalty: float = 0.1
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if isinstance(self.max_turns, bool) or not isinstance(self.max_turns, int) or self.max_turns < 1:
            raise ValueError(f"EnvConfig.max_turns must be an int >= 1 (Box/Point actions), got {self.max_turns!r}")
        try:
            object.__setattr__(self, "prompting", Prompting(self.prompting))
        except ValueError:
            options = ", ".join(p.value for p in Prompting)
            raise ValueError(f"EnvConfig.prompting must be one of {options}, got {self.prompting!r}") from None
        check_local_radius(self.local_radius, "EnvConfig.local_radius")
        for name in ("iou_gain_weight", "episode_weight", "invalid_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"EnvConfig.{name} must be a finite number >= 0, got {v!r}; use 0 to turn it off")
        if not isinstance(self.reward, RewardConfig):
            raise TypeError(f"EnvConfig.reward must be a RewardConfig, got {type(self.reward).__name__}")


def encode_action(action: Action | None, shape: tuple[int, int]) -> np.ndarray:
    """Action in pixels of an (H, W) slice -> int64 vector ``[kind, gx0, gy0, gx1, gy1, positive]``.

    None encodes "no action yet" (``KIND_NONE``). Coordinates go through ``lib.agent.coords``.
    """
    vec = np.zeros(6, dtype=np.int64)
    if action is None:
        vec[0] = KIND_NONE
    elif isinstance(action, Stop):
        vec[0] = KIND_STOP
    elif isinstance(action, Box):
        vec[0] = KIND_BOX
        vec[1:3] = coords.xy_to_grammar(int(action.x0), int(action.y0), shape)
        vec[3:5] = coords.xy_to_grammar(int(action.x1), int(action.y1), shape)
    elif isinstance(action, Point):
        vec[0] = KIND_POINT
        vec[1:3] = coords.xy_to_grammar(int(action.x), int(action.y), shape)
        vec[5] = int(bool(action.positive))
    else:
        raise TypeError(f"{action!r} is not an action; use Box, Point or Stop")
    return vec


def decode_action(vec: Any, shape: tuple[int, int]) -> Action:
    """``action_space`` sample (``[kind, gx0, gy0, gx1, gy1, positive]``, grammar 0..999) -> pixel action.

    ValueError naming the problem for a wrong length, a non-integer or out-of-range entry, an unknown kind.
    """
    arr = np.asarray(vec)
    if arr.shape != (6,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"an encoded action is 6 integers [kind, gx0, gy0, gx1, gy1, positive], got {vec!r}")
    kind, gx0, gy0, gx1, gy1, pos = (int(v) for v in arr)
    if not all(0 <= v <= coords.GRAMMAR_MAX for v in (gx0, gy0, gx1, gy1)):
        raise ValueError(f"encoded coordinates must be grammar integers 0..999, got {[gx0, gy0, gx1, gy1]}")
    if kind == KIND_STOP:
        return Stop()
    if kind == KIND_BOX:
        x0, y0 = coords.grammar_to_xy(gx0, gy0, shape)
        x1, y1 = coords.grammar_to_xy(gx1, gy1, shape)
        return Box(x0, y0, x1, y1)
    if kind == KIND_POINT:
        if pos not in (0, 1):
            raise ValueError(f"encoded point polarity must be 1 (positive) or 0 (negative), got {pos}")
        x, y = coords.grammar_to_xy(gx0, gy0, shape)
        return Point(x, y, pos == 1)
    raise ValueError(f"encoded action kind must be 0 (stop), 1 (box) or 2 (point), got {kind}")


def clone_interaction(inter: Interaction) -> Interaction:
    """A copy of an episode's prompt state over the SAME session (the embedding is not copied).

    Prompt lists are copied, the last ``SegOutput`` is shared (it is never mutated), so applying an
    action to the clone leaves ``inter`` untouched: this is how an oracle tries an action without
    committing it.
    """
    return Interaction(
        inter.session,
        prompting=inter.prompting,
        box=inter.box,
        points=list(inter.points),
        labels=list(inter.labels),
        last=inter.last,
        local_radius=inter.local_radius,
    )


def apply_action(inter: Interaction, action: Box | Point) -> SegOutput:
    """Send one Box/Point to an ``Interaction`` (mutating it); returns the tool's answer."""
    if isinstance(action, Box):
        return inter.add_box(action.as_tuple())
    return inter.add_point(int(action.x), int(action.y), bool(action.positive))


class SegmentationEnv(gym.Env):
    """Interactive segmentation of one target on one 2D slice by a promptable segmenter.

    ## Description
    Each episode is one (slice, target) pair. The tool encodes the slice once at ``reset`` (or a
    pre-encoded session is given); every action of the episode then costs decoder time only. The mask
    the agent sees is the tool's answer to the last executed action (Stop does not change it).

    ## Action Space
    ``MultiDiscrete([3, 1000, 1000, 1000, 1000, 2])``: ``[kind, gx0, gy0, gx1, gy1, positive]`` with kind
    0 = stop, 1 = box, 2 = point, coordinates as grammar integers 0..999 of the slice (see the module
    docstring). ``step`` also takes an ``Action`` in pixels or the tool-call text of a language policy.

    ## Observation Space
    ``Dict``: ``image`` (H, W) float32 in [0, 1] (row-major ``image[y, x]``; RGB input is shown as its
    grey mean), ``mask`` (H, W) uint8 in {0, 1} (the current mask), ``turn`` Discrete(max_turns + 1) (turns
    used), ``last_action`` = the last EXECUTED action encoded like the action space, kind 3 = none yet.
    With ``shape`` given the space is fixed; without it the image/mask boxes are re-declared at every
    ``reset`` to the episode's slice shape (slices differ in size; vectorised envs need ``shape``).

    ## Rewards
    Per step: ``iou_gain_weight * (IoU_t - IoU_{t-1})`` for an executed action, ``-invalid_penalty`` for an
    invalid one, 0 for Stop. On the final step (Stop or budget) ``episode_weight * episode_reward`` is added
    (``lib.agent.rewards``: the reference reward by default). Without ground truth only the invalid
    penalty applies. Every unweighted term is in ``info["reward_terms"]`` (episode terms prefixed
    ``episode/``).

    ## Starting State
    Empty mask, no prompts, ``turn = 0``. ``reset(seed=..., options={"image": (H, W) float [0, 1] or
    (H, W, 3) uint8 or a ToolSession, "gt": (H, W) bool or None, "target": label name, "session":
    pre-encoded ToolSession of that image, "meta": dict copied to info, "prior": (H, W) bool or None})``.
    ``prior`` is the neighbouring slice's final mask when the episode continues a structure from there (a volume
    episode's propagated slices): what the structure looked like one slice away, for a policy that compares the
    current mask with it; it is not a prompt and the tool never sees it. Without an image the
    ``sampler`` given at construction draws the options with ``self.np_random``.

    ## Episode End
    ``terminated`` on Stop; ``truncated`` when ``max_turns`` Box/Point actions were issued (valid or
    invalid; an invalid action is penalised, reported in ``info["invalid"]`` and counts as a turn).

    ## Arguments
    ``tool``: the segmenter (``lib.tools.base.Tool``); ``config``: ``EnvConfig``; ``shape``: fixed (H, W)
    of every episode, or None; ``sampler``: ``rng -> options`` for resets without an image;
    ``render_mode``: None or "rgb_array" (grey slice with the mask in green at alpha 0.5).

    ``info`` (reset and step): ``target``, ``turn`` (turns used), ``executed`` (masks produced),
    ``invalid`` (reason or None), ``n_invalid``, ``actions`` (dicts of every issued action, invalid ones with
    an ``invalid`` key), ``masks`` (H, W) bool per executed action, ``scores`` (tool-predicted IoU),
    ``ious`` / ``dices`` per executed action (only with gt), ``encoder_ms``, ``encoder_cached``,
    ``decoder_ms`` (accumulated, look-ahead included), ``decoder_calls``, ``reward_terms``, ``stop_reason``
    ("stop", "budget" or None), ``episode_reward`` (final step, with gt), ``meta``, ``prior`` ((H, W) bool or
    None, as given at reset).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 1}

    def __init__(
        self,
        tool: Tool,
        config: EnvConfig | None = None,
        shape: tuple[int, int] | None = None,
        sampler: Callable[[np.random.Generator], Mapping[str, Any]] | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.tool = tool
        self.config = config or EnvConfig()
        caps = frozenset(getattr(tool, "capabilities", frozenset()))
        if self.config.prompting is not Prompting.ALL and MASK_INPUT not in caps:
            raise ValueError(
                f"backend {getattr(tool, 'name', tool)!r} cannot take previous logits, which prompting "
                f"{self.config.prompting.value!r} sends; use EnvConfig(prompting='all')"
            )
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.capabilities = caps
        self.fixed_shape = None if shape is None else (int(shape[0]), int(shape[1]))
        self.sampler = sampler
        self.action_space = spaces.MultiDiscrete([3, _GRID, _GRID, _GRID, _GRID, 2])
        self.observation_space = self._obs_space(self.fixed_shape or (1, 1))
        self.gt: np.ndarray | None = None
        self._inter: Interaction | None = None
        self._done = True

    # -- spaces ------------------------------------------------------------------------------
    def _obs_space(self, shape: tuple[int, int]) -> spaces.Dict:
        return spaces.Dict(
            {
                "image": spaces.Box(0.0, 1.0, shape=shape, dtype=np.float32),
                "mask": spaces.Box(0, 1, shape=shape, dtype=np.uint8),
                "turn": spaces.Discrete(self.config.max_turns + 1),
                "last_action": spaces.MultiDiscrete([4, _GRID, _GRID, _GRID, _GRID, 2]),
            }
        )

    # -- episode state -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the current episode's slice."""
        if self._inter is None:
            raise RuntimeError("no episode yet; call reset() first")
        return tuple(self._inter.session.shape)

    @property
    def session(self) -> ToolSession:
        """The current episode's tool session (one per episode, shared by all its actions)."""
        if self._inter is None:
            raise RuntimeError("no episode yet; call reset() first")
        return self._inter.session

    @property
    def interaction(self) -> Interaction:
        """The committed prompt state (read it, do not mutate it; use ``peek`` to try actions)."""
        if self._inter is None:
            raise RuntimeError("no episode yet; call reset() first")
        return self._inter

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool current mask."""
        return self.interaction.mask

    @property
    def decoder_ms(self) -> float:
        """Decoder milliseconds spent in this episode so far (look-ahead included)."""
        return float(getattr(self, "_decoder_ms", 0.0))

    def reset(
        self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        opts = dict(options or {})
        if opts.get("image") is None and opts.get("session") is None:
            if self.sampler is None:
                raise ValueError(
                    "reset needs options={'image': (H, W) float in [0, 1], 'gt': (H, W) bool, 'target': name} "
                    "(or a 'session'), or a sampler given to SegmentationEnv(sampler=...)"
                )
            opts = {**dict(self.sampler(self.np_random)), **opts}
        unknown = sorted(set(opts) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; known: {', '.join(OPTION_KEYS)}")
        image, session = opts.get("image"), opts.get("session")
        if isinstance(image, ToolSession):
            image, session = None, image
        pixels = None if image is None else self._check_image(image)
        shape = tuple(int(s) for s in (session.shape if session is not None else pixels.shape))
        if self.fixed_shape is not None and shape != self.fixed_shape:  # checked before paying the encoder
            raise ValueError(
                f"this env was built for {self.fixed_shape} slices but got {shape}; build it with shape=None "
                "for variable-size slices or resample the slice"
            )
        encoder_cached = session is not None
        if session is None:
            session = self.tool.start(image if np.asarray(image).ndim == 3 else pixels)
        if pixels is not None and pixels.shape != shape:
            raise ValueError(f"image {pixels.shape} and session {shape} differ; give the session of this image")
        if self.fixed_shape is None:
            self.observation_space = self._obs_space(shape)
        self._image = pixels if pixels is not None else np.zeros(shape, dtype=np.float32)
        self.gt = self._check_mask(opts.get("gt"), shape, "gt")
        self.target = "" if opts.get("target") is None else str(opts["target"])
        self.meta = dict(opts.get("meta") or {})
        self.prior = self._check_mask(opts.get("prior"), shape, "prior")
        self._inter = Interaction(session, prompting=self.config.prompting, local_radius=self.config.local_radius)
        self._done = False
        self._turn = 0
        self._n_invalid = 0
        self._last_action: Action | None = None
        self._actions: list[dict[str, Any]] = []
        self._executed: list[Action] = []
        self._masks: list[np.ndarray] = []
        self._scores: list[float] = []
        self._ious: list[float] = []
        self._dices: list[float] = []
        self._peeked: dict[Action, Interaction] = {}
        self._encoder_ms = 0.0 if encoder_cached else float(session.encoder_ms)
        self._encoder_cached = encoder_cached
        self._decoder_ms = 0.0
        self._decoder_calls = 0
        self._stop_reason: str | None = None
        empty = np.zeros(shape, dtype=bool)
        self._iou0 = iou(empty, self.gt) if self.gt is not None else None
        return self._obs(), self._info(invalid=None, terms={})

    def _check_image(self, image: Any) -> np.ndarray:
        img = np.asarray(image)
        if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
            return (img.astype(np.float32).mean(axis=2) / 255.0).astype(np.float32)
        if img.ndim != 2 or not np.issubdtype(img.dtype, np.floating):
            raise ValueError(
                f"image must be (H, W) float in [0, 1] or (H, W, 3) uint8, got {img.dtype} {img.shape}; "
                "window raw intensities with lib.data.intensity.Windowing first"
            )
        if img.size and (float(np.nanmin(img)) < 0.0 or float(np.nanmax(img)) > 1.0 or np.isnan(img).any()):
            raise ValueError("image values must lie in [0, 1]; window it with lib.data.intensity.Windowing first")
        return img.astype(np.float32, copy=False)

    @staticmethod
    def _check_mask(mask: Any, shape: tuple[int, int], name: str) -> np.ndarray | None:
        if mask is None:
            return None
        mask = np.asarray(mask)
        if mask.dtype != bool:
            raise TypeError(f"{name} must be an (H, W) bool mask, got dtype {mask.dtype}; convert with label == value")
        if mask.shape != shape:
            raise ValueError(f"{name} {mask.shape} must have the slice's (H, W) shape {shape}")
        return mask

    # -- acting ---------------------------------------------------------------------------------
    def _to_action(self, action: Any) -> tuple[Action | None, dict[str, Any], str | None]:
        """(action, record, invalid reason) for whatever the policy handed over."""
        shape = self.shape
        if isinstance(action, str):
            try:
                parsed = parse(action, shape)
            except GrammarError as err:
                return None, {"type": "text", "text": action[:500]}, f"unparseable tool call: {err.reason}"
        elif isinstance(action, (Box, Point, Stop)):
            parsed = action
        elif isinstance(action, Mapping):
            try:
                parsed = from_dict(dict(action))
            except ValueError as err:
                return None, {"type": "dict", "value": repr(action)[:500]}, str(err)
        else:
            try:
                parsed = decode_action(action, shape)
            except ValueError as err:
                return None, {"type": "encoded", "value": np.asarray(action).tolist()}, str(err)
        reason = validate(parsed, shape)
        if reason is None and isinstance(parsed, Box) and BOX not in self.capabilities:
            reason = f"backend {getattr(self.tool, 'name', '?')!r} does not take box prompts"
        if reason is None and isinstance(parsed, Point) and POINT not in self.capabilities:
            reason = f"backend {getattr(self.tool, 'name', '?')!r} does not take point prompts"
        record = to_dict(parsed) if reason is None else {"type": type(parsed).__name__.lower(), "value": repr(parsed)}
        return parsed, record, reason

    def peek(self, action: Box | Point) -> SegOutput:
        """The mask ``action`` WOULD give now, without committing it (for oracle look-ahead).

        The decoder time counts toward ``info["decoder_ms"]``; a following ``step`` with the same action
        reuses this answer instead of decoding again. ValueError for an invalid action.
        """
        if self._done:
            raise RuntimeError("the episode is over; call reset() before peek()")
        reason = validate(action, self.shape)
        if reason is not None:
            raise ValueError(reason)
        if action not in self._peeked:
            trial = clone_interaction(self._inter)
            out = apply_action(trial, action)
            self._decoder_ms += float(out.decoder_ms)
            self._decoder_calls += 1
            self._peeked[action] = trial
        return self._peeked[action].last

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._inter is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("this episode is over (terminated or truncated); call reset() to start another")
        parsed, record, reason = self._to_action(action)
        terms: dict[str, float] = {}
        terminated = False
        reward = 0.0
        if reason is None and isinstance(parsed, Stop):
            terminated = True
            self._actions.append(record)
        else:
            if reason is None:
                try:
                    self._commit(parsed)
                except ValueError as err:  # the backend's own prompt check; never crash an episode
                    reason = str(err)
            self._turn += 1
            if reason is None:
                self._actions.append(record)
                if self.gt is not None:
                    prev = self._ious[-2] if len(self._ious) > 1 else self._iou0
                    terms["iou_gain"] = self._ious[-1] - prev
                    reward += self.config.iou_gain_weight * terms["iou_gain"]
            else:
                self._n_invalid += 1
                self._actions.append({**record, "invalid": reason})
                terms["invalid"] = -1.0
                reward -= self.config.invalid_penalty
        truncated = not terminated and self._turn >= self.config.max_turns
        if terminated or truncated:
            self._done = True
            self._stop_reason = "stop" if terminated else "budget"
            if self.gt is not None:
                total, ep_terms = self._episode_reward(stopped=terminated)
                terms["episode"] = total
                terms.update({f"episode/{k}": v for k, v in ep_terms.items()})
                reward += self.config.episode_weight * total
        info = self._info(invalid=reason, terms=terms)
        return self._obs(), float(reward), terminated, truncated, info

    def _commit(self, action: Box | Point) -> None:
        trial = self._peeked.get(action)
        if trial is None:
            trial = clone_interaction(self._inter)
            out = apply_action(trial, action)
            self._decoder_ms += float(out.decoder_ms)
            self._decoder_calls += 1
        self._inter = trial
        self._peeked = {}  # look-aheads were from the previous state
        out = trial.last
        mask = np.asarray(out.mask, dtype=bool)
        self._last_action = action
        self._executed.append(action)
        self._masks.append(mask)
        self._scores.append(float(out.score))
        if self.gt is not None:
            self._ious.append(iou(mask, self.gt))
            self._dices.append(dice(mask, self.gt))

    def _episode_reward(self, stopped: bool) -> tuple[float, dict[str, float]]:
        n_actions = len(self._executed) + self._n_invalid
        extra = {"actions": list(self._executed), "masks": list(self._masks), "gt": self.gt}
        return episode_reward(self._ious, self._dices, n_actions, stopped, self.config.reward, extra)

    # -- views ------------------------------------------------------------------------------
    def _obs(self) -> dict[str, Any]:
        shape = self.shape
        return {
            "image": self._image.copy(),
            "mask": self._inter.mask.astype(np.uint8),
            "turn": int(self._turn),
            "last_action": encode_action(self._last_action, shape),
        }

    def _info(self, invalid: str | None, terms: dict[str, float]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "target": self.target,
            "turn": int(self._turn),
            "executed": len(self._executed),
            "invalid": invalid,
            "n_invalid": int(self._n_invalid),
            "actions": [dict(a) for a in self._actions],
            "masks": list(self._masks),
            "scores": list(self._scores),
            "encoder_ms": float(self._encoder_ms),
            "encoder_cached": bool(self._encoder_cached),
            "decoder_ms": float(self._decoder_ms),
            "decoder_calls": int(self._decoder_calls),
            "reward_terms": dict(terms),
            "stop_reason": self._stop_reason,
            "meta": dict(self.meta),
            "prior": self.prior,
        }
        if self.gt is not None:
            info["ious"] = list(self._ious)
            info["dices"] = list(self._dices)
            if "episode" in terms:
                info["episode_reward"] = terms["episode"]
        return info

    def render(self) -> np.ndarray | None:
        """"rgb_array": (H, W, 3) uint8, the grey slice with the current mask blended green at alpha 0.5."""
        if self.render_mode is None:
            return None
        grey = np.clip(self._image * 255.0, 0, 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        m = self._inter.mask
        rgb[m] = 0.5 * rgb[m] + 0.5 * np.array([0.0, 255.0, 0.0], dtype=np.float32)
        return rgb.astype(np.uint8)
