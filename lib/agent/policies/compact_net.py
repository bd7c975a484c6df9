"""The compact policy's network, what it sees, and its action distribution.

**Frame.** The policy works on an ``S x S`` grid (``CompactConfig.size``, 256 by default): the (H, W) slice
is stretched to it with ``align_corners`` geometry, so pixel ``x`` of a ``W``-wide slice sits at grid
position ``x * (S - 1) / (W - 1)`` (0 = first pixel centre, S - 1 = last). Box coordinates are predicted on
``box_bins`` bins and clicks on a ``P x P`` grid (``P = S / 4``) in the same geometry; ``bin_to_pixel`` /
``pixel_to_bin`` are the only conversions. Nothing here depends on a backend: the input is the windowed
slice, the current mask and the prompts, never a segmenter's embedding (tool-agnostic by design, docs/architecture.md).

**Input** ``(B, 5, S, S)`` float32, channels: ``image`` (windowed, [0, 1]), ``mask`` (current mask, [0, 1]
after bilinear resampling), ``box`` (1 inside the current box), ``positive`` / ``negative`` (a Gaussian of
``click_sigma`` grid pixels at each click, max-combined). Two coordinate planes (x, y in [-1, 1]) are added
inside the network, so "where" is learnable in autonomous mode. The target label (index into the
policy's label set) and the turn index condition the network by FiLM.

**Action** = a kind (stop / box / positive click / negative click) then its location:
``log p(a) = log p(kind) + log p(location | kind)``; a box factorises into x0, y0 (any bin but the last)
and x1 > x0, y1 > y0 (masked to the bins after the first corner), so every sampled box is a valid box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.agent.actions import Action, Box, Point, Stop

#: action kinds, index = the kind head's class
KINDS = ("stop", "box", "positive", "negative")
STOP, BOX, POS, NEG = range(4)
#: input channels of ``state_features``
CHANNELS = ("image", "mask", "box", "positive", "negative")


@dataclass(frozen=True)
class CompactConfig:
    """Architecture of the compact policy (saved in ``policy.json`` as ``architecture``).

    Attributes:
        size: input side S in grid pixels (a multiple of 32: a /4 stem then three /2 stages). 256 = the
            resolution the latency target is stated at (< 50 ms per decision on 2 CPU cores).
        box_bins: bins per box coordinate. 128 at S = 256 is 2 grid pixels, 1.25 pixels on a 160² slice:
            finer than the box noise SAM-family models were trained with.
        widths: channels of the four stages (S/4, S/8, S/16, S/32). (24, 48, 96, 160) gives ~1.3 M
            parameters (budget 10 M) and half the decision time of (32, 64, 128, 192) on a 2-core CPU;
            SFT steps cost the same factor, which is what bounds training on a hospital CPU.
        label_dim: size of the target-label embedding.
        cond_dim: size of the (label, turn) conditioning vector that drives the FiLM layers.
        max_turns: turn embeddings (turn indices beyond clamp to the last one).
        click_sigma: Gaussian radius of a click in the prompt channels, grid pixels.
    """

    size: int = 256
    box_bins: int = 128
    widths: tuple[int, int, int, int] = (24, 48, 96, 160)
    label_dim: int = 32
    cond_dim: int = 64
    max_turns: int = 8
    click_sigma: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 32 or self.size % 32:
            raise ValueError(f"CompactConfig.size must be a multiple of 32 (>= 32), got {self.size!r}")
        if not 2 <= int(self.box_bins) <= self.size:
            raise ValueError(f"CompactConfig.box_bins must be in [2, size={self.size}], got {self.box_bins!r}")
        if len(self.widths) != 4 or min(self.widths) < 8 or any(w % 8 for w in self.widths):
            raise ValueError(f"CompactConfig.widths must be 4 multiples of 8 (GroupNorm groups), got {self.widths!r}")
        for name in ("label_dim", "cond_dim", "max_turns"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CompactConfig.{name} must be an int >= 1, got {v!r}")
        if not 0.5 <= float(self.click_sigma) <= self.size / 8:
            raise ValueError(f"CompactConfig.click_sigma must be in [0.5, size/8] grid pixels, got {self.click_sigma}")

    @property
    def point_grid(self) -> int:
        """P: side of the click heatmaps (the first stage's resolution, S / 4)."""
        return self.size // 4

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "box_bins": self.box_bins, "widths": list(self.widths), "label_dim": self.label_dim,
                "cond_dim": self.cond_dim, "max_turns": self.max_turns, "click_sigma": self.click_sigma}


# -- frame conversions ---------------------------------------------------------------------------------
def pixel_to_bin(p: float, n_pixels: int, n_bins: int) -> int:
    """Pixel index along a side of ``n_pixels`` -> nearest of ``n_bins`` bins (align-corners geometry)."""
    if n_pixels <= 1:
        return 0
    return int(min(max(round(float(p) * (n_bins - 1) / (n_pixels - 1)), 0), n_bins - 1))


def bin_to_pixel(b: int, n_bins: int, n_pixels: int) -> int:
    """Bin index -> nearest pixel index along a side of ``n_pixels`` (inverse of ``pixel_to_bin``)."""
    if n_bins <= 1:
        return 0
    return int(min(max(round(int(b) * (n_pixels - 1) / (n_bins - 1)), 0), n_pixels - 1))


def _to_grid(p: float, n_pixels: int, size: int) -> float:
    return 0.0 if n_pixels <= 1 else float(p) * (size - 1) / (n_pixels - 1)


def resize_plane(plane: np.ndarray, size: int) -> np.ndarray:
    """(H, W) array -> (S, S) float32, bilinear with align-corners geometry (the policy's frame)."""
    t = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=True)[0, 0].numpy()


def prompts_from_actions(actions: Sequence[Mapping[str, Any]]) -> tuple[tuple[int, ...] | None, list[tuple]]:
    """(current box, clicks) from ``info["actions"]`` dicts in pixels: the last valid box (a new box replaces
    the old one, as ``Interaction.add_box`` does) and every valid click ``(x, y, positive)``."""
    box, clicks = None, []
    for a in actions:
        if "invalid" in a:
            continue
        if a.get("type") == "box":
            box = tuple(int(v) for v in a["box"])
        elif a.get("type") == "point":
            clicks.append((int(a["point"][0]), int(a["point"][1]), bool(a["positive"])))
    return box, clicks


def prompt_planes(shape: tuple[int, int], actions: Sequence[Mapping[str, Any]], config: CompactConfig) -> np.ndarray:
    """(3, S, S) float32 prompt channels (box, positive, negative) for an (H, W) slice."""
    s = config.size
    h, w = shape
    out = np.zeros((3, s, s), dtype=np.float32)
    box, clicks = prompts_from_actions(actions)
    if box is not None:
        x0, y0, x1, y1 = box
        c0, c1 = round(_to_grid(x0, w, s)), round(_to_grid(x1, w, s))
        r0, r1 = round(_to_grid(y0, h, s)), round(_to_grid(y1, h, s))
        out[0, r0 : r1 + 1, c0 : c1 + 1] = 1.0
    if clicks:
        yy, xx = np.mgrid[:s, :s].astype(np.float32)
        two_var = 2.0 * float(config.click_sigma) ** 2
        for x, y, positive in clicks:
            gx, gy = _to_grid(x, w, s), _to_grid(y, h, s)
            blob = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / two_var)
            ch = 1 if positive else 2
            np.maximum(out[ch], blob, out=out[ch])
    return out


def state_features(image_s: np.ndarray, mask: np.ndarray, actions: Sequence[Mapping[str, Any]],
                   config: CompactConfig) -> np.ndarray:
    """(5, S, S) float32 network input (see ``CHANNELS``).

    Args:
        image_s: the windowed slice already in the policy frame, (S, S) float32 in [0, 1]
            (``resize_plane(image, S)``; computed once per slice by callers that see it many times).
        mask: (H, W) bool or {0, 1} current mask of the ORIGINAL slice.
        actions: ``info["actions"]`` so far (pixels of the original slice).
    """
    shape = tuple(int(v) for v in np.asarray(mask).shape)
    m = resize_plane(np.asarray(mask, dtype=np.float32), config.size)
    return np.concatenate([image_s[None].astype(np.float32), m[None], prompt_planes(shape, actions, config)])


# -- action codec -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActionCode:
    """An action in the policy's output space: ``kind`` (KINDS index), ``box`` bins (x0, y0, x1, y1) and
    click ``cell`` (row-major index into the P x P grid). Unused fields are 0."""

    kind: int
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    cell: int = 0


def encode_action(action: Action | Mapping[str, Any], shape: tuple[int, int], config: CompactConfig) -> ActionCode:
    """Pixel action (an ``Action`` or its ``to_dict`` form) on an (H, W) slice -> ``ActionCode``."""
    h, w = shape
    g, p = config.box_bins, config.point_grid
    if isinstance(action, Mapping):
        kind = action.get("type")
        if kind == "box":
            action = Box(*action["box"])
        elif kind == "point":
            action = Point(int(action["point"][0]), int(action["point"][1]), bool(action["positive"]))
        else:
            action = Stop()
    if isinstance(action, Stop):
        return ActionCode(STOP)
    if isinstance(action, Box):
        bx0, bx1 = pixel_to_bin(action.x0, w, g), pixel_to_bin(action.x1, w, g)
        by0, by1 = pixel_to_bin(action.y0, h, g), pixel_to_bin(action.y1, h, g)
        # the distribution keeps x1 > x0 (and x0 off the last bin): tiny boxes round onto neighbouring bins
        bx0, by0 = min(bx0, g - 2), min(by0, g - 2)
        return ActionCode(BOX, (bx0, by0, max(bx1, bx0 + 1), max(by1, by0 + 1)))
    if isinstance(action, Point):
        cell = pixel_to_bin(action.y, h, p) * p + pixel_to_bin(action.x, w, p)
        return ActionCode(POS if action.positive else NEG, cell=cell)
    raise TypeError(f"{action!r} is not an action; use Box, Point or Stop")


def decode_action(code: ActionCode, shape: tuple[int, int], config: CompactConfig) -> Action:
    """``ActionCode`` -> pixel action on an (H, W) slice; a box always has x0 < x1 and y0 < y1 in pixels."""
    h, w = shape
    g, p = config.box_bins, config.point_grid
    if code.kind == STOP:
        return Stop()
    if code.kind == BOX:
        bx0, by0, bx1, by1 = code.box
        x0, x1 = _ordered(bin_to_pixel(bx0, g, w), bin_to_pixel(bx1, g, w), w)
        y0, y1 = _ordered(bin_to_pixel(by0, g, h), bin_to_pixel(by1, g, h), h)
        return Box(x0, y0, x1, y1)
    row, col = divmod(int(code.cell), p)
    return Point(bin_to_pixel(col, p, w), bin_to_pixel(row, p, h), code.kind == POS)


def _ordered(lo: int, hi: int, n: int) -> tuple[int, int]:
    # more bins than pixels can map two bins onto one pixel; widen to a 2-pixel box inside the image
    if hi > lo:
        return lo, hi
    hi = min(lo + 1, n - 1)
    return hi - 1, hi


# -- network ----------------------------------------------------------------------------------------------
def _gn(c: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: RL updates run on a handful of states and inference on one
    return nn.GroupNorm(8, c)


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, bias=False), _gn(cout), nn.SiLU())


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), _gn(c), nn.SiLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), _gn(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x + self.body(x))


class _FiLM(nn.Module):
    """Feature-wise scale and shift from the conditioning vector (identity at initialisation)."""

    def __init__(self, cond_dim: int, c: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * c)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(cond)[..., None, None].chunk(2, dim=1)
        return x * (1.0 + gamma) + beta


class _Up(nn.Module):
    """Upsample x2, concatenate the skip, 1x1 reduce, 3x3 refine (the 1x1 keeps the wide concat cheap)."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.reduce = _ConvBlock(cin + cskip, cout, k=1)
        self.refine = _ConvBlock(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(self.reduce(torch.cat([x, skip], dim=1)))


#: full-resolution 1D profiles per axis fed to the box heads (see ``edge_profiles``)
N_PROFILES = 5


def edge_profiles(x: torch.Tensor, axis: int, sigma: float = 0.06) -> torch.Tensor:
    """(B, N_PROFILES, S) full-resolution profiles along ``axis`` (3 = x / columns, 2 = y / rows).

    The decoder features are 4 grid pixels coarse, but a box edge must land within a pixel or two, so the box
    heads also see cheap exact profiles across the current box's band (all rows / columns without a box):
    the current mask's and box's extents (max), the mean image, the mean absolute image gradient along the
    axis, and the mean similarity to the target's intensity (the mean image under the current mask, else
    under the box; a Gaussian of ``sigma`` in windowed units, about the phantoms' organ-to-organ contrast).
    """
    img, mask, box = x[:, 0], x[:, 1], x[:, 2]  # (B, H, W) = (B, rows, columns)
    along_x = axis == 3
    red = 1 if along_x else 2  # the (B, H, W) dimension averaged away
    band = box.amax(dim=2 if along_x else 1)  # rows (for x) or columns (for y) the box covers, (B, S)
    band = torch.where(band.sum(1, keepdim=True) > 0, band, torch.ones_like(band))
    weight = band[:, :, None] if along_x else band[:, None, :]
    norm = weight.sum(dim=red).clamp_min(1.0)
    region = torch.where(mask.flatten(1).sum(1, keepdim=True) > 0, mask.flatten(1), box.flatten(1))
    level = (img.flatten(1) * region).sum(1) / region.sum(1).clamp_min(1.0)
    similar = torch.exp(-0.5 * ((img - level[:, None, None]) / sigma) ** 2)
    grad = img.diff(dim=2 if along_x else 1).abs()
    grad = F.pad(grad, (0, 1)) if along_x else F.pad(grad, (0, 0, 0, 1))
    prof = [mask.amax(dim=red), box.amax(dim=red)]
    prof += [(t * weight).sum(dim=red) / norm for t in (img, grad, similar)]
    return torch.stack(prof, dim=1)


class _AxisHead(nn.Module):
    """Two box coordinates along one axis from 1D profiles: the decoder features pooled across the other
    axis (max and mean) plus the full-resolution ``edge_profiles``, which carry the current extents and the
    image edges exactly; a global bias lets the kind/label context shift them."""

    def __init__(self, c: int, hidden: int, glob: int) -> None:
        super().__init__()
        self.inp = nn.Conv1d(2 * c + N_PROFILES, hidden, 5, padding=2)
        self.glob = nn.Linear(glob, hidden)
        self.body = nn.Sequential(nn.SiLU(), nn.Conv1d(hidden, hidden, 5, padding=2), nn.SiLU(),
                                  nn.Conv1d(hidden, hidden, 5, padding=2), nn.SiLU())
        self.out = nn.Conv1d(hidden, 2, 1)

    def forward(self, prof: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, 2, bins), summary (B, 2 * hidden)): the summary (max and mean of the hidden profile)
        tells the kind and quality heads what the edges say, e.g. that the box is loose."""
        h = self.body(self.inp(prof) + self.glob(g)[..., None])
        return self.out(h), torch.cat([h.amax(dim=2), h.mean(dim=2)], dim=1)


class CompactNet(nn.Module):
    """U-Net-shaped CNN with spatial heads (box coordinates from 1D profiles, click heatmaps) and global
    heads (kind, quality) that read the pooled bottleneck, the (label, turn) conditioning and a summary of
    the box heads' edge evidence.

    ``forward(x, label, turn)``:
        x: (B, 5, S, S) float32 (``state_features``); label: (B,) int64 label index; turn: (B,) int64.
    Returns a dict of logits: ``kind`` (B, 4), ``quality`` (B,) (sigmoid = predicted IoU of the current
    mask), ``box`` (B, 4, G) for x0, y0, x1, y1, ``point`` (B, 2, P*P) for positive / negative clicks.
    """

    def __init__(self, config: CompactConfig, n_labels: int) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3, c4 = config.widths
        cin = len(CHANNELS) + 2
        self.label_emb = nn.Embedding(max(n_labels, 1), config.label_dim)
        self.turn_emb = nn.Embedding(config.max_turns + 1, 16)
        self.cond = nn.Sequential(nn.Linear(config.label_dim + 16, config.cond_dim), nn.SiLU())
        self.stem = nn.Sequential(nn.Conv2d(cin, c1, 4, stride=4, bias=False), _gn(c1), nn.SiLU(), _ConvBlock(c1, c1))
        self.down2 = nn.Sequential(_ConvBlock(c1, c2, stride=2), _ResBlock(c2))
        self.down3 = nn.Sequential(_ConvBlock(c2, c3, stride=2), _ResBlock(c3))
        self.down4 = nn.Sequential(_ConvBlock(c3, c4, stride=2), _ResBlock(c4))
        self.film4 = _FiLM(config.cond_dim, c4)
        self.film3 = _FiLM(config.cond_dim, c3)
        glob = 256
        self.glob = nn.Sequential(nn.Linear(2 * c4 + config.cond_dim, glob), nn.SiLU(),
                                  nn.Linear(glob, glob), nn.SiLU())
        self.kind_head = nn.Linear(glob + 4 * 64, len(KINDS))
        self.quality_head = nn.Linear(glob + 4 * 64, 1)
        c_up = max(8, (3 * c3 // 4) // 8 * 8)  # a multiple of 8 for GroupNorm
        self.up3 = _Up(c4, c3, c_up)
        self.up2 = _Up(c_up, c2, c2)
        self.up1 = _Up(c2, c1, c1)
        self.film1 = _FiLM(config.cond_dim, c1)
        self.point_head = nn.Conv2d(c1, 2, 1)
        self.x_head = _AxisHead(c1, 64, glob)
        self.y_head = _AxisHead(c1, 64, glob)
        s = config.size
        lin = torch.linspace(-1.0, 1.0, s)
        self.register_buffer("coords", torch.stack([lin[None, :].expand(s, s), lin[:, None].expand(s, s)]),
                             persistent=False)

    def forward(self, x: torch.Tensor, label: torch.Tensor, turn: torch.Tensor) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        cfg = self.config
        cond = self.cond(torch.cat([self.label_emb(label), self.turn_emb(turn.clamp(0, cfg.max_turns))], dim=1))
        h = torch.cat([x, self.coords.expand(b, -1, -1, -1)], dim=1)
        f1 = self.stem(h)
        f2 = self.down2(f1)
        f3 = self.film3(self.down3(f2), cond)
        f4 = self.film4(self.down4(f3), cond)
        g = self.glob(torch.cat([f4.mean(dim=(2, 3)), f4.amax(dim=(2, 3)), cond], dim=1))
        d = self.film1(self.up1(self.up2(self.up3(f4, f3), f2), f1), cond)
        point = self.point_head(d).flatten(2)
        nb = cfg.box_bins
        # full-resolution extents of the current mask and box (channels 1 and 2), pooled to the bins
        mx = F.adaptive_avg_pool1d(edge_profiles(x, axis=3), nb)
        my = F.adaptive_avg_pool1d(edge_profiles(x, axis=2), nb)
        px = F.interpolate(torch.cat([d.amax(dim=2), d.mean(dim=2)], dim=1), size=nb, mode="linear", align_corners=True)
        py = F.interpolate(torch.cat([d.amax(dim=3), d.mean(dim=3)], dim=1), size=nb, mode="linear", align_corners=True)
        bx, sx = self.x_head(torch.cat([px, mx], dim=1), g)
        by, sy = self.y_head(torch.cat([py, my], dim=1), g)
        h = torch.cat([g, sx, sy], dim=1)
        box = torch.stack([bx[:, 0], by[:, 0], bx[:, 1], by[:, 1]], dim=1)
        return {"kind": self.kind_head(h), "quality": self.quality_head(h)[:, 0], "box": box, "point": point}


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


def n_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))

