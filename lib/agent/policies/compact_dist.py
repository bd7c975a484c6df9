"""The compact policy's action distribution over the network's outputs: log-probabilities, entropy, sampling and
the soft targets of behaviour cloning."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from lib.agent.policies.compact_codec import ActionCode
from lib.agent.policies.compact_config import BOX, NEG, POS, STOP

# -- distribution ----------------------------------------------------------------------------------------
_NEG = -1e9


def _corner_logits(box: torch.Tensor, b0: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-corner logits with the last bin masked, second-corner logits masked to bins > ``b0``)."""
    first, second = box[:, axis], box[:, axis + 2]
    bins = torch.arange(first.shape[-1], device=box.device)
    first = first.masked_fill(bins[None] == first.shape[-1] - 1, _NEG)
    second = second.masked_fill(bins[None] <= b0[:, None], _NEG)
    return first, second


def log_prob(out: Mapping[str, torch.Tensor], kind: torch.Tensor, box: torch.Tensor, cell: torch.Tensor,
             temperature: float = 1.0, coord_temperature: float | None = None) -> torch.Tensor:
    """(B,) log-probability of actions under the network output ``out``.

    Args:
        kind: (B,) int64 KINDS index; box: (B, 4) int64 bins (x0, y0, x1, y1); cell: (B,) int64 click cell.
        temperature: the kind logits are divided by it (the sampling temperature of the rollouts).
        coord_temperature: the same for box and click locations (None = ``temperature``).
    """
    tk = float(temperature)
    t = float(coord_temperature if coord_temperature is not None else temperature)
    lp = F.log_softmax(out["kind"] / tk, dim=1).gather(1, kind[:, None])[:, 0]
    fx, sx = _corner_logits(out["box"] / t, box[:, 0], 0)
    fy, sy = _corner_logits(out["box"] / t, box[:, 1], 1)
    lbox = sum(F.log_softmax(lg, dim=1).gather(1, idx[:, None])[:, 0]
               for lg, idx in ((fx, box[:, 0]), (fy, box[:, 1]), (sx, box[:, 2]), (sy, box[:, 3])))
    lpt = F.log_softmax(out["point"] / t, dim=2)
    lpos = lpt[:, 0].gather(1, cell[:, None])[:, 0]
    lneg = lpt[:, 1].gather(1, cell[:, None])[:, 0]
    zero = torch.zeros_like(lp)
    return lp + torch.where(kind == BOX, lbox, zero) + torch.where(kind == POS, lpos, zero) + torch.where(
        kind == NEG, lneg, zero)


def entropy_of_kind(out: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B,) entropy of the kind distribution (an exploration diagnostic for RL)."""
    lp = F.log_softmax(out["kind"], dim=1)
    return -(lp.exp() * lp).sum(dim=1)


def choose(out: Mapping[str, torch.Tensor], greedy: bool, temperature: float = 1.0,
           generator: torch.Generator | None = None, coord_temperature: float | None = None) -> ActionCode:
    """Pick one action from a single-state output (batch of 1): argmax per factor, or a sample (kind at
    ``temperature``, locations at ``coord_temperature``, default the same)."""
    tk = max(float(temperature), 1e-6)
    tc = max(float(coord_temperature if coord_temperature is not None else temperature), 1e-6)

    def pick(logits: torch.Tensor, t: float = tc) -> int:
        if greedy:
            return int(torch.argmax(logits))
        return int(torch.multinomial(F.softmax(logits / t, dim=-1), 1, generator=generator))

    kind = pick(out["kind"][0], tk)
    if kind == BOX:
        bins = out["box"].shape[-1]
        first = out["box"][0, :2].clone()
        first[:, bins - 1] = _NEG
        bx0, by0 = pick(first[0]), pick(first[1])
        idx = torch.arange(bins)
        bx1 = pick(out["box"][0, 2].masked_fill(idx <= bx0, _NEG))
        by1 = pick(out["box"][0, 3].masked_fill(idx <= by0, _NEG))
        return ActionCode(BOX, (bx0, by0, bx1, by1))
    if kind in (POS, NEG):
        return ActionCode(kind, cell=pick(out["point"][0, kind - POS]))
    return ActionCode(STOP)


def soft_targets(index: torch.Tensor, n: int, sigma: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, n) Gaussian label smoothing around ``index`` (sigma in bins; 0 = one-hot), renormalised over
    ``valid`` bins: coordinates are ordinal, so a neighbouring bin is nearly right."""
    bins = torch.arange(n, device=index.device, dtype=torch.float32)
    if sigma <= 0:
        tgt = (bins[None] == index[:, None].float()).float()
    else:
        tgt = torch.exp(-0.5 * ((bins[None] - index[:, None].float()) / sigma) ** 2)
    if valid is not None:
        tgt = tgt * valid.float()
    return tgt / tgt.sum(dim=1, keepdim=True).clamp_min(1e-12)
