"""Camera frames for the detection family: the pilot's options, the loaded split, image decoding and counts."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from testbed.errors import SpecError

__all__ = ["ROAD_USERS", "Kept", "DetectionOptions", "Frames", "decode_image", "png", "object_counts", "decode_frames",
           "check_annotations", "read_json_object"]

ROAD_USERS = ("person", "bicycle", "car", "motorcycle", "bus", "truck")
Kept = list[list[tuple[int, float, tuple[float, float, float, float]]]]
"""Per image: (class index, score, box) of the pilot's classes, best first (equal scores by class, then box), at
most `max_detections`."""


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
    """Detections scored per frame, over all its classes (the best-scoring ones), as the COCO detection challenge
    limits each image's results (COCOeval's own `maxDets`, per class, is then never reached)."""
    images: str = "images"
    """Folder of the image files (their COCO `file_name`s), relative to the annotations file's folder and inside
    the data folder (e.g. `../images/train2017`)."""
    splits_file: str = "splits.json"
    """JSON file, relative to the annotations file's folder, mapping each split's `members` key to its image
    file names."""

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
    """Area range -> (frames, classes) non-crowd object counts, sized by their boxes (`object_counts`)."""
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
    """(images, classes) counts of the non-crowd objects whose box covers `lo` to `hi` square pixels. By the box's
    own area, never the COCO `area` (the segmentation's, smaller): a detection has only its box, so a count by
    size compares like with like (a detector returning the true boxes counts every size band right)."""
    rows, cols = {i: r for r, i in enumerate(image_ids)}, {c: k for k, c in enumerate(cat_ids)}
    counts = np.zeros((len(image_ids), len(cat_ids)))
    for a in anns:
        if not a.get("iscrowd") and a["image_id"] in rows and a["category_id"] in cols and \
                lo <= a["bbox"][2] * a["bbox"][3] <= hi:
            counts[rows[a["image_id"]], cols[a["category_id"]]] += 1
    return counts


def decode_frames(folder: Path, images: list[dict], where: str) -> tuple[list[bytes], list[np.ndarray]]:
    """The image files of `images` (in `folder`) and their decoded pixels; a file that is not an image, or whose
    size is not the `width` and `height` the annotations give it, is a SpecError naming it."""
    raw, pixels = [], []
    for im in images:
        path = folder / str(im["file_name"])
        if not path.resolve().is_relative_to(folder.resolve()):
            raise SpecError(f"image {im['id']}: `file_name` {str(im['file_name'])[:80]!r} leaves the images folder",
                            where=where, fix="give file names relative to the images folder (task.images)")
        data = path.read_bytes()
        try:
            image = decode_image(data)
        except Exception as exc:  # noqa: BLE001 - Pillow raises several kinds for a bad file
            raise SpecError(f"{path} is not an image Pillow can read ({type(exc).__name__})", where=where,
                            fix="replace it with the original image, or remove the image from the split") from None
        if (image.shape[1], image.shape[0]) != (im.get("width"), im.get("height")):
            raise SpecError(f"{path} is {image.shape[1]}×{image.shape[0]} pixels, but image {im['id']} of the "
                            f"annotations gives width {im.get('width')} and height {im.get('height')}", where=where,
                            fix="correct the image's `width` and `height` in the annotations file (its boxes are "
                                "in the image's own pixels)")
        raw.append(data)
        pixels.append(image)
    return raw, pixels


def check_annotations(anns: list[dict], images: list[dict], categories: list[dict], where: str) -> None:
    """The ground truth of a split's frames is whole: each box `[x, y, width, height]` of finite numbers with a
    positive size inside its image (half a pixel of rounding allowed), a known `category_id` and an `area`.
    Bad truth would fail a vendor for the city's mistake, so it is a SpecError naming the annotation."""
    sizes, known = {im["id"]: (im.get("width"), im.get("height")) for im in images}, {c["id"] for c in categories}
    fix = ("correct or remove the annotation (COCO: `bbox` is [x, y, width, height] in the image's pixels, `area` "
           "the object's area, `category_id` one of `categories`)")
    for a in anns:
        if a.get("image_id") not in sizes:
            continue
        what = f"annotation {a.get('id')} (image {a['image_id']})"
        if a.get("category_id") not in known:
            raise SpecError(f"{what}: field `category_id` {a.get('category_id')!r} is not one of the categories",
                            where=where, fix=fix)
        box, (w_img, h_img) = a.get("bbox"), sizes[a["image_id"]]
        numbers = isinstance(box, list) and len(box) == 4 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        if not numbers or box[2] <= 0 or box[3] <= 0 or box[0] < -0.5 or box[1] < -0.5 or \
                box[0] + box[2] > w_img + 0.5 or box[1] + box[3] > h_img + 0.5:
            raise SpecError(f"{what}: field `bbox` {box!r} is not a box of positive size inside the "
                            f"{w_img}×{h_img} image", where=where, fix=fix)
        area = a.get("area")
        if not isinstance(area, int | float) or isinstance(area, bool) or not math.isfinite(area) or area < 0:
            raise SpecError(f"{what}: field `area` is {area!r}, not a number of pixels", where=where, fix=fix)


def read_json_object(path: Path, lists: tuple[str, ...], field: str, where: str, form: str) -> dict:
    """`path` read as a JSON object whose keys `lists` (all of them; none given: every key) hold lists, or a
    SpecError naming the file, the spec field that names it and the form it must have."""
    fix = f"give `{field}` a JSON file of the form {form}"
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path} is not JSON ({type(exc).__name__}: {str(exc)[:120]})", where=where, fix=fix) from None
    if not isinstance(value, dict):
        raise SpecError(f"{path} holds a JSON {type(value).__name__}, not an object", where=where, fix=fix)
    wrong = [k for k in (lists or tuple(value)) if not isinstance(value.get(k), list)]
    if wrong:
        raise SpecError(f"{path}: `{wrong[0]}` is {'missing' if wrong[0] not in value else 'not a list'}", where=where,
                        fix=fix)
    return value
