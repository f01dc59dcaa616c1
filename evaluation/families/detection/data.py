"""Camera frames for the detection family: the pilot's options, the loaded split, image decoding and counts."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ROAD_USERS", "Kept", "DetectionOptions", "Frames", "decode_image", "png", "object_counts"]

ROAD_USERS = ("person", "bicycle", "car", "motorcycle", "bus", "truck")
Kept = list[list[tuple[int, float, tuple[float, float, float, float]]]]
"""Per image: (class index, score, box) of the pilot's classes, best first, at most `max_detections`."""


class DetectionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    classes: list[str] = Field(default_factory=lambda: list(ROAD_USERS), min_length=1)
    """COCO class names evaluated and counted; detections of other classes are ignored."""
    batch_size: int = Field(default=4, ge=1, le=256)
    """Frames per request in the clean and scenario phases."""
    offline_batch_size: int = Field(default=16, ge=1, le=1024)
    """Frames per request in the offline (throughput) phase."""
    count_score_threshold: float = Field(default=0.35, ge=0, le=1)
    """Detections with at least this score are counted (and drawn on the example frames)."""
    crowded_min_objects: int = Field(default=6, ge=1)
    """Frames with at least this many target objects, or a crowd region, form the `density=crowded` group."""
    dark_luminance: float = Field(default=80, ge=0, le=255)
    """Frames whose mean luma (BT.601, 0-255) is below this form the `lighting=dark` group."""
    example_frames: int = Field(default=2, ge=0, le=8)
    """Frames drawn with their boxes in the scorecard."""
    max_detections: int = Field(default=100, ge=1, le=1000)
    """Detections scored per frame (the best-scoring ones); COCO's maxDets."""

    @field_validator("classes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("class names must be unique")
        return value


@dataclass
class Frames:
    """Model inputs and harness-only truth for one split."""

    files: list[str]
    image_ids: list[int]
    jpeg: list[bytes]
    """The image files, byte for byte."""
    sizes: list[tuple[int, int]]
    """(width, height) of each frame."""
    gt: dict
    """COCO dataset of these frames and the pilot's classes."""
    cat_ids: list[int]
    """COCO category id of each pilot class, in `classes` order."""
    true_counts: dict[str, np.ndarray]
    """Area range -> (frames, classes) non-crowd object counts."""
    groups: dict[str, np.ndarray]
    """`density` and `lighting` label of each frame."""
    split: str = ""
    pixels: list[np.ndarray] = field(default_factory=list, repr=False)
    """The decoded frames (H x W x 3 uint8 RGB), which scenarios perturb."""


def decode_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)  # fast; noise barely compresses
    return buf.getvalue()


def object_counts(anns: list[dict], image_ids: list[int], cat_ids: list[int], lo: float, hi: float) -> np.ndarray:
    rows, cols = {i: r for r, i in enumerate(image_ids)}, {c: k for k, c in enumerate(cat_ids)}
    counts = np.zeros((len(image_ids), len(cat_ids)))
    for a in anns:
        if not a.get("iscrowd") and a["image_id"] in rows and a["category_id"] in cols and lo <= a["area"] <= hi:
            counts[rows[a["image_id"]], cols[a["category_id"]]] += 1
    return counts
