"""Vendor bundle A: COCO-pretrained YOLOv8n (int8 ONNX) run through Ultralytics.

Implements the testbed's detection task contract: `detect(images: list[str])` takes base64-encoded
JPEG/PNG files and returns, per image, a list of `{"label", "score", "box": [x1, y1, x2, y2]}` in the
original image's pixel coordinates. Works offline on a read-only filesystem: Ultralytics is told not
to touch the network and to keep its settings file in a private directory under the temp dir.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from pathlib import Path

# Must happen before ultralytics is imported: it reads these at import time.
_TMP = Path(tempfile.gettempdir()) / f"cctv_yolov8n-{os.getuid()}"
os.environ["YOLO_OFFLINE"] = "1"  # no online checks, no downloads
os.environ["YOLO_AUTOINSTALL"] = "false"  # never pip-install missing extras
os.environ["YOLO_CONFIG_DIR"] = str(_TMP / "config")  # settings.json goes here, not into $HOME
os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # else onnxruntime (1.32 here) sends usage telemetry
os.environ.setdefault("MPLCONFIGDIR", str(_TMP / "matplotlib"))  # ultralytics imports matplotlib

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

WEIGHTS = Path(__file__).resolve().parent / "yolov8n_int8.onnx"
CONF, IOU, MAX_DET, IMGSZ = 0.001, 0.7, 100, 640  # low threshold: the harness computes mAP


def decode_image(b64: str) -> np.ndarray:
    """Base64 JPEG/PNG -> HxWx3 uint8 BGR array (EXIF orientation is not applied)."""
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])


@bentoml.service(traffic={"timeout": 300})
class CctvYolov8n:
    def __init__(self) -> None:
        import torch
        from ultralytics import YOLO, settings

        settings.update({"mlflow": False, "sync": False})  # no experiment logging, no analytics
        self.device = 0 if torch.cuda.is_available() else "cpu"
        self.model = YOLO(str(WEIGHTS), task="detect")
        self._predict(np.zeros((480, 640, 3), np.uint8))  # warm-up: loads the session and lazy imports

    def _predict(self, frame: np.ndarray):
        return self.model.predict(
            frame, imgsz=IMGSZ, conf=CONF, iou=IOU, max_det=MAX_DET, device=self.device, verbose=False
        )[0]

    @bentoml.api
    def detect(self, images: list[str]) -> list[list[dict]]:
        out = []
        for b64 in images:  # the ONNX graph has a fixed batch of 1: one frame per call
            r = self._predict(decode_image(b64))
            dets = []
            for box, score, cls in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist(), strict=True):
                x1, y1, x2, y2 = (round(v, 2) for v in box)  # already in original pixels, clipped to the frame
                if x2 > x1 and y2 > y1:
                    dets.append({"label": r.names[int(cls)], "score": round(score, 5), "box": [x1, y1, x2, y2]})
            out.append(dets)
        return out
