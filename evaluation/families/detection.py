"""Road-user detection and counting on camera frames: images in, boxes with classes and scores out."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evaluation.families import family
from evaluation.families.base import Outcome, TaskFamily
from evaluation.metrics.detection import AREA_RANGES, DetectionEval, class_ap, class_count_mae, coco_evaluate
from evaluation.scenarios import SCENARIOS
from pilots.errors import SpecError
from pilots.spec import ScenarioSpec
from sandbox.runner import Phase, SandboxResult
from serving.contracts import ContractViolation
from serving.detection import DETECT, decode_response, encode_request

__all__ = ["ObjectDetection", "Frames", "ROAD_USERS"]

ROAD_USERS = ("person", "bicycle", "car", "motorcycle", "bus", "truck")
TRUE_COLOUR, PRED_COLOUR = "#00c853", "#ff9100"
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


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)  # fast; noise barely compresses
    return buf.getvalue()


def _counts(anns: list[dict], image_ids: list[int], cat_ids: list[int], lo: float, hi: float) -> np.ndarray:
    rows, cols = {i: r for r, i in enumerate(image_ids)}, {c: k for k, c in enumerate(cat_ids)}
    counts = np.zeros((len(image_ids), len(cat_ids)))
    for a in anns:
        if not a.get("iscrowd") and a["image_id"] in rows and a["category_id"] in cols and lo <= a["area"] <= hi:
            counts[rows[a["image_id"]], cols[a["category_id"]]] += 1
    return counts


@family("detection")
class ObjectDetection(TaskFamily):
    contract = DETECT
    Options = DetectionOptions
    group_keys = ("size", "density", "lighting")
    primary_metric = "map"
    baseline_metric = "count_mae"
    technology_fields = ("computer_vision", "autonomous_driving")
    baseline_name = "mean_count_from_public_sample"

    def _members(self, split: str) -> list[str]:
        where = f"pilot {self.spec.id}: dataset.splits.{split}.members"
        key, path = self.spec.dataset.splits[split].members, self.data_path.parent / "splits.json"
        members = json.loads(path.read_text()).get(key) if key and path.is_file() else None
        if not members:
            raise SpecError(f"no list {key!r} in {path}", where=where,
                            fix="name a key of the splits.json beside the annotations file")
        return members

    def _read(self, split: str) -> tuple[dict, list[dict], list[int]]:
        coco = json.loads(self.data_path.read_text())
        by_name = {c["name"]: c["id"] for c in coco["categories"]}
        unknown = [c for c in self.options.classes if c not in by_name]
        if unknown:
            raise SpecError(f"classes {unknown} are not categories of {self.data_path.name}",
                            where=f"pilot {self.spec.id}: task.classes", fix=f"use some of: {', '.join(by_name)}")
        by_file, members = {im["file_name"]: im for im in coco["images"]}, self._members(split)
        missing = [name for name in members if name not in by_file]
        if missing:
            raise SpecError(f"split {split!r} lists {len(missing)} images that {self.data_path.name} lacks, "
                            f"e.g. {missing[0]}", where=f"pilot {self.spec.id}: dataset",
                            fix="use the splits.json that belongs to this annotations file")
        images = [by_file[name] for name in members]
        return coco, images, [by_name[c] for c in self.options.classes]

    def load(self, split: str) -> Frames:
        o = self.options
        coco, images, cat_ids = self._read(split)
        ids = [im["id"] for im in images]
        anns = [a for a in coco["annotations"] if a["image_id"] in set(ids) and a["category_id"] in set(cat_ids)]
        gt = {"info": coco.get("info", {}), "licenses": coco.get("licenses", []), "images": images,
              "annotations": anns, "categories": [c for c in coco["categories"] if c["id"] in cat_ids]}
        jpeg = [(self.data_path.parent / "images" / im["file_name"]).read_bytes() for im in images]
        counts = {area: _counts(anns, ids, cat_ids, lo, hi) for area, (lo, hi) in AREA_RANGES.items()}
        crowd = {a["image_id"] for a in anns if a.get("iscrowd")}
        crowded = (counts["all"].sum(1) >= o.crowded_min_objects) | np.isin(ids, list(crowd))
        luma = np.array([float((_decode(raw) @ np.array([0.299, 0.587, 0.114])).mean()) for raw in jpeg])
        groups = {"density": np.where(crowded, "crowded", "sparse"),
                  "lighting": np.where(luma < o.dark_luminance, "dark", "normal")}
        return Frames([im["file_name"] for im in images], ids, jpeg, [(im["width"], im["height"]) for im in images],
                      gt, cat_ids, counts, groups, split)

    def perturb(self, image: np.ndarray, i: int, sc: ScenarioSpec) -> bytes:
        """Frame `i` (decoded) under scenario `sc`, as an image file; each frame has its own seeded generator."""
        out = SCENARIOS.get(sc.name)(image, sc.severity, np.random.default_rng([sc.seed, i]))
        return out if isinstance(out, bytes) else _png(out)

    def _phase(self, name: str, frames: list[bytes], size: int) -> Phase:
        cuts = [slice(i, min(i + size, len(frames))) for i in range(0, len(frames), size)]
        return Phase(name, [encode_request(frames[s]) for s in cuts], [s.stop - s.start for s in cuts])

    def phases(self, data: Frames) -> list[Phase]:
        o, frames = self.options, [_decode(raw) for raw in data.jpeg]
        phases = [self._phase("clean", data.jpeg, o.batch_size)]
        for sc in self.spec.scenarios:
            phases.append(self._phase(sc.name, [self.perturb(f, i, sc) for i, f in enumerate(frames)], o.batch_size))
        return [*phases, self._phase("single_stream", data.jpeg, 1),
                self._phase("offline", data.jpeg, o.offline_batch_size)]

    def _detections(self, data: Frames, result: SandboxResult, name: str, violations: list[str]):
        """Kept detections per frame (none where a request failed) and which frames got a valid answer."""
        index = {c: k for k, c in enumerate(self.options.classes)}
        kept: Kept = [[] for _ in data.jpeg]
        answered = np.zeros(len(data.jpeg), bool)
        phase, start = result.phases.get(name), 0
        for body, items in zip(phase.bodies, phase.items, strict=True) if phase else []:
            if body is not None:
                try:
                    for i, dets in enumerate(decode_response(body, items, data.sizes[start:start + items]), start):
                        mine = sorted(((index[d.label], d.score, d.box) for d in dets if d.label in index),
                                      key=lambda t: -t[1])
                        kept[i], answered[i] = mine[:self.options.max_detections], True
                except ContractViolation as exc:
                    violations.append(f"{name}: {exc}")
            start += items
        return kept, answered

    def _evaluate(self, data: Frames, kept: Kept, rows: np.ndarray) -> dict[str, DetectionEval]:
        """COCO evaluation of the frames `rows`, per area range, with the counts beside it."""
        o = self.options
        results = [{"image_id": data.image_ids[i], "category_id": data.cat_ids[k], "score": s,
                    "bbox": [x1, y1, x2 - x1, y2 - y1]} for i in rows for k, s, (x1, y1, x2, y2) in kept[i]]
        coco = coco_evaluate(data.gt, results, data.cat_ids, [data.image_ids[i] for i in rows], o.max_detections)
        out = {}
        for area, (precision, recall) in coco.items():
            lo, hi = AREA_RANGES[area]
            pred = np.zeros((len(rows), len(data.cat_ids)))
            for r, i in enumerate(rows):
                for k, s, (x1, y1, x2, y2) in kept[i]:
                    pred[r, k] += s >= o.count_score_threshold and lo <= (x2 - x1) * (y2 - y1) <= hi
            out[area] = DetectionEval(precision, recall, data.true_counts[area][rows], pred)
        return out

    def score(self, data: Frames, result: SandboxResult) -> Outcome:
        violations, fns, every = [], self.metric_functions(), np.arange(len(data.jpeg))
        names = ["clean", *(sc.name for sc in self.spec.scenarios)]
        kept = {name: self._detections(data, result, name, violations) for name in names}
        for load_phase in ("single_stream", "offline"):
            self._detections(data, result, load_phase, violations)
        evals = {name: self._evaluate(data, k, every) for name, (k, _) in kept.items()}
        metrics = {name: {m: fn(ev["all"]) for m, fn in fns.items()} for name, ev in evals.items()}
        clean, classes = evals["clean"]["all"], self.options.classes
        class_aps = {name: [class_ap(ev["all"], k) for k in range(len(classes))] for name, ev in evals.items()}
        metrics["clean"] |= {f"ap/{c}": ap for c, ap in zip(classes, class_aps["clean"], strict=True)
                             if not math.isnan(ap)}  # classes absent from the split have no AP
        metrics["clean"] |= {f"count_mae/{c}": class_count_mae(clean, k) for k, c in enumerate(classes)}
        groups = {}
        for key in self.spec.groups:
            if key == "size":
                found = {f"size={a}": evals["clean"][a] for a in ("small", "medium", "large")}
            else:
                labels = data.groups[key]
                found = {f"{key}={v}": self._evaluate(data, kept["clean"][0], np.flatnonzero(labels == v))["all"]
                         for v in sorted(set(labels))}
            groups |= {g: {m: fn(ev) for m, fn in fns.items()} for g, ev in found.items() if (ev.precision > -1).any()}
        baseline = self._baseline(clean)
        return Outcome(
            metrics=metrics, groups=groups, violations=violations,
            baseline={"name": self.baseline_name, **{m: fn(baseline) for m, fn in fns.items()}},
            coverage=float(kept["clean"][1].mean()) if len(every) else 0.0,
            extras={"kept": {name: k for name, (k, _) in kept.items()}, "class_ap": class_aps})

    def _baseline(self, clean: DetectionEval) -> DetectionEval:
        """Non-deep-learning rule: no boxes; every frame's count is the public sample's mean count per class."""
        coco, images, cat_ids = self._read("sample")
        ids = [im["id"] for im in images]
        mean = _counts(coco["annotations"], ids, cat_ids, *AREA_RANGES["all"]).mean(0)
        return DetectionEval(np.where(clean.precision > -1, 0.0, -1.0), np.where(clean.recall > -1, 0.0, -1.0),
                             clean.true_counts, np.broadcast_to(mean, clean.true_counts.shape))

    def export(self, data: Frames, out_dir) -> list:
        folder = out_dir / data.split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        paths = []
        for name, raw in zip(data.files, data.jpeg, strict=True):
            paths.append(folder / "images" / name)
            paths[-1].write_bytes(raw)
        paths.append(folder / "annotations.json")
        paths[-1].write_text(json.dumps(data.gt, indent=1))
        return paths

    def _examples(self, data: Frames) -> list[int]:
        """Frames to draw: the most classes, then the most objects."""
        distinct, total = (data.true_counts["all"] > 0).sum(1), data.true_counts["all"].sum(1)
        return sorted(range(len(data.jpeg)), key=lambda i: (-distinct[i], -total[i], i))[:self.options.example_frames]

    def _draw(self, ax, image: np.ndarray, data: Frames, i: int, dets, title: str) -> None:
        from matplotlib.patches import Rectangle

        ax.imshow(image)
        ax.set_axis_off()
        truth = [a for a in data.gt["annotations"] if a["image_id"] == data.image_ids[i]]
        for a in truth:
            ax.add_patch(Rectangle(a["bbox"][:2], *a["bbox"][2:], fill=False, ec=TRUE_COLOUR, lw=1.3,
                                   ls=":" if a.get("iscrowd") else "--"))
        counted = [d for d in dets if d[1] >= self.options.count_score_threshold]
        for k, s, (x1, y1, x2, y2) in counted:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=PRED_COLOUR, lw=1.2))
            ax.text(x1, y1, f"{self.options.classes[k]} {s:.2f}", fontsize=5.5, va="bottom",
                    bbox={"fc": PRED_COLOUR, "ec": "none", "pad": 0.4, "alpha": 0.75})
        n_true = sum(not a.get("iscrowd") for a in truth)
        ax.set_title(f"{title}: {n_true} true, {len(counted)} counted", fontsize=9)

    def plots(self, data: Frames, outcome: Outcome) -> dict:
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D

        kept, aps, classes = outcome.extras["kept"], outcome.extras["class_ap"], self.options.classes
        scenarios = {sc.name: sc for sc in self.spec.scenarios}
        harsh = min(scenarios, key=lambda s: np.nan_to_num(outcome.metrics[s]["map"], nan=np.inf), default=None)
        cols, rows, figs = ["clean", *([harsh] if harsh else [])], self._examples(data), {}
        if rows:
            fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.6 * len(cols), 3.5 * len(rows) + 0.4),
                                     squeeze=False)
            for r, i in enumerate(rows):
                for c, name in enumerate(cols):
                    raw = data.jpeg[i] if name == "clean" else self.perturb(_decode(data.jpeg[i]), i, scenarios[name])
                    self._draw(axes[r, c], _decode(raw), data, i, kept[name][i], name)
            fig.legend(handles=[Line2D([], [], color=TRUE_COLOUR, ls="--", label="ground truth (dotted: crowd)"),
                                Line2D([], [], color=PRED_COLOUR, label="detected, score ≥ "
                                       f"{self.options.count_score_threshold:g} (counted)")],
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
                counted[k] += s >= self.options.count_score_threshold
        right.bar(x - w / 2, data.true_counts["all"].sum(0), w, label="true", color="#2e7d32")
        right.bar(x + w / 2, counted, w, label="counted (clean)", color=PRED_COLOUR)
        right.set(ylabel="objects in the split", title="Counts per class (all frames)")
        for ax in (left, right):
            ax.set_xticks(x, classes, rotation=25, fontsize=8)
            ax.legend(fontsize=8)
        fig.tight_layout()
        figs["per_class"] = fig
        return figs
