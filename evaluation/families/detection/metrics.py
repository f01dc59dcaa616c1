"""Detection and counting metrics. COCO evaluation runs once per scenario (or image group) through
faster-coco-eval (`coco_evaluate`); each registered metric then reads the `DetectionEval` it produced."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

from evaluation.registry import metric

__all__ = ["AREA_RANGES", "DetectionEval", "coco_evaluate", "class_ap", "class_count_mae"]

AREA_RANGES = {"all": [0.0, 1e5**2], "small": [0.0, 32.0**2], "medium": [32.0**2, 96.0**2],
               "large": [96.0**2, 1e5**2]}
"""COCO's object-area ranges in square pixels (`size` groups use small, medium, large)."""


@dataclass
class DetectionEval:
    """What the metrics read: COCO precision/recall for one area range at the largest maxDets, and counts."""

    precision: np.ndarray
    """(IoU thresholds .50:.05:.95, 101 recall points, classes); -1 where a class has no ground truth."""
    recall: np.ndarray
    """(IoU thresholds, classes); -1 where a class has no ground truth."""
    true_counts: np.ndarray
    """(images, classes): non-crowd ground-truth objects."""
    pred_counts: np.ndarray
    """(images, classes): detections at or above the pilot's count threshold."""


def coco_evaluate(gt: dict, detections: list[dict], cat_ids: list[int], img_ids: list[int],
                  max_dets: int = 100) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """COCO bbox evaluation (iscrowd regions ignored, `max_dets` per image and class) of `detections`
    (COCO result dicts) against the `gt` dataset, restricted to `cat_ids` and `img_ids`.
    Returns area range -> (precision (T, R, K), recall (T, K)), classes in `cat_ids` order."""
    from faster_coco_eval import COCO, COCOeval_faster

    # evaluation marks each ground-truth annotation in place (`ignore`): a fresh dict per annotation is enough,
    # at a fraction of a deep copy's cost
    fresh = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(fresh)
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox",
                             ranges={k: v for k, v in AREA_RANGES.items() if k != "all"})
        ev.params.catIds, ev.params.imgIds = list(cat_ids), list(img_ids)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    precision, recall = ev.eval["precision"], ev.eval["recall"]
    return {name: (precision[:, :, :, a, -1], recall[:, :, a, -1]) for a, name in enumerate(ev.params.areaRngLbl)}


def _mean(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def class_ap(ev: DetectionEval, k: int) -> float:
    """AP@[.50:.95] of class `k` (NaN when it has no ground truth)."""
    return _mean(ev.precision[:, :, k])


def class_count_mae(ev: DetectionEval, k: int) -> float:
    """Mean absolute error of class `k`'s per-image count."""
    return float(np.mean(np.abs(ev.pred_counts[:, k] - ev.true_counts[:, k]))) if len(ev.true_counts) else float("nan")


@metric("map", family="detection", goal="max", span=(0.0, 1.0))
def mean_ap(ev: DetectionEval) -> float:
    """COCO mAP@[.50:.95]: precision averaged over 10 IoU thresholds, 101 recall points and the classes."""
    return _mean(ev.precision)


@metric("map_50", family="detection", goal="max", span=(0.0, 1.0))
def mean_ap_50(ev: DetectionEval) -> float:
    """COCO mAP at IoU 0.5 (the PASCAL VOC-style figure)."""
    return _mean(ev.precision[0])


@metric("mar_100", family="detection", goal="max", span=(0.0, 1.0))
def mean_ar(ev: DetectionEval) -> float:
    """COCO mean recall with up to 100 detections per image, over IoU .50:.95 and the classes."""
    return _mean(ev.recall)


@metric("count_mae", family="detection", goal="min")
def count_mae(ev: DetectionEval) -> float:
    """Counting error: per class, the mean absolute error of per-image counts; then the mean over classes."""
    if not len(ev.true_counts):
        return float("nan")
    return float(np.mean(np.abs(ev.pred_counts - ev.true_counts)))
