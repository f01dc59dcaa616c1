"""Detection plots for the scorecard: example frames with true and counted boxes, AP and counts per class."""

from __future__ import annotations

import numpy as np

from evaluation.families.detection.data import Frames, decode_image
from evaluation.family import Outcome, TaskFamily

__all__ = ["detection_plots"]

TRUE_COLOUR, PRED_COLOUR = "#00c853", "#ff9100"


def _examples(fam: TaskFamily, data: Frames) -> list[int]:
    """Frames to draw: the most classes, then the most objects."""
    distinct, total = (data.true_counts["all"] > 0).sum(1), data.true_counts["all"].sum(1)
    return sorted(range(len(data.jpeg)), key=lambda i: (-distinct[i], -total[i], i))[:fam.options.example_frames]


def _draw(fam: TaskFamily, ax, image: np.ndarray, data: Frames, i: int, dets, title: str) -> None:
    from matplotlib.patches import Rectangle

    ax.imshow(image)
    ax.set(xticks=[], yticks=[])  # hidden anyway; without them, placing the title does not lay out ~20 ticks
    ax.set_axis_off()
    truth = [a for a in data.gt["annotations"] if a["image_id"] == data.image_ids[i]]
    for a in truth:
        ax.add_patch(Rectangle(a["bbox"][:2], *a["bbox"][2:], fill=False, ec=TRUE_COLOUR, lw=1.3,
                               ls=":" if a.get("iscrowd") else "--"))
    counted = [d for d in dets if d[1] >= fam.options.count_score_threshold]
    for k, s, (x1, y1, x2, y2) in counted:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=PRED_COLOUR, lw=1.2))
        ax.text(x1, y1, f"{fam.options.classes[k]} {s:.2f}", fontsize=5.5, va="bottom",
                bbox={"fc": PRED_COLOUR, "ec": "none", "pad": 0.4, "alpha": 0.75})
    n_true = sum(not a.get("iscrowd") for a in truth)
    ax.set_title(f"{title}: {n_true} true, {len(counted)} counted", fontsize=9)


def detection_plots(fam: TaskFamily, data: Frames, outcome: Outcome) -> dict:
    """Example frames with their boxes (clean and the harshest scenario), AP and counts per class."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    kept, aps, classes = outcome.extras["kept"], outcome.extras["class_ap"], fam.options.classes
    scenarios = {sc.name: sc for sc in fam.spec.scenarios}
    harsh = min(scenarios, key=lambda s: np.nan_to_num(outcome.metrics[s]["map"], nan=np.inf), default=None)
    cols, rows, figs = ["clean", *([harsh] if harsh else [])], _examples(fam, data), {}
    if rows:
        fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.6 * len(cols), 3.5 * len(rows) + 0.4),
                                 squeeze=False)
        for r, i in enumerate(rows):
            for c, name in enumerate(cols):
                raw = data.jpeg[i] if name == "clean" else fam.perturb_frame(data.pixels[i], i, scenarios[name])
                _draw(fam, axes[r, c], decode_image(raw), data, i, kept[name][i], name)
        fig.legend(handles=[Line2D([], [], color=TRUE_COLOUR, ls="--", label="ground truth (dotted: crowd)"),
                            Line2D([], [], color=PRED_COLOUR, label="detected, score ≥ "
                                   f"{fam.options.count_score_threshold:g} (counted)")],
                   loc="lower center", ncol=2, fontsize=8, frameon=False)
        fig.suptitle(f"Example frames: clean{f' and the harshest scenario ({harsh})' if harsh else ''}",
                     fontsize=10)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        figs["example_frames"] = fig
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    x, w = np.arange(len(classes)), 0.38
    for off, name in zip((-w / 2, w / 2), cols, strict=False):
        left.bar(x + off, np.nan_to_num(aps[name]), w, label=name)
    for k in np.flatnonzero(np.isnan(aps["clean"])):
        left.text(k, 0.02, "no objects", rotation=90, fontsize=7, ha="center", va="bottom", color="#667")
    left.set(ylim=(0, 1), ylabel="AP@[.50:.95]", title="Detection AP per class")
    counted = np.zeros(len(classes))
    for dets in kept["clean"]:
        for k, s, _ in dets:
            counted[k] += s >= fam.options.count_score_threshold
    right.bar(x - w / 2, data.true_counts["all"].sum(0), w, label="true", color="#2e7d32")
    right.bar(x + w / 2, counted, w, label="counted (clean)", color=PRED_COLOUR)
    right.set(ylabel="objects in the split", title="Counts per class (all frames)")
    for ax in (left, right):
        ax.set_xticks(x, classes, rotation=25, fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    figs["per_class"] = fig
    return figs
