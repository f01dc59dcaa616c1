"""The detection task contract (road users on camera frames: boxes, classes, scores).

    @bentoml.service
    class MyDetector:
        @bentoml.api
        def detect(self, images: list[str]) -> list[list[dict]]: ...

- `images`: a list of base64-encoded image files (JPEG or PNG, RGB or greyscale; EXIF orientation is not
  applied), one per camera frame. One request carries many frames.
- returns: one list per input image, in input order, of detections
  `{"label": str, "score": float, "box": [x1, y1, x2, y2]}`: `label` a COCO class name (e.g. `person`, `car`,
  `motorcycle`), `score` in [0, 1], `box` the corners in pixels of the input image (x1 < x2, y1 < y2; boxes may
  reach past the frame, the harness clips them). Return low-score detections too (the harness computes mAP
  over all scores and counts those above the pilot's count threshold); at most 100 per image are scored, the
  best-scoring (equal scores by class, then box: the order of the list never matters).
  Labels outside the pilot's classes are ignored.
"""

from __future__ import annotations

import base64
import json
import math
from itertools import chain
from typing import NamedTuple

import numpy as np

from evaluation.contract import Contract, ContractViolation

__all__ = ["DETECT", "Detection", "encode_request", "decode_response"]

DETECT = Contract(
    family="detection",
    api="detect",
    inputs={"images": ("array",)},
    summary=__doc__.split("\n\n", 1)[1].strip(),
)

TOLERANCE = 0.01
"""Pixels by which a box may be inverted (x2 < x1) through rounding before it is a violation."""


class Detection(NamedTuple):
    label: str
    score: float
    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in pixels, clipped to the image when its size is known."""


def encode_request(images: list[bytes]) -> bytes:
    """JSON body for one request: the image files, base64-encoded (its alphabet needs no JSON escaping, so the
    strings are joined as they are)."""
    return b'{"images": [' + b", ".join(b'"' + base64.b64encode(im) + b'"' for im in images) + b"]}"


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _detection(det, where: str, size: tuple[int, int] | None) -> Detection | None:
    if not isinstance(det, dict):
        raise ContractViolation(f"{where}: a detection must be an object, got {type(det).__name__}")
    missing = {"label", "score", "box"} - set(det)
    if missing:
        raise ContractViolation(f"{where}: detection lacks {', '.join(sorted(missing))}")
    label, score, box = det["label"], det["score"], det["box"]
    if not isinstance(label, str):
        raise ContractViolation(f"{where}: `label` must be a string, got {label!r}")
    if not _number(score) or not 0 <= score <= 1:
        raise ContractViolation(f"{where}: `score` must be a number in [0, 1], got {score!r}")
    if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box):
        raise ContractViolation(f"{where}: `box` must be [x1, y1, x2, y2] numbers, got {box!r}")
    if not all(math.isfinite(v) for v in box):
        raise ContractViolation(f"{where}: `box` has a non-finite coordinate: {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 < x1 - TOLERANCE or y2 < y1 - TOLERANCE:
        raise ContractViolation(f"{where}: `box` {box!r} is not [x1, y1, x2, y2] with x1 < x2 and y1 < y2")
    if size is not None:
        w, h = size
        x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
        y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    if x2 <= x1 or y2 <= y1:
        return None  # empty (or entirely outside the frame): nothing to score
    return Detection(label, float(score), (x1, y1, x2, y2))


def _bulk(dets: list, size: tuple[int, int] | None) -> list[Detection] | None:
    """The checks of `_detection` for a whole image at once (numbers are floats here: `decode_response` parses
    integers as floats); None when anything is off, for `_detection` to name it."""
    if not dets or set(map(type, dets)) != {dict}:
        return None if dets else []
    try:
        labels, scores, boxes = [d["label"] for d in dets], [d["score"] for d in dets], [d["box"] for d in dets]
    except KeyError:
        return None
    if set(map(type, labels)) != {str} or set(map(type, scores)) != {float} or set(map(type, boxes)) != {list} \
            or set(map(len, boxes)) != {4}:
        return None
    flat = list(chain.from_iterable(boxes))
    if set(map(type, flat)) != {float}:
        return None
    score, box = np.array(scores), np.array(flat).reshape(-1, 4)
    if not (np.isfinite(box).all() and ((score >= 0) & (score <= 1)).all()) or (
            (box[:, 2] < box[:, 0] - TOLERANCE) | (box[:, 3] < box[:, 1] - TOLERANCE)).any():
        return None
    if size is not None:
        box[:, 0::2], box[:, 1::2] = box[:, 0::2].clip(0.0, size[0]), box[:, 1::2].clip(0.0, size[1])
    keep = ((box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])).tolist()
    rows = zip(labels, score.tolist(), box.tolist(), keep, strict=True)
    return [Detection(label, s, tuple(b)) for label, s, b, k in rows if k]


def decode_response(body: bytes, n_images: int, sizes: list[tuple[int, int]] | None = None) -> list[list[Detection]]:
    """Parse and check one response for `n_images` frames of `sizes` (width, height); raise ContractViolation
    with what is wrong. Boxes are clipped to the frame; empty boxes are dropped."""
    try:  # hostile input: huge integers become inf (refused as non-finite), deep nesting is refused
        data = json.loads(body, parse_int=float)
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise ContractViolation(f"response is not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(data, list) or not all(isinstance(dets, list) for dets in data):
        raise ContractViolation("response must be a list with one list of detections per image")
    if len(data) != n_images:
        raise ContractViolation(f"response has {len(data)} lists of detections for {n_images} images")
    out = []
    for i, dets in enumerate(data):
        size = sizes[i] if sizes is not None else None
        bulk = _bulk(dets, size)
        if bulk is None:
            found = (_detection(det, f"image {i}, detection {j}", size) for j, det in enumerate(dets))
            bulk = [d for d in found if d is not None]
        out.append(bulk)
    return out
