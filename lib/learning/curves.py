"""Learning-curve PNGs (matplotlib, Agg backend: no display on a server)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def smooth(values: Sequence[float], window: int = 10) -> list[float]:
    """Trailing moving average (the raw per-step loss of small batches is too noisy to read)."""
    out, acc = [], []
    for v in values:
        acc.append(float(v))
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_curves(path: str | Path, panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
                title: str) -> Path:
    """One PNG with one panel per entry of ``panels``: ``{panel: {series: (steps, values)}}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), dpi=100, squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items()):
        for label, (xs, ys) in series.items():
            if len(xs):
                ax.plot(list(xs), list(ys), marker="o" if len(xs) < 30 else None, ms=3, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
