"""The compact policy's network: a small conditioned U-Net with a kind head, box-corner heads over edge profiles
and a click heatmap (input and frame: ``lib.agent.policies.compact_config``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lib.agent.policies.compact_config import KINDS, CompactConfig


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
        x: (B, C, S, S) float32 (``state_features``, ``config.channels``); label: (B,) int64 label index;
        turn: (B,) int64.
    Returns a dict of logits: ``kind`` (B, 4), ``quality`` (B,) (sigmoid = predicted IoU of the current
    mask), ``box`` (B, 4, G) for x0, y0, x1, y1, ``point`` (B, 2, P*P) for positive / negative clicks.
    """

    def __init__(self, config: CompactConfig, n_labels: int) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3, c4 = config.widths
        cin = len(config.channels) + 2
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


def n_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))
