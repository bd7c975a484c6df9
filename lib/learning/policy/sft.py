"""SFT of the compact policy: behaviour cloning of expert trajectories (docs/architecture.md).

Every decision of an expert trajectory becomes one training state: the slice, the mask and prompts
BEFORE the decision, the turn, the target label; the target is the expert's action (Stop included) and,
for the value head, the IoU of that mask (0 for the empty mask of turn 0). The loss is the action's
negative log-likelihood under the policy's factorised distribution, with Gaussian label smoothing over
neighbouring coordinate bins (box corners and click cells are ordinal), plus ``quality_weight`` times
the binary cross-entropy of the value head against that IoU.

Train/validation split is BY CASE (``lib.data.dataset.split_cases``): slices of one volume are strongly
correlated, so a slice split would report memorisation as generalisation. The checkpoint kept is the one
with the lowest validation loss (the last one when there is no validation case).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lib.agent.actions import box_iou
from lib.agent.policies.compact import CompactPolicy
from lib.agent.policies.compact_codec import encode_action
from lib.agent.policies.compact_config import BOX, NEG, POS, CompactConfig
from lib.agent.policies.compact_dist import choose, log_prob, soft_targets
from lib.agent.policies.compact_state import resize_plane, state_features
from lib.agent.trajectories import Trajectory, read_jsonl
from lib.data.dataset import Case, split_cases
from lib.learning.curves import plot_curves, smooth
from lib.learning.loop import BestState, LoopConfig, MetricLog, TrainLoop, seeded, torch_threads
from lib.learning.policy.data import SliceImages, TrajectoryConfig, traj_key
from lib.learning.recipe import help_field, to_dict

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    """Behaviour cloning of the compact policy (``configs/sft.yaml``)."""

    data: TrajectoryConfig = help_field("expert trajectory generation (when trajectories are generated here)",
                                        factory=TrajectoryConfig)
    policy: CompactConfig = help_field("architecture of the compact policy (with the prior channel: volume episodes "
                                       "hand it the neighbour slice's mask)", factory=lambda: CompactConfig(prior=True))
    init: str | None = help_field(
        "a compact policy checkpoint folder to start from instead of random weights (None = from scratch). Its "
        "labels and architecture must be the recipe's, except that policy.prior may add the prior channel (its "
        "weights start at zero: the start decides as the checkpoint does)", None)
    val_fraction: float = help_field("share of CASES held out for validation (never slices of a training case)",
                                     0.2)
    steps: int = help_field("optimizer steps (upper bound; max_minutes may end sooner)", 700)
    batch_size: int = help_field("states per step", 16)
    lr: float = help_field("AdamW peak learning rate", 1e-3)
    weight_decay: float = help_field("AdamW weight decay", 0.01)
    warmup_steps: int = help_field("linear warm-up steps, then cosine decay to 10% of lr", 20)
    grad_clip: float = help_field("max global gradient norm (0 = off)", 1.0)
    coord_sigma: float = help_field("Gaussian label smoothing of box bins and click cells (in bins; 0 = one-hot)",
                                    1.0)
    quality_weight: float = help_field("weight of the value head's BCE against the IoU of the mask", 0.5)
    augment: float = help_field("intensity jitter of the image channel (gain 1 +/- a, offset +/- a/2); 0 = off",
                                0.1)
    shift: int = help_field(
        "random translation of a whole training state (image, mask, prompts and target), up to this many grid "
        "pixels in steps of 4 (one click cell); 0 = off. Expert data is small: 16 (6% of 256) multiplies the "
        "box-regression examples without changing what the target is", 16)
    min_redraw_gain: float = help_field(
        "imitate a box REDRAW (a box when one was already executed: the user's, the propagated one or an earlier "
        "redraw) only when it raised the Dice by at least this much; a smaller redraw is imitated as Stop. The "
        "expert picks its redraw with the ground truth in hand, so a redraw that gains a point or two is a "
        "tightening the policy cannot reproduce without it, and imitating it teaches redrawing as a habit; "
        "0 = imitate every redraw", 0.0)
    eval_every: int = help_field("steps between validation passes", 100)
    max_minutes: float = help_field("wall-clock budget of the optimisation in minutes (0 = none)", 14.0)
    seed: int = help_field("seeds the split, the batches and torch", 0)
    threads: int = help_field(
        "torch intra-op threads (0 = torch's default). 1: training shares the CPU with the server, and on an "
        "oversubscribed CPU multi-threaded torch ops spin: one 2-thread SFT step measured 50x slower than 1 thread", 1)
    extra: dict[str, Any] = help_field("free-form notes copied into the checkpoint's provenance", factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):
            self.data = TrajectoryConfig(**self.data)
        if isinstance(self.policy, Mapping):
            self.policy = CompactConfig(**self.policy)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"SFTConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("steps", "batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SFTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("SFTConfig: lr must be > 0, weight_decay and grad_clip >= 0")
        if self.warmup_steps < 0 or self.coord_sigma < 0 or self.quality_weight < 0 or not 0 <= self.augment < 0.5:
            raise ValueError("SFTConfig: warmup_steps, coord_sigma, quality_weight >= 0 and augment in [0, 0.5)")
        if self.shift < 0 or self.shift % 4:
            raise ValueError(f"SFTConfig.shift must be a multiple of 4 grid pixels >= 0, got {self.shift}")
        if self.max_minutes < 0:
            raise ValueError(f"SFTConfig.max_minutes must be >= 0 (0 = no budget), got {self.max_minutes}")
        if not 0.0 <= self.min_redraw_gain <= 1.0:
            raise ValueError(f"SFTConfig.min_redraw_gain must be a Dice gain in [0, 1], got {self.min_redraw_gain}")


@dataclass
class States:
    """Decision states cut from trajectories (pixels are looked up per slice, masks kept at slice size)."""

    keys: list[tuple] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    prompts: list[list[dict]] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    cells: list[int] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)
    priors: list[np.ndarray | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kinds)


def trajectory_states(trajs: Sequence[Trajectory], label_index: Callable[[str], int], config: CompactConfig,
                      min_redraw_gain: float = 0.0) -> States:
    """Every decision of every trajectory as a ``States`` entry (invalid actions are skipped).

    The first ``policy_meta["handoff_actions"]`` actions of a trajectory were given, not decided (a user's
    hand-off prompt, a volume's propagated box): they build the state but are not imitated. With
    ``min_redraw_gain`` > 0 (``SFTConfig.min_redraw_gain``), a box decided while a box was already executed whose
    Dice gain (``traj.dices``, after minus before) is below it becomes a Stop decision, and the trajectory's
    later decisions are dropped (their states followed the redraw)."""
    st = States()
    for traj in trajs:
        shape = tuple(traj.shape)
        masks = traj.mask_arrays()
        label = label_index(traj.label)
        given = int(traj.policy_meta.get("handoff_actions", 0))
        prior = traj.prior_array() if config.prior else None
        executed, issued, prefix = 0, 0, []
        for n, a in enumerate(traj.actions):
            if "invalid" in a:
                issued += 1
                prefix.append(a)
                continue
            if n < given:
                prefix.append(a)
                issued += 1
                executed += 1
                continue
            # a redraw: a box after an executed one (invalid actions in the prefix produced no mask)
            if (min_redraw_gain > 0 and a.get("type") == "box" and len(traj.dices) > executed
                    and any(p.get("type") == "box" and "invalid" not in p for p in prefix)
                    and traj.dices[executed] - traj.dices[executed - 1] < min_redraw_gain):
                a = {"type": "stop"}
            code = encode_action(a, shape, config)
            st.keys.append(traj_key(traj))
            st.masks.append(masks[executed - 1] if executed else np.zeros(shape, dtype=bool))
            st.prompts.append(list(prefix))
            st.turns.append(issued)
            st.labels.append(label)
            st.kinds.append(code.kind)
            st.boxes.append(code.box)
            st.cells.append(code.cell)
            st.ious.append(float(traj.ious[executed - 1]) if executed else 0.0)
            st.priors.append(prior)
            if a.get("type") == "stop":
                break
            prefix.append(a)
            issued += 1
            executed += 1
    return st


class StateBatcher:
    """Builds (B, C, S, S) input batches from ``States``; each slice is resampled to the policy frame once."""

    def __init__(self, states: States, images: Callable[[tuple], np.ndarray], config: CompactConfig) -> None:
        self.states, self.images, self.config = states, images, config
        self._frames: dict[tuple, np.ndarray] = {}

    def frame(self, key: tuple) -> np.ndarray:
        if key not in self._frames:
            self._frames[key] = resize_plane(self.images(key), self.config.size)
        return self._frames[key]

    def batch(self, idx: Sequence[int], rng: np.random.Generator | None = None, augment: float = 0.0,
              shift: int = 0) -> dict:
        st = self.states
        xs, boxes, cells = [], [], []
        for i in idx:
            x = state_features(self.frame(st.keys[i]), st.masks[i], st.prompts[i], self.config, st.priors[i])
            box, cell = st.boxes[i], st.cells[i]
            if rng is not None and augment > 0:
                gain, offset = 1.0 + rng.uniform(-augment, augment), rng.uniform(-augment / 2, augment / 2)
                x[0] = np.clip(x[0] * gain + offset, 0.0, 1.0)
            if rng is not None and shift > 0:
                dx, dy = (4 * int(v) for v in rng.integers(-shift // 4, shift // 4 + 1, size=2))
                moved = shift_state(x, box, cell, st.kinds[i], dx, dy, self.config)
                if moved is not None:
                    x, box, cell = moved
            xs.append(x)
            boxes.append(box)
            cells.append(cell)

        def t(values: list, dtype=torch.int64) -> torch.Tensor:
            return torch.tensor([values[i] for i in idx], dtype=dtype)

        return {"x": torch.from_numpy(np.stack(xs)), "label": t(st.labels), "turn": t(st.turns), "kind": t(st.kinds),
                "box": torch.tensor(boxes, dtype=torch.int64), "cell": torch.tensor(cells, dtype=torch.int64),
                "iou": t(st.ious, torch.float32)}


def shift_state(x: np.ndarray, box: tuple[int, int, int, int], cell: int, kind: int, dx: int, dy: int,
                config: CompactConfig) -> tuple[np.ndarray, tuple[int, int, int, int], int] | None:
    """Translate a state's (C, S, S) input by (dx, dy) grid pixels (content moves right / down; the border
    fills with 0) and its target with it; None when the target would leave the grid."""
    s, g, p = config.size, config.box_bins, config.point_grid
    if kind == BOX:
        bx = round(dx * (g - 1) / (s - 1))
        by = round(dy * (g - 1) / (s - 1))
        box = (box[0] + bx, box[1] + by, box[2] + bx, box[3] + by)
        if min(box) < 0 or max(box[0], box[1]) > g - 2 or max(box[2], box[3]) > g - 1:
            return None
    elif kind in (POS, NEG):
        row, col = divmod(cell, p)
        row, col = row + dy // 4, col + dx // 4
        if not (0 <= row < p and 0 <= col < p):
            return None
        cell = row * p + col
    out = np.zeros_like(x)
    src_y, dst_y = slice(max(-dy, 0), s - max(dy, 0)), slice(max(dy, 0), s - max(-dy, 0))
    src_x, dst_x = slice(max(-dx, 0), s - max(dx, 0)), slice(max(dx, 0), s - max(-dx, 0))
    out[:, dst_y, dst_x] = x[:, src_y, src_x]
    return out, box, cell


def sft_loss(out: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
             config: SFTConfig) -> dict[str, torch.Tensor]:
    """Smoothed action NLL + quality BCE, averaged over the batch; also the exact NLL for reporting."""
    kind, box, cell = b["kind"], b["box"], b["cell"]
    loss_kind = F.cross_entropy(out["kind"], kind, reduction="none")
    sigma = config.coord_sigma
    nb = out["box"].shape[-1]
    bins = torch.arange(nb)
    loss_box = torch.zeros_like(loss_kind)
    for first, second in ((0, 2), (1, 3)):
        valid1 = (bins[None] < nb - 1).expand(len(kind), -1)
        valid2 = bins[None] > box[:, first:first + 1]
        l1 = F.log_softmax(out["box"][:, first].masked_fill(~valid1, -1e9), dim=1)
        l2 = F.log_softmax(out["box"][:, second].masked_fill(~valid2, -1e9), dim=1)
        loss_box = loss_box - (soft_targets(box[:, first], nb, sigma, valid1) * l1).sum(1)
        loss_box = loss_box - (soft_targets(box[:, second], nb, sigma, valid2) * l2).sum(1)
    p = int(math.isqrt(out["point"].shape[-1]))
    gy = soft_targets(cell // p, p, sigma)
    gx = soft_targets(cell % p, p, sigma)
    tgt = (gy[:, :, None] * gx[:, None, :]).flatten(1)
    which = (kind == NEG).long()
    lpt = F.log_softmax(out["point"].gather(1, which[:, None, None].expand(-1, 1, p * p))[:, 0], dim=1)
    loss_pt = -(tgt * lpt).sum(1)
    zero = torch.zeros_like(loss_kind)
    is_point = (kind == POS) | (kind == NEG)
    nll = loss_kind + torch.where(kind == BOX, loss_box, zero) + torch.where(is_point, loss_pt, zero)
    quality = F.binary_cross_entropy_with_logits(out["quality"], b["iou"])
    with torch.no_grad():
        exact = -log_prob(out, kind, box, cell).mean()
    return {"loss": nll.mean() + config.quality_weight * quality, "nll": nll.mean(), "quality": quality,
            "exact_nll": exact}


@torch.no_grad()
def evaluate_states(net: torch.nn.Module, batcher: StateBatcher, config: SFTConfig, batch_size: int = 32) -> dict:
    """Validation metrics: loss, exact NLL, kind accuracy, greedy-box IoU with the expert's box (bins),
    click cell distance (cells), value-head MAE."""
    net.eval()
    n = len(batcher.states)
    tot = {"loss": 0.0, "exact_nll": 0.0, "kind_acc": 0.0, "quality_mae": 0.0}
    box_ious, cell_err = [], []
    for s in range(0, n, batch_size):
        idx = list(range(s, min(n, s + batch_size)))
        b = batcher.batch(idx)
        out = net(b["x"], b["label"], b["turn"])
        losses = sft_loss(out, b, config)
        k = len(idx)
        tot["loss"] += float(losses["loss"]) * k
        tot["exact_nll"] += float(losses["exact_nll"]) * k
        tot["kind_acc"] += float((out["kind"].argmax(1) == b["kind"]).float().sum())
        tot["quality_mae"] += float((torch.sigmoid(out["quality"]) - b["iou"]).abs().sum())
        for j in range(k):
            single = {key: v[j : j + 1] for key, v in out.items()}
            if int(b["kind"][j]) == BOX:
                forced = dict(single, kind=torch.tensor([[0.0, 1e9, 0.0, 0.0]]))
                box_ious.append(box_iou(choose(forced, greedy=True).box, tuple(b["box"][j].tolist())))
            elif int(b["kind"][j]) in (POS, NEG):
                p = int(math.isqrt(single["point"].shape[-1]))
                pred = int(single["point"][0, int(b["kind"][j]) - POS].argmax())
                true = int(b["cell"][j])
                cell_err.append(math.hypot(pred // p - true // p, pred % p - true % p))
    net.train()
    out = {k: v / max(n, 1) for k, v in tot.items()}
    out["box_iou"] = float(np.mean(box_ious)) if box_ious else None
    out["cell_err"] = float(np.mean(cell_err)) if cell_err else None
    return out


def plot_sft_history(path: str | Path, history: Mapping[str, list], title: str) -> Path:
    """Learning curves of an SFT run (``sft_history.json``): losses and validation accuracies apart, so the
    [0, 1] metrics are not flattened by the loss scale."""
    return plot_curves(path, {
        "loss": {"train (smoothed)": (history["step"], smooth(history["loss"])),
                 "validation": (history["val_step"], history["val_loss"])},
        "validation": {"kind accuracy": (history["val_step"], history["val_accuracy"]),
                       "box IoU with the expert's box": (history["val_step"], [
                           v if v is not None else float("nan") for v in history["val_box_iou"]])},
    }, title)


def _lr_at(step: int, config: SFTConfig, total: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    frac = (step - config.warmup_steps) / max(total - config.warmup_steps, 1)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _split(trajs: Sequence[Trajectory], val_fraction: float, seed: int) -> tuple[list, list, list[str], list[str]]:
    ids = sorted({t.case_id for t in trajs})
    cases = [Case(image_path=Path(cid), label_path=None, case_id=cid) for cid in ids]
    train_c, val_c = split_cases(cases, val_fraction, seed)
    val_ids = {c.case_id for c in val_c}
    return ([t for t in trajs if t.case_id not in val_ids], [t for t in trajs if t.case_id in val_ids],
            [c.case_id for c in train_c], sorted(val_ids))


def train_sft(config: SFTConfig, trajectories: str | Path | Sequence[Trajectory], out_dir: str | Path,
              labels: Mapping[str, int], progress: Callable[[dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None, *, images: Any = None) -> dict[str, Any]:
    """Behaviour-clone a compact policy on expert trajectories and save it to ``out_dir``.

    Args:
        config: ``SFTConfig``.
        trajectories: a JSONL file or ``Trajectory`` list (trajectories of labels outside ``labels`` are skipped).
        out_dir: receives ``policy.pt``, ``policy.json``, ``sft_curves.png``, ``sft_history.json``; publish it
            with ``lib.learning.checkpoint.publish`` after this returns.
        labels: the policy's label set {name: id}.
        progress: called with ``{"stage": "sft", "step", "steps", "loss", ...}`` after every step.
        should_stop: polled every step; True ends training early (the best weights so far are saved and
            ``stats["stopped"]`` is True).
        images: where slice pixels come from when trajectories do not name their image file (a dataset
            folder, ``Dataset``, ``SliceSample``s or {SliceKey: image}); see ``SliceImages``.

    Returns:
        Stats: ``steps``, ``train_loss`` (first / last smoothed), ``val_loss``, ``val_accuracy`` (kind),
        ``val_box_iou``, ``time_s``, dataset sizes, ``out_dir``.

    Raises:
        ValueError: no usable trajectory; FloatingPointError: the loss became NaN or infinite.
    """
    with torch_threads(config.threads):
        return _train_sft(config, trajectories, out_dir, labels, progress, should_stop, images)


def _init_policy(config: SFTConfig, labels: Mapping[str, int]) -> CompactPolicy:
    """``config.init`` loaded and, where the recipe adds the prior channel, widened; its quality calibration is
    dropped (it described the weights before this training)."""
    start = CompactPolicy.load(config.init, calibration=None)
    if CompactPolicy(labels, config.policy).labels != start.labels:
        raise ValueError(f"SFTConfig.init {config.init} has labels {start.labels}, the data {dict(labels)}; start "
                         "from a checkpoint of the same label set (or from scratch: init None)")
    policy = start.copy(config.policy)
    policy.provenance = {"init": str(config.init), "init_provenance": dict(start.provenance)}
    return policy


def _train_sft(config: SFTConfig, trajectories: str | Path | Sequence[Trajectory], out_dir: str | Path,
               labels: Mapping[str, int], progress: Callable[[dict], None] | None,
               should_stop: Callable[[], bool] | None, images: Any) -> dict[str, Any]:
    t_start = time.perf_counter()
    rng = seeded(config.seed)
    trajs = read_jsonl(trajectories) if isinstance(trajectories, (str, Path)) else list(trajectories)
    policy = CompactPolicy(labels, config.policy) if config.init is None else _init_policy(config, labels)
    known = {n.lower() for n in policy.labels}
    trajs = [t for t in trajs if t.label.lower() in known]
    if not trajs:
        raise ValueError(f"no trajectory targets one of the labels {sorted(policy.labels)}; generate expert "
                         "trajectories for them first")
    train_t, val_t, train_cases, val_cases = _split(trajs, config.val_fraction, config.seed)
    train = trajectory_states(train_t, policy.label_index, config.policy, config.min_redraw_gain)
    val = trajectory_states(val_t, policy.label_index, config.policy, config.min_redraw_gain)
    if not len(train):
        raise ValueError("the training split has no decision state")
    pixels = SliceImages(images, config.data.episode)
    by_key = {traj_key(t): t for t in trajs}
    train_b = StateBatcher(train, lambda k: pixels(by_key[k]), config.policy)
    val_b = StateBatcher(val, lambda k: pixels(by_key[k]), config.policy)
    kinds = np.bincount(np.asarray(train.kinds), minlength=4).tolist()
    logger.info("SFT: %d trajectories -> %d train states (%d cases), %d val states (%d cases); kinds %s",
                len(trajs), len(train), len(train_cases), len(val), len(val_cases), kinds)
    net = policy.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    log = MetricLog(train=("step", "loss"), val=("step", "loss", "accuracy", "box_iou"))
    best = BestState(mode="min")
    loop = TrainLoop(LoopConfig(steps=config.steps, eval_every=config.eval_every, max_minutes=config.max_minutes,
                                desc="sft", bar=progress is None), should_stop, started=t_start)
    for step in loop:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step - 1, config, config.steps)
        b = train_b.batch(rng.integers(0, len(train), config.batch_size).tolist(), rng, config.augment,
                          config.shift)
        losses = sft_loss(net(b["x"], b["label"], b["turn"]), b, config)
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(f"SFT loss became {float(losses['loss'])} at step {step - 1}; lower lr")
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        log.train(step, loss=float(losses["loss"].detach()))
        if loop.is_eval_step(step) and len(val):
            m = evaluate_states(net, val_b, config)
            log.val(step, loss=m["loss"], accuracy=m["kind_acc"], box_iou=m["box_iou"])
            best.offer(m["loss"], step, lambda: copy.deepcopy(net.state_dict()))
            logger.info("sft step %d: loss %.3f, val loss %.3f, val kind acc %.3f, val box IoU %s", step,
                        smooth(log.column("train", "loss"))[-1], m["loss"], m["kind_acc"], m["box_iou"])
        loop.show(loss=f"{smooth(log.column('train', 'loss'))[-1]:.3f}")
        if progress is not None:
            progress({"stage": "sft", "step": step, "steps": config.steps, "loss": log.last("train", "loss"),
                      "val_loss": log.last("val", "loss")})
    n_steps = loop.steps_run
    if n_steps == 0:
        raise RuntimeError("SFT stopped before its first step; nothing to save")
    if len(val):
        final = evaluate_states(net, val_b, config)
        best.offer(final["loss"], n_steps, lambda: copy.deepcopy(net.state_dict()))
        net.load_state_dict(best.state)
        val_metrics = evaluate_states(net, val_b, config)
    else:
        val_metrics = {}
    net.eval()
    history = log.columns()
    train_smooth = smooth(history["loss"])
    stats = {
        "stage": "sft",
        "steps": n_steps,
        "best_step": best.step if len(val) else n_steps,
        "train_loss_first": train_smooth[0],
        "train_loss": train_smooth[-1],
        "val_loss": val_metrics.get("loss"),
        "val_nll": val_metrics.get("exact_nll"),
        "val_accuracy": val_metrics.get("kind_acc"),
        "val_box_iou": val_metrics.get("box_iou"),
        "val_cell_err": val_metrics.get("cell_err"),
        "val_quality_mae": val_metrics.get("quality_mae"),
        "n_trajectories": len(trajs),
        "n_train_states": len(train),
        "n_val_states": len(val),
        "train_cases": train_cases,
        "val_cases": val_cases,
        "train_kinds": dict(zip(("stop", "box", "positive", "negative"), kinds, strict=True)),
        "stopped": loop.stopped,
        "budget_hit": loop.budget_hit,
        "time_s": time.perf_counter() - t_start,
        "seed": config.seed,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_sft_history(out / "sft_curves.png", history,
                     f"SFT: {len(train)} states from {len(train_cases)} cases, {n_steps} steps")
    log.write(out / "sft_history.json", layout="columns")
    backends = sorted({t.backend for t in trajs})
    policy.episode = config.data.episode.record(backends[0])
    policy.save(out, {"stage": "sft", "data": {"trajectories": len(trajs), "backends": backends,
                                                "train_cases": train_cases, "val_cases": val_cases,
                                                "datasets": sorted({str(t.source.get("dataset")) for t in trajs})},
                      "steps": n_steps, "metrics": {k: v for k, v in stats.items() if k.startswith(("val_", "train_"))
                                                    and not isinstance(v, (list, dict))},
                      "seed": config.seed, "config": to_dict(config),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    stats["out_dir"] = str(out)
    stats["time_s"] = time.perf_counter() - t_start
    return stats
