"""Classification metrics on one set of answers: `ClassEval` holds true and predicted category indices and the
per-category probabilities; each registered metric reads it. numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.registry import metric

__all__ = ["ClassEval", "class_f1", "reliability"]

FAMILY = "text-classification"


@dataclass
class ClassEval:
    truth: np.ndarray
    """True category index per item."""
    pred: np.ndarray
    """Predicted category index per item (the answer's `label`)."""
    probs: np.ndarray
    """(items, categories) probabilities."""
    n_classes: int
    bins: int = 15
    """Equal-width confidence bins for calibration."""


def class_f1(ev: ClassEval) -> np.ndarray:
    """F1 of each category (precision and recall of its label over these items); NaN where a category is
    neither true nor predicted."""
    k = np.arange(ev.n_classes)[:, None]
    tp = ((ev.pred == k) & (ev.truth == k)).sum(1)
    predicted, actual = (ev.pred == k).sum(1), (ev.truth == k).sum(1)
    denom = predicted + actual
    return np.divide(2 * tp, denom, out=np.full(ev.n_classes, np.nan), where=denom > 0)


def reliability(ev: ClassEval) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin: mean confidence (top score), accuracy, and item count."""
    conf = ev.probs.max(1)
    which = np.minimum((conf * ev.bins).astype(int), ev.bins - 1)
    count = np.bincount(which, minlength=ev.bins)
    right = np.bincount(which, weights=(ev.pred == ev.truth).astype(float), minlength=ev.bins)
    total = np.bincount(which, weights=conf, minlength=ev.bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count, right / count, count


@metric("accuracy", family=FAMILY, goal="max", span=(0.0, 1.0))
def accuracy(ev: ClassEval) -> float:
    """Share of items routed to their true category."""
    return float(np.mean(ev.pred == ev.truth)) if len(ev.truth) else float("nan")


@metric("macro_f1", family=FAMILY, goal="max", span=(0.0, 1.0))
def macro_f1(ev: ClassEval) -> float:
    """Mean F1 over the categories that occur among these items' true labels or their answers (scikit-learn's
    default): every category counts the same, however rare, and answering a category none of these items has
    costs as a wrong answer to a present one does (it counted only once, in the true category's recall)."""
    f1 = class_f1(ev)
    return float(np.nanmean(f1)) if len(ev.truth) and not np.isnan(f1).all() else float("nan")


@metric("ece", family=FAMILY, goal="min", span=(0.0, 1.0))
def ece(ev: ClassEval) -> float:
    """Expected calibration error of the top score: |accuracy - confidence| per equal-width confidence bin,
    weighted by the bin's share of items (0 = a score of 0.8 is right 80 % of the time)."""
    if not len(ev.truth):
        return float("nan")
    conf, acc, count = reliability(ev)
    used = count > 0
    return float(np.sum(np.abs(acc[used] - conf[used]) * count[used]) / count.sum())
