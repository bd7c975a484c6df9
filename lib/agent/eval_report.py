"""Plots and the Markdown report of a slice evaluation (``lib.agent.evaluation``): Dice vs turn, a strip of the
agent's turns on a few targets, and ``report.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lib.agent.evaluation import ORACLES, Evaluation


def strips(ev: Evaluation, run: str, n: int) -> list[dict[str, Any]]:
    """The first kept target of up to ``n`` distinct labels, with ``run``'s mask after each turn."""
    out, seen = [], set()
    for row, (image, gt), traj in zip(ev.rows, ev.images, ev.trajectories[run], strict=False):
        if traj is None or row["label"] in seen or len(out) >= n:
            continue
        seen.add(row["label"])
        out.append({"case_id": row["case_id"], "slice_index": row["slice_index"], "label": row["label"],
                    "image": image, "gt": gt, "masks": traj.mask_arrays(), "dices": traj.dices,
                    "actions": [a for a in traj.actions if a["type"] != "stop" and "invalid" not in a]})
    return out


def plot_dice_vs_turn(path: Path, curves: dict[str, list[float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    styles = {"box": ":", "expert": "--", "ellipse": "-."}
    for name, curve in curves.items():
        ax.plot(range(len(curve)), curve, styles.get(name, "-"), marker="o", label=name)
    ax.set_xlabel("turn (Box/Point actions)")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_strip(path: Path, strips: list[dict[str, Any]], max_turns: int) -> None:
    """One row per case: the slice with the ground truth, then the mask after each turn with its prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not strips:
        return
    cols = max_turns + 1
    fig, axes = plt.subplots(len(strips), cols, figsize=(2.2 * cols, 2.3 * len(strips)), dpi=90, squeeze=False)
    for r, s in enumerate(strips):
        img = s["image"] if s["image"].ndim == 2 else s["image"].mean(axis=2) / 255.0
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.contour(s["gt"], levels=[0.5], colors="yellow", linewidths=0.8)
                ax.set_title(f"{s['case_id']}:{s['slice_index']} {s['label']}", fontsize=7)
                continue
            if c - 1 >= len(s["masks"]):
                ax.set_title(f"turn {c}: stopped", fontsize=7)
                continue
            m = s["masks"][c - 1]
            overlay = np.zeros((*m.shape, 4))
            overlay[m] = (0.0, 1.0, 0.0, 0.5)
            ax.imshow(overlay)
            ax.contour(s["gt"], levels=[0.5], colors="yellow", linewidths=0.5)
            for a in s["actions"][:c]:
                if a["type"] == "box":
                    x0, y0, x1, y1 = a["box"]
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="cyan", lw=0.8))
                elif a["type"] == "point":
                    ax.plot(*a["point"], "+" if a["positive"] else "x", color="lime" if a["positive"] else "red",
                            ms=6, mew=1.5)
            ax.set_title(f"turn {c}: Dice {s['dices'][c - 1]:.2f}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(path: Path, res: dict[str, Any]) -> None:
    t = res["max_turns"]
    lines = [
        f"# Evaluation: `{res['policy']}` ({res['mode']}, backend `{res['backend']}`)",
        "",
        f"Dataset `{res['dataset']}` split `{res['split']}`: {res['n_targets']} targets from {res['n_cases']} cases; "
        f"turn budget {t}; prompting `{res['prompting']}`; seed {res['seed']}.",
        "",
        "| run | final Dice | final IoU | mean turns | " + " | ".join(f"Dice@{i}" for i in range(t + 1)) + " |",
        "|---|---|---|---|" + "---|" * (t + 1),
    ]
    runs = [(res["policy"] + (" (oracle)" if res["policy"] in ORACLES else ""), res)]
    runs += [(f"baseline: {k}", v) for k, v in res["baselines"].items()]
    for name, r in runs:
        lines.append(
            f"| {name} | {r['final_dice']:.3f} | {r['final_iou']:.3f} | {r['mean_turns']:.2f} | "
            + " | ".join(f"{v:.3f}" for v in r["dice_per_turn"])
            + " |"
        )
    lat = res["latency_ms"]
    lines += [
        "",
        f"NoC@85 {res['noc85']:.2f}, NoC@90 {res['noc90']:.2f} (click simulator with this tool, max 20 clicks).",
        f"Latency: encoder {lat['encoder']:.0f} ms per slice (shared by all runs and labels), decoder "
        f"{lat['decoder']:.0f} ms "
        f"and policy {lat['policy']:.1f} ms per turn.",
        "",
        "## Per label",
        "",
        "| label | n | final Dice | final IoU | turns | " + "".join(f"{b} Dice | " for b in res["baselines"]),
        "|---|---|---|---|---|" + "---|" * len(res["baselines"]),
    ]
    for label, m in res["per_label"].items():
        lines.append(f"| {label} | {m['n']} | {m['final_dice']:.3f} | {m['final_iou']:.3f} | {m['turns']:.2f} | "
                     + "".join(f"{m[f'{b}_dice']:.3f} | " for b in res["baselines"]))
    for key, who in (("quality_calibration", "the policy's predicted quality"),
                     ("tool_quality_calibration", "the tool's own IoU output")):
        q = res.get(key)
        if q:
            lines += ["", f"Quality: {who} against the true IoU of the masks it judged: n {q['n']}, Spearman "
                      f"{_fmt(q['spearman'])}, ECE {_fmt(q['ece'])}, MAE {_fmt(q['mae'])}."]
    if res.get("quality_calibration"):
        lines += ["", "![reliability](reliability.png)"]
    lines += ["", "![Dice vs turn](dice_vs_turn.png)", "", "![turns](turns_strip.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")




def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def plot_reliability(path: Path, calibrations: dict[str, dict[str, Any]], title: str) -> None:
    """Reliability diagram: mean true IoU against mean predicted quality per bin (``calibration_metrics`` bins),
    one line per entry of ``calibrations``; the diagonal is perfect calibration, marker area ~ pairs in the bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    for name, q in calibrations.items():
        bins = q.get("bins") or []
        if not bins:
            continue
        n = max(sum(b["n"] for b in bins), 1)
        label = f"{name}: ECE {_fmt(q.get('ece'))}, Spearman {_fmt(q.get('spearman'))}, n {q.get('n')}"
        line, = ax.plot([b["predicted"] for b in bins], [b["true"] for b in bins], marker=None, label=label)
        ax.scatter([b["predicted"] for b in bins], [b["true"] for b in bins], s=[8 + 400 * b["n"] / n for b in bins],
                   color=line.get_color(), alpha=0.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted quality (mean per bin)")
    ax.set_ylabel("true IoU (mean per bin)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
