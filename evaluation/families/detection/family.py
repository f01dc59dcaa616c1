"""Road-user detection and counting on camera frames: images in, boxes with classes and scores out."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.equity import assess_groups
from evaluation.families.detection.contract import DETECT, decode_response, encode_request
from evaluation.families.detection.data import (
    DetectionOptions,
    Frames,
    Kept,
    check_annotations,
    decode_frames,
    object_counts,
    png,
    read_json_object,
)
from evaluation.families.detection.metrics import AREA_RANGES, DetectionEval, class_ap, class_count_mae, coco_evaluate
from evaluation.families.detection.plots import detection_plots
from evaluation.family import UNDER_LOAD, Outcome, TaskFamily
from evaluation.registry import SCENARIOS, family
from pilots.spec import PilotSpec, ScenarioSpec, require_split_kind
from sandbox.runner import SandboxResult
from testbed.errors import ContractViolation, SpecError

__all__ = ["ObjectDetection"]


@family("detection")
class ObjectDetection(TaskFamily):
    contract = DETECT
    Options = DetectionOptions
    group_keys = ("size", "density", "lighting")
    primary_metric = "map"
    baseline_metric = "count_mae"
    technology_fields = ("computer_vision", "autonomous_driving")
    baseline_name = "mean_count_from_public_sample"
    answer_bytes_per_item = 256 << 10
    """256 KiB per frame: ~2,000 detections as JSON, twenty times the 100 the harness scores."""

    @classmethod
    def validate_spec(cls, spec: PilotSpec, where: str) -> None:
        """Also: every split names its frames by `members` (a list in `task.splits_file`), never by dates."""
        super().validate_spec(spec, where)
        require_split_kind(spec, where, cls.name, "members")

    def _beside(self, field: str) -> Path:
        """Option `field` (a path relative to the annotations file's folder), refused outside the data folder."""
        path = self.data_path.parent / getattr(self.options, field)
        if not path.resolve().is_relative_to(Path(self.data_dir).resolve()):
            raise SpecError(f"{path} is outside the data folder {self.data_dir}", where=f"pilot {self.spec.id}: "
                            f"task.{field}", fix="give a path inside the data folder (TESTBED_DATA_DIR)")
        return path

    def data_files(self) -> list[tuple[Path, str]]:
        """The splits file (its frames are pinned as they are read: `read`)."""
        return [(self._beside("splits_file"), "task.splits_file")]

    def _members(self, split: str) -> list[str]:
        where = f"pilot {self.spec.id}: dataset.splits.{split}.members"
        key, path = self.spec.dataset.splits[split].members, self._beside("splits_file")
        if not path.is_file():
            raise SpecError(f"no splits file {path}", where=f"pilot {self.spec.id}: task.splits_file",
                            fix="set task.splits_file to the JSON file (relative to the annotations file's folder) "
                                "that lists each split's image file names")
        listed = read_json_object(path, (), "task.splits_file", f"pilot {self.spec.id}: task.splits_file",
                                  '{"SPLIT": ["IMAGE FILE NAME", ...], ...}')
        members = listed.get(key) if key else None
        if not members:
            raise SpecError(f"no list {key!r} in {path}", where=where,
                            fix="name a key of the splits file (task.splits_file, beside the annotations file)")
        return members

    def _read(self, split: str) -> tuple[dict, list[dict], list[int]]:
        coco = read_json_object(self.data_path, ("images", "annotations", "categories"), "dataset.path",
                                f"pilot {self.spec.id}: dataset.path", 'COCO\'s {"images": [...], "annotations": '
                                '[...], "categories": [...]}')
        by_name = {c["name"]: c["id"] for c in coco["categories"]}
        unknown = [c for c in self.options.classes if c not in by_name]
        if unknown:
            raise SpecError(f"classes {unknown} are not categories of {self.data_path.name}",
                            where=f"pilot {self.spec.id}: task.classes", fix=f"use some of: {', '.join(by_name)}")
        ids = [im["id"] for im in coco["images"]]
        if len(set(ids)) < len(ids):
            raise SpecError(f"{self.data_path.name} gives {len(ids) - len(set(ids))} images an id already used",
                            where=f"pilot {self.spec.id}: dataset", fix="give each image of the annotations its own id")
        by_file, members = {im["file_name"]: im for im in coco["images"]}, self._members(split)
        splits = self.spec.dataset.splits
        for other in [name for name, s in splits.items() if s.public] if not splits[split].public else []:
            shared = set(members) & set(self._members(other))
            if shared:
                raise SpecError(f"the sequestered split {split!r} shares {len(shared)} images with the public split "
                                f"{other!r}, e.g. {sorted(shared)[0]}", where=f"pilot {self.spec.id}: dataset.splits",
                                fix="list no image of a public split in a sequestered one (splits.json)")
        missing = [name for name in members if name not in by_file]
        if missing:
            raise SpecError(f"split {split!r} lists {len(missing)} images that {self.data_path.name} lacks, "
                            f"e.g. {missing[0]}", where=f"pilot {self.spec.id}: dataset",
                            fix="use the splits.json that belongs to this annotations file")
        images = [by_file[name] for name in members]
        return coco, images, [by_name[c] for c in self.options.classes]

    def read(self, split: str) -> Frames:
        o = self.options
        coco, images, cat_ids = self._read(split)
        if split != "sample":
            self._read("sample")  # what the baseline reads when scoring: its mistakes stop the run before the bundle's
        ids = [im["id"] for im in images]
        anns = [a for a in coco["annotations"] if a["image_id"] in set(ids) and a["category_id"] in set(cat_ids)]
        gt = {"info": coco.get("info", {}), "licenses": coco.get("licenses", []), "images": images,
              "annotations": anns, "categories": [c for c in coco["categories"] if c["id"] in cat_ids]}
        where = f"pilot {self.spec.id}: dataset {self.data_path}"
        check_annotations(coco["annotations"], images, coco["categories"], where)
        folder = self._beside("images")
        self.require_pinned([folder / str(im["file_name"]) for im in images], "task.images")
        absent = [im["file_name"] for im in images if not (folder / str(im["file_name"])).is_file()]
        if absent:
            raise SpecError(f"no image file {folder / str(absent[0])} ({len(absent)} of the split's {len(images)} "
                            f"frames missing from {folder})", where=f"pilot {self.spec.id}: task.images",
                            fix="set task.images to the folder of the image files (relative to the annotations "
                                "file's folder), or restore the missing files")
        jpeg, pixels = decode_frames(folder, images, where)
        counts = {area: object_counts(anns, ids, cat_ids, lo, hi) for area, (lo, hi) in AREA_RANGES.items()}
        crowd = {a["image_id"] for a in anns if a.get("iscrowd")}
        crowded = (counts["all"].sum(1) >= o.crowded_min_objects) | np.isin(ids, list(crowd))
        luma = np.array([float((im @ np.array([0.299, 0.587, 0.114])).mean()) for im in pixels])
        groups = {"density": np.where(crowded, "crowded", "sparse"),
                  "lighting": np.where(luma < o.dark_luminance, "dark", "normal")}
        return Frames([im["file_name"] for im in images], ids, jpeg, [(im["width"], im["height"]) for im in images],
                      gt, cat_ids, counts, groups, split, pixels)

    def perturb_frame(self, image: np.ndarray, i: int, sc: ScenarioSpec) -> bytes:
        """Frame `i` (decoded) under scenario `sc`, as an image file; each frame has its own seeded generator."""
        out = SCENARIOS.get(sc.name)(image, sc.severity, self.scenario_rng(sc, i))
        return out if isinstance(out, bytes) else png(out)

    def inputs(self, data: Frames) -> list[bytes]:
        return data.jpeg

    def size(self, data: Frames) -> int:
        return len(data.jpeg)

    def perturb(self, data: Frames, inputs: list[bytes], sc: ScenarioSpec) -> list[bytes]:
        return [self.perturb_frame(frame, i, sc) for i, frame in enumerate(data.pixels)]

    def encode(self, inputs: list[bytes], rows: np.ndarray) -> bytes:
        return encode_request([inputs[i] for i in rows])

    def check_request(self, inputs: dict[str, list], items: int) -> None:
        for i, image in enumerate(inputs["images"]):
            try:
                with Image.open(io.BytesIO(base64.b64decode(image))):  # reads the header only
                    pass
            except Exception:  # noqa: BLE001 - not base64, not a string, not an image: the client's mistake
                raise ContractViolation(f"`images[{i}]` is not a base64-encoded image file") from None

    def check_answer(self, body: bytes, items: int) -> list:
        """Production's check: the frames' sizes are not known here, so boxes are not clipped (evaluation's
        `_detections` decodes with them)."""
        return decode_response(body, items)

    def _detections(self, data: Frames, result: SandboxResult, name: str, violations: list[str]):
        """Kept detections per frame (none where a request failed) and which frames got a valid answer."""
        index = {c: k for k, c in enumerate(self.options.classes)}
        kept: Kept = [[] for _ in data.jpeg]
        answered = np.zeros(len(data.jpeg), bool)
        decode = lambda body, rows: decode_response(body, len(rows), [data.sizes[i] for i in rows])  # noqa: E731
        for rows, frames in self.answers(result, name, violations, decode):
            for i, dets in zip(rows, frames, strict=True):
                # best first; equal scores by class and box, never by the answer's order (COCO ranks ties as given)
                mine = sorted(((index[d.label], d.score, d.box) for d in dets if d.label in index),
                              key=lambda t: (-t[1], t[0], t[2]))
                kept[i], answered[i] = mine[:self.options.max_detections], True
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

    def predictions(self, data: Frames, result: SandboxResult, violations: list[str]) -> dict[str, np.ndarray]:
        """Per scenario: `NAME` rows (frame, class index, score, x1, y1, x2, y2), best first within a frame,
        and `NAME/answered` (frames that got a valid answer); `UNDER_LOAD` too."""
        preds = {}
        for name in (*self.scenario_names, UNDER_LOAD):
            kept, answered = self._detections(data, result, name, violations)
            preds[name] = np.array([(i, k, s, *box) for i, dets in enumerate(kept) for k, s, box in dets],
                                   dtype=np.float64).reshape(-1, 7)
            preds[f"{name}/answered"] = answered
        return preds

    @staticmethod
    def _kept(rows: np.ndarray, n: int) -> Kept:
        kept: Kept = [[] for _ in range(n)]
        for i, k, s, *box in rows.tolist():
            kept[int(i)].append((int(k), s, tuple(box)))
        return kept

    def score_predictions(self, data: Frames, preds: dict[str, np.ndarray]) -> Outcome:
        """The timed answers are scored as the clean ones (`scored`): the clean phase is only compared."""
        fns, every, n = self.metric_functions(), np.arange(len(data.jpeg)), len(data.jpeg)
        preds = self.scored(preds)
        kept = {name: (self._kept(preds[name], n), preds[f"{name}/answered"]) for name in self.scenario_names}
        evals = {name: self._evaluate(data, k, every) for name, (k, _) in kept.items()}
        metrics = {name: {m: fn(ev["all"]) for m, fn in fns.items()} for name, ev in evals.items()}
        under_load = dict(metrics["clean"]) if UNDER_LOAD in preds else {}  # the same answers: scored as clean
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
        # Intervals on a per-frame metric (mAP is not a mean over frames): each frame's counting error, with the
        # frame as the resampling unit; `size` groups are per object, not per frame, and stay without interval.
        frame_keys = {key: data.groups[key] for key in self.spec.groups if key != "size"}
        equity = assess_groups(frame_keys, metric="count_mae", goal="min", settings=self.spec.equity,
                               values=np.abs(clean.pred_counts - clean.true_counts).mean(axis=1),
                               overall=metrics["clean"]["count_mae"]) if frame_keys else None
        return Outcome(
            metrics=metrics, groups=groups, equity=equity, under_load=under_load,
            baseline={"name": self.baseline_name, **{m: fn(baseline) for m, fn in fns.items()}},
            coverage=float(kept["clean"][1].mean()) if len(every) else 0.0,
            extras={"kept": {name: k for name, (k, _) in kept.items()}, "class_ap": class_aps})

    AGREEMENT_IOU = 0.8
    """How closely a timed detection must overlap a clean one to be the same detection (or every corner within
    `AGREEMENT_PIXELS`, for boxes of a few pixels): float noise and a batch's own padding move a box by a fraction
    of a pixel, another model's box far more."""
    AGREEMENT_PIXELS = 1.0

    @classmethod
    def _same_boxes(cls, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether boxes `a` and `b` (n, 4 each) pair up one to one, each pair overlapping by `AGREEMENT_IOU` or
        with every corner within `AGREEMENT_PIXELS` (greedily, best overlap first)."""
        if len(a) != len(b):
            return False
        if not len(a):
            return True
        ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
        iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
        area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
        iou = ix * iy / np.maximum(area(a)[:, None] + area(b)[None, :] - ix * iy, 1e-9)
        iou[np.abs(a[:, None, :] - b[None, :, :]).max(axis=2) <= cls.AGREEMENT_PIXELS] = 1.0
        for _ in range(len(a)):
            i, j = np.unravel_index(np.argmax(iou), iou.shape)
            if iou[i, j] < cls.AGREEMENT_IOU:
                return False
            iou[i, :], iou[:, j] = -1, -1
        return True

    def agreement(self, data: Frames, preds: dict[str, np.ndarray]) -> float | None:
        """A frame agrees when its timed answer has the same detections, class by class, at the count threshold
        as its clean one: as many, each box overlapping its clean counterpart by `AGREEMENT_IOU` (the same counts
        with other boxes are another model's answer: a service counting with a cheap model while timed)."""
        if UNDER_LOAD not in preds:
            return None
        answered, timed_answered = preds["clean/answered"], preds[f"{UNDER_LOAD}/answered"]
        if not answered.any():
            return None
        threshold = self.options.count_score_threshold
        clean, timed = (rows[rows[:, 2] >= threshold] for rows in (preds["clean"], preds[UNDER_LOAD]))

        def same(i: int) -> bool:
            a, b = clean[clean[:, 0] == i], timed[timed[:, 0] == i]
            return all(self._same_boxes(a[a[:, 1] == k, 3:], b[b[:, 1] == k, 3:])
                       for k in range(len(self.options.classes)))

        return float(sum(same(i) for i in np.flatnonzero(answered & timed_answered)) / answered.sum())

    def exactness(self, data: Frames, preds: dict[str, np.ndarray]) -> float | None:
        """Share of the true boxes that a scored detection (`scored`) of the same class reproduces almost exactly
        (IoU at least 0.95): models trained on other images localise far less tightly."""
        rows, cls = self.scored(preds)["clean"], {c: k for k, c in enumerate(data.cat_ids)}
        truth = [a for a in data.gt["annotations"] if not a.get("iscrowd")]
        if not truth:
            return None
        frame = {image_id: i for i, image_id in enumerate(data.image_ids)}
        exact = 0
        for a in truth:
            mine = rows[(rows[:, 0] == frame[a["image_id"]]) & (rows[:, 1] == cls[a["category_id"]])]
            if len(mine):
                x, y, w, h = a["bbox"]
                ix = np.clip(np.minimum(mine[:, 5], x + w) - np.maximum(mine[:, 3], x), 0, None)
                iy = np.clip(np.minimum(mine[:, 6], y + h) - np.maximum(mine[:, 4], y), 0, None)
                union = w * h + (mine[:, 5] - mine[:, 3]) * (mine[:, 6] - mine[:, 4]) - ix * iy
                exact += bool((ix * iy / np.maximum(union, 1e-9) >= 0.95).any())
        return exact / len(truth)

    def _baseline(self, clean: DetectionEval) -> DetectionEval:
        """Non-deep-learning rule: no boxes; every frame's count is the public sample's mean count per class."""
        coco, images, cat_ids = self._read("sample")
        ids = [im["id"] for im in images]
        mean = object_counts(coco["annotations"], ids, cat_ids, *AREA_RANGES["all"]).mean(0)
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

    def plots(self, data: Frames, outcome: Outcome) -> dict:
        return detection_plots(self, data, outcome)
