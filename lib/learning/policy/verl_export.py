"""RL data and reward for teams on verl (the framework MedSAM-Agent's own RL ran on).

**Rows** (``rl_rows`` -> ``write_parquet``): the columns of the released MedSAM-Agent code's ``MedSAMDataset``
plus verl's standard multi-turn ones, so the reference recipe or a verl agent loop can read them:

- ``data_source``: ``"medsam_agent/<dataset name>"`` (verl's reward loop routes on it);
- ``prompt``: system + first user turn from ``lib.agent.vlm_prompt`` (verl's ``<image>`` placeholder marks where
  the image goes, verl splits it into an image item);
- ``images``: ``[{"bytes": PNG}]``, the ORIGINAL slice as RGB uint8 (the reference dataset stretches it to 512²
  for the model and hands the original to the segmentation tools);
- ``reward_model``: ``{"style": "rule", "ground_truth": {"bytes": PNG}}``, the mask as 0/255 at slice resolution;
- ``extra_info``: ``target_description`` (the label name), ``id``, ``index``, ``split``, ``case_id``,
  ``slice_index``, ``axis``, ``shape`` [H, W];
- ``ability`` = "segmentation", ``agent_name`` = "medsam_iterative_agent".

**Reward** (``compute_score``): importable by verl
(``custom_reward_function.path = lib/learning/policy/verl_export.py``, ``name = compute_score``).
It recomputes our episode reward (``lib.agent.rewards.episode_reward``, the reference's
R by default; ``reward_kwargs`` fill ``RewardConfig``) from the per-action masks verl's agent loop puts in
``extra_info["pred_mask"]`` and the tool calls in the response. Differences from the reference scorer, all
deliberate: masks of any convention (bool, 0/1, 0/255) are read correctly, and ``T`` counts executed
actions (masks), so a generation that was never executed does not count as an action.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lib.agent.actions import Stop
from lib.agent.grammar import GrammarError, parse
from lib.agent.metrics import dice, iou
from lib.agent.rewards import RewardConfig, episode_reward
from lib.agent.trajectories import rle_decode
from lib.agent.vlm_image import to_rgb_uint8
from lib.agent.vlm_prompt import SYSTEM_PROMPT, user_text

#: verl agent loop the reference recipe registers (medsam_iterative_agent_loop.py:24)
AGENT_NAME = "medsam_iterative_agent"
_CALL = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)


def png_bytes(array: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def rl_rows(
    samples: Iterable[tuple[np.ndarray, np.ndarray, str, Mapping[str, Any]]],
    dataset_name: str = "dataset",
    split: str = "train",
) -> list[dict[str, Any]]:
    """verl rows from (image, gt, target, meta) tuples.

    Args:
        samples: ``image`` (H, W) float in [0, 1] or (H, W, 3) uint8 (the windowed slice), ``gt`` (H, W) bool,
            ``target`` the label name, ``meta`` with optional ``case_id``, ``slice_index``, ``axis``.
        dataset_name: suffix of ``data_source``.
        split: recorded in ``extra_info``.
    """
    rows = []
    for index, (image, gt, target, meta) in enumerate(samples):
        gt = np.asarray(gt)
        if gt.dtype != bool:
            raise TypeError(f"gt must be an (H, W) bool mask, got {gt.dtype}")
        rgb = to_rgb_uint8(image)
        if rgb.shape[:2] != gt.shape:
            raise ValueError(f"image {rgb.shape[:2]} and gt {gt.shape} must share (H, W)")
        case_id = str(meta.get("case_id", ""))
        slice_index = meta.get("slice_index")
        rows.append(
            {
                "data_source": f"medsam_agent/{dataset_name}",
                "prompt": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": "<image>" + user_text(target, 0)},
                ],
                "images": [{"bytes": png_bytes(rgb)}],
                "ability": "segmentation",
                "agent_name": AGENT_NAME,
                "reward_model": {"style": "rule", "ground_truth": {"bytes": png_bytes(gt.astype(np.uint8) * 255)}},
                "extra_info": {
                    "index": index,
                    "id": f"{case_id}|{slice_index}|{target}",
                    "split": split,
                    "target_description": str(target),
                    "case_id": case_id,
                    "slice_index": -1 if slice_index is None else int(slice_index),
                    "axis": int(meta.get("axis", 0)),
                    "shape": [int(s) for s in gt.shape],
                },
            }
        )
    return rows


def write_parquet(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as one parquet file (pyarrow), the format verl's datasets read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows)), path)
    return path


def as_bool_mask(value: Any) -> np.ndarray:
    """A mask in any of the conventions verl data carries -> (H, W) bool.

    Accepts a bool/numeric array (0/1 or 0/255: values above half the dtype's "on" level are True), a PIL image,
    PNG bytes or ``{"bytes": PNG}``, or an RLE dict / its JSON text (``lib.agent.trajectories``).
    """
    if isinstance(value, Mapping) and "counts" in value:
        return rle_decode(value)
    if isinstance(value, str):
        return rle_decode(json.loads(value))
    if isinstance(value, Mapping) and "bytes" in value:
        value = value["bytes"]
    if isinstance(value, (bytes, bytearray)):
        value = Image.open(io.BytesIO(value))
    if isinstance(value, Image.Image):
        value = np.asarray(value.convert("L"))
    arr = np.asarray(value)
    if arr.ndim == 3:
        arr = arr[..., 0] if arr.shape[-1] in (1, 3, 4) else arr[0]
    if arr.ndim != 2:
        raise ValueError(f"a mask must be 2D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    # 0/1 and 0/255 both occur in the wild; threshold at half of the "on" value instead of a fixed 127
    on = 1.0 if arr.size == 0 or float(arr.max()) <= 1.0 else 255.0
    return arr.astype(np.float64) > on / 2


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(img) > 127


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **reward_kwargs: Any,
) -> dict[str, Any]:
    """verl reward entry point: our episode reward of one rollout.

    Args:
        data_source: the row's ``data_source`` (unused; every MedSAM-Agent source is scored the same way).
        solution_str: the decoded response of the episode (all assistant turns); its ``<tool_call>`` blocks
            are parsed with ``lib.agent.grammar`` on the ground truth's (H, W).
        ground_truth: the mask (``as_bool_mask`` conventions), usually ``{"bytes": PNG}`` from ``rl_rows``.
        extra_info: ``pred_mask`` = the mask after each EXECUTED action, in order (any ``as_bool_mask`` form,
            any size: resized nearest to the ground truth), as the reference agent loop provides it.
        reward_kwargs: ``RewardConfig`` fields (verl ``custom_reward_function.reward_kwargs``).

    Returns:
        ``{"score": R, "iou": final IoU, "dice": final Dice, "n_actions", "stopped", **reward terms}``.
    """
    gt = as_bool_mask(ground_truth)
    shape = (int(gt.shape[0]), int(gt.shape[1]))
    masks = [_resize_nearest(as_bool_mask(m), shape) for m in (extra_info or {}).get("pred_mask", []) or []]
    ious = [iou(m, gt) for m in masks]
    dices = [dice(m, gt) for m in masks]
    blocks = _CALL.findall(solution_str or "")
    stopped = False
    issued = 0
    for i, block in enumerate(blocks):
        try:
            action = parse(block, shape)
        except GrammarError:
            action = None
        if isinstance(action, Stop):
            stopped = i == len(blocks) - 1
        else:
            issued += 1  # a Box/Point, or an unreadable call that spent a turn
    n_actions = max(issued, len(masks))
    total, terms = episode_reward(ious, dices, n_actions, stopped, RewardConfig(**reward_kwargs))
    return {
        "score": float(total),
        "iou": ious[-1] if ious else 0.0,
        "dice": dices[-1] if dices else 0.0,
        "n_actions": int(n_actions),
        "stopped": bool(stopped),
        **{k: float(v) for k, v in terms.items()},
    }
