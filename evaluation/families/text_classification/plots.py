"""Text-classification plots for the scorecard: F1 per category against the baseline, and the reliability
diagram of the model's confidence. Categories are drawn by their ASCII short names (no Hangul font needed)."""

from __future__ import annotations

import numpy as np

from evaluation.families.text_classification.data import Texts
from evaluation.families.text_classification.metrics import ClassEval, reliability
from evaluation.family import Outcome, TaskFamily

__all__ = ["text_plots"]


def text_plots(fam: TaskFamily, data: Texts, outcome: Outcome) -> dict:
    import matplotlib.pyplot as plt

    names, x = list(fam.options.categories.values()), np.arange(len(data.categories))
    support = np.bincount(data.labels, minlength=len(names))
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.bar(x - 0.2, np.nan_to_num(outcome.extras["class_f1"]), 0.4, label="model", color="#4c72b0")
    ax.bar(x + 0.2, np.nan_to_num(outcome.extras["baseline_class_f1"]), 0.4, label=fam.baseline_name,
           color="#dd8452")
    ax.set_xticks(x, [f"{n} ({s})" for n, s in zip(names, support, strict=True)], rotation=40, ha="right",
                  fontsize=7)
    ax.set(ylim=(0, 1), ylabel="F1", title="F1 per category (items in the split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs = {"per_category_f1": fig}
    answered = outcome.extras["answered"]
    if answered.any():
        ev = ClassEval(data.labels[answered], outcome.extras["pred"][answered], outcome.extras["probs"][answered],
                       len(names), fam.options.calibration_bins)
        conf, acc, count = reliability(ev)
        used = count > 0
        fig, ax = plt.subplots(figsize=(4.2, 4))
        ax.plot([0, 1], [0, 1], color="black", lw=1, ls="--", label="perfectly calibrated")
        ax.plot(conf[used], acc[used], marker="o", color="#4c72b0", label="model")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top score)", ylabel="accuracy",
               title=f"Calibration (ECE {outcome.metrics['clean'].get('ece', float('nan')):.3f})")
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        figs["calibration"] = fig
    return figs
