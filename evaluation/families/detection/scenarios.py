"""Scenarios for camera frames (detection): what weather, darkness, optics and the network do to CCTV.

Each gets one clean frame (H x W x 3 uint8 RGB), a severity in [0, 1] (0 leaves the frame as it is) and a
numpy Generator, and returns the perturbed frame with the same shape, so ground-truth boxes stay valid. The
harness sends a returned array losslessly (PNG); a scenario that is itself about encoding returns the encoded
image file as `bytes`, which the harness sends as is. numpy and Pillow only.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from evaluation.registry import scenario

__all__ = ["night", "rain", "fog", "motion_blur", "jpeg", "low_resolution"]


def _float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


@scenario("night", family="detection")
def night(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Low light: exposure falls to 20 % at severity 1, a gamma crushes the shadows, the white balance turns
    blue, and amplified sensor noise (std up to 5 % of full scale) appears."""
    x = _float(image) * (1 - 0.8 * severity)
    x = x ** (1 + 1.2 * severity)
    x = x * np.array([1 - 0.15 * severity, 1 - 0.05 * severity, 1 + 0.05 * severity], np.float32)
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(0.05 * severity)
    return _uint8(x)


@scenario("rain", family="detection")
def rain(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Rain: slanted bright streaks (about 1 per 600 px² of frame at severity 1, longer when harsher) over a
    frame that loses contrast (up to 35 %) and sharpness (blur radius up to 1.5 px)."""
    h, w = image.shape[:2]
    x = _float(image)
    x = x * (1 - 0.35 * severity) + x.mean() * 0.35 * severity
    blurred = Image.fromarray(_uint8(x)).filter(ImageFilter.GaussianBlur(1.5 * severity))
    x = _float(np.asarray(blurred))
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    n = int(severity * h * w / 600)
    x0, y0 = rng.uniform(0, w, n), rng.uniform(-20, h, n)
    length, angle = rng.uniform(8, 8 + 30 * severity, n), rng.uniform(-0.35, 0.35) + rng.normal(0, 0.04, n)
    x1, y1 = x0 + length * np.sin(angle), y0 + length * np.cos(angle)
    for line, fill, width in zip(np.stack([x0, y0, x1, y1], 1).tolist(), rng.integers(120, 256, n).tolist(),
                                 rng.integers(1, 3, n).tolist(), strict=True):
        draw.line(line, fill=fill, width=width)
    streaks = _float(np.asarray(layer.filter(ImageFilter.GaussianBlur(0.6))))[..., None]
    return _uint8(x + streaks * (0.85 - x) * 0.8)


@scenario("fog", family="detection")
def fog(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Fog: the frame blends toward a grey-white haze, uniformly in depth (up to 80 % haze at severity 1),
    with slow patchy variation (±15 %) across the frame."""
    h, w = image.shape[:2]
    patches = Image.fromarray(_uint8(rng.random((4, 6)))).resize((w, h), Image.BICUBIC)
    density = 0.8 * severity * (0.85 + 0.3 * _float(np.asarray(patches)))[..., None]
    haze = np.array([0.82, 0.84, 0.86], np.float32)
    return _uint8(_float(image) * (1 - density) + haze * density)


@scenario("motion_blur", family="detection")
def motion_blur(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Motion blur (slow shutter, camera shake): a linear kernel of 1 + 30 × severity pixels at a random
    angle, edges extended."""
    length = 1 + int(round(30 * severity))
    if length < 2:
        return image.copy()
    angle = rng.uniform(0, np.pi)
    steps = np.linspace(-(length - 1) / 2, (length - 1) / 2, length)
    offsets = {(int(round(t * np.cos(angle))), int(round(t * np.sin(angle)))) for t in steps}
    pad = max(max(abs(dx), abs(dy)) for dx, dy in offsets)
    h, w = image.shape[:2]
    padded = np.pad(image.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    total = np.zeros(image.shape, np.float32)
    for dx, dy in offsets:
        total += padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return np.clip(np.rint(total / len(offsets)), 0, 255).astype(np.uint8)


@scenario("jpeg", family="detection")
def jpeg(image: np.ndarray, severity: float, rng: np.random.Generator) -> bytes:
    """Heavy compression on a congested video link: the frame re-encoded as JPEG at quality
    95 - 90 × severity (5 at severity 1). Returns the JPEG file."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(round(95 - 90 * severity)))
    return buf.getvalue()


@scenario("low_resolution", family="detection")
def low_resolution(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """A low-resolution camera: downscaled by 1 + 7 × severity (area averaging), then upscaled back to the
    original size (bilinear), so boxes stay in the original pixels."""
    h, w = image.shape[:2]
    factor = 1 + 7 * severity
    small = (max(8, round(w / factor)), max(8, round(h / factor)))
    if small == (w, h):
        return image.copy()
    return np.asarray(Image.fromarray(image).resize(small, Image.BOX).resize((w, h), Image.BILINEAR))
