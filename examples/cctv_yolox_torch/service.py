"""Vendor bundle C: COCO-pretrained YOLOX-Nano as a PyTorch module, on the GPU when the sandbox has one.

Implements the testbed's detection task contract, like bundle B (`cctv_yolox_nano`), from the same fp32 ONNX
weights: the graph is converted to a `torch.nn.Module` with onnx2torch when the service loads (nothing is
downloaded), moved to `cuda` when `torch.cuda.is_available()`, else kept on the CPU. The exported graph fixes
the batch size at 1 (its reshapes fold a larger batch into the anchors), so frames run one at a time, all on
the device, post-processing included. Pre/post-processing as in YOLOX: BGR 0-255, resize keeping aspect to
416 px, pad 114 at the bottom/right, grid decode, objectness x class score, class-wise NMS (torchvision).

Which device ran is printed to the service's log (the harness keeps it as `sandbox.log`), once at load and
after each request: `yolox-torch: device=cuda:0 ... cuda_max_allocated_mb=...`. The API itself is unchanged.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import bentoml
import numpy as np
from PIL import Image

WEIGHTS = Path(__file__).resolve().parent / "yolox_nano.onnx"
SIZE, STRIDES = 416, (8, 16, 32)
CONF, IOU, MAX_DET, PRE_NMS = 0.001, 0.65, 100, 3000  # low threshold: the harness computes mAP
COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote "
    "keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
)
LABELS = [n.replace("_", " ") for n in COCO_NAMES.split()]


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Anchor-point grid (N, 2) and stride (N, 1) for the 52^2 + 26^2 + 13^2 = 3549 outputs."""
    grids, strides = [], []
    for s in STRIDES:
        n = SIZE // s
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack((xv, yv), -1).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


@bentoml.service(traffic={"timeout": 300})
class CctvYoloxTorch:
    def __init__(self) -> None:
        import onnx
        import torch
        from onnx2torch import convert

        self.torch = torch
        self.device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        # a loaded graph, not its path: given a path, onnx2torch writes a temporary file beside it (read-only here)
        self.model = convert(onnx.load(str(WEIGHTS))).eval().to(self.device)
        grid, stride = _grid()
        self.grid, self.stride = torch.from_numpy(grid).to(self.device), torch.from_numpy(stride).to(self.device)
        self._report("loaded")

    def _report(self, event: str) -> None:
        torch, line = self.torch, f"yolox-torch: {event} device={self.device}"
        if self.device.type == "cuda":
            line += (f" gpu={torch.cuda.get_device_name(self.device)!r}"
                     f" cuda_max_allocated_mb={torch.cuda.max_memory_allocated(self.device) / 2**20:.1f}")
        print(line, flush=True)

    @staticmethod
    def _prepare(b64: str) -> tuple[np.ndarray, float, int, int]:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im = im.convert("RGB")  # EXIF orientation is not applied
        w0, h0 = im.size
        r = min(SIZE / w0, SIZE / h0)
        resized = np.asarray(im.resize((round(w0 * r), round(h0 * r)), Image.BILINEAR))
        canvas = np.full((SIZE, SIZE, 3), 114, np.uint8)
        canvas[: resized.shape[0], : resized.shape[1]] = resized[:, :, ::-1]  # RGB -> BGR, top-left aligned
        return canvas.transpose(2, 0, 1), r, w0, h0

    def _post(self, out, r: float, w0: int, h0: int) -> list[dict]:
        from torchvision.ops import batched_nms

        torch = self.torch
        xy = (out[:, :2] + self.grid) * self.stride
        wh = torch.exp(out[:, 2:4]) * self.stride
        boxes = torch.cat((xy - wh / 2, xy + wh / 2), 1) / r
        scores = out[:, 4:5] * out[:, 5:]  # objectness * class score, (3549, 80)
        idx, cls = torch.nonzero(scores > CONF, as_tuple=True)
        sc = scores[idx, cls]
        top = sc.argsort(descending=True)[:PRE_NMS]
        idx, cls, sc = idx[top], cls[top], sc[top]
        limit = torch.tensor([w0, h0, w0, h0], dtype=boxes.dtype, device=boxes.device)
        b = torch.minimum(boxes[idx].clamp(min=0), limit)
        keep = batched_nms(b, sc, cls, IOU)[:MAX_DET].cpu().numpy()
        b, sc, cls = b.cpu().numpy(), sc.cpu().numpy(), cls.cpu().numpy()
        dets = []
        for k in keep:
            x1, y1, x2, y2 = (round(float(v), 2) for v in b[k])
            if x2 > x1 and y2 > y1:
                dets.append({"label": LABELS[cls[k]], "score": round(float(sc[k]), 5), "box": [x1, y1, x2, y2]})
        return dets

    @bentoml.api
    def detect(self, images: list[str]) -> list[list[dict]]:
        torch, answers = self.torch, []
        with torch.inference_mode():
            for b64 in images:
                chw, r, w0, h0 = self._prepare(b64)
                blob = torch.from_numpy(chw[None].copy()).to(self.device).float()
                answers.append(self._post(self.model(blob)[0], r, w0, h0))  # model: (1, 3549, 85), raw
        self._report(f"detect frames={len(images)}")
        return answers
