"""Learning-curve and Dice-per-click figures of interactive fine-tuning (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: the trainer runs in a server subprocess without a display
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(history: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Three panels: training loss per step (raw + moving average), validation Dice per click at each
    validation, validation NoC@85.

    Args:
        history: ``{"train": [{"step", "loss"}, ...], "val": [{"step", "dice_per_click": [...], "noc@85"}, ...]}``.
        path: PNG to write.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    train = history.get("train", [])
    if train:
        steps = [r["step"] for r in train]
        loss = [r["loss"] for r in train]
        axes[0].plot(steps, loss, color="0.8", lw=0.6, label="per step")
        k = max(1, len(loss) // 40)
        avg = [sum(loss[max(0, i - k + 1) : i + 1]) / len(loss[max(0, i - k + 1) : i + 1]) for i in range(len(loss))]
        axes[0].plot(steps, avg, color="C0", label=f"mean of {k}")
        axes[0].legend(fontsize=8)
    axes[0].set(xlabel="step", ylabel="BCE + Dice loss", title="training loss")
    val = history.get("val", [])
    if val:
        n = len(val[0]["dice_per_click"])
        for c in range(n):
            axes[1].plot([r["step"] for r in val], [r["dice_per_click"][c] for r in val], marker=".",
                         label="box only" if c == 0 else f"box + {c} click{'s' if c > 1 else ''}")
        axes[1].legend(fontsize=8)
        axes[2].plot([r["step"] for r in val], [r["noc@85"] for r in val], marker=".", color="C3")
    axes[1].set(xlabel="step", ylabel="mean Dice", title="validation Dice per click")
    axes[2].set(xlabel="step", ylabel="clicks", title="validation NoC@85 (clicks only)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_dice_per_click(curves: Mapping[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """Mean Dice after the box (x = 0) and after each corrective click, one line per name."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, (name, ys) in enumerate(curves.items()):
        ax.plot(range(len(ys)), ys, marker="o", ls="--" if "released" in name else "-", color=f"C{i}", label=name)
    ax.set(xlabel="corrective clicks after the box", ylabel="mean Dice", title=title or "Dice per click")
    ax.set_xticks(range(max(len(ys) for ys in curves.values())))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
