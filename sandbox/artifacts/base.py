"""What the static scan finds and what all its readers share: the artifact, the bundle's budget, the description
of a set of weights, and the bytes a zip archive holds for each entry."""

from __future__ import annotations

import math
import struct
import zipfile
from dataclasses import asdict, dataclass

from sandbox.artifacts.pickles import plausible

__all__ = ["ModelArtifact", "Budget", "deep_learning_model", "describe_weights", "zip_held", "MIN_DL_PARAMETERS",
           "MIN_DL_LAYERS"]

MIN_DL_PARAMETERS = 1_000
"""A deep-learning model has at least this many learned parameters..."""
MIN_DL_LAYERS = 2
"""...in at least this many weight matrices or kernels (tensors of rank 2 or more): a neural network, not a
lookup table or a linear rule."""


@dataclass(frozen=True)
class ModelArtifact:
    """One model file found in a bundle."""

    path: str
    """Member path inside the `.bento` archive."""
    format: str
    """onnx, torchscript, torch_save, safetensors, numpy or bentoml_model."""
    framework: str
    """onnx, pytorch, safetensors, numpy, or the BentoML module (e.g. `bentoml.pytorch`)."""
    parameters: int
    """Learned parameters (elements of the weight tensors)."""
    layers: int
    """Weight tensors of rank 2 or more (matrices, convolution kernels)."""
    summary: str
    """Architecture in a line: operator or layer types, largest weights."""

    @property
    def is_deep_learning(self) -> bool:
        return self.parameters >= MIN_DL_PARAMETERS and self.layers >= MIN_DL_LAYERS

    def as_dict(self) -> dict:
        return asdict(self) | {"is_deep_learning": self.is_deep_learning}


def deep_learning_model(artifacts: list[ModelArtifact]) -> ModelArtifact | None:
    """The largest deep-learning model among `artifacts`, or None."""
    deep = [a for a in artifacts if a.is_deep_learning]
    return max(deep, key=lambda a: a.parameters) if deep else None


@dataclass
class Budget:
    """What the scan of one bundle may still spend: hostile files make every reader costly, so the bundle's
    files share one allowance of each cost."""

    inflate: int
    """Bytes compressed `.npz` members may still be inflated to, to see which arrays they hold."""
    unpickle: int
    """Bytes of pickle the stub unpickler may still read (about a second a MiB of hostile pickle)."""
    unpickle_in_all: int
    """The bundle's whole allowance of pickle, named when it is spent."""
    onnx_files: int
    """ONNX files that may still be parsed, each in a process of its own that takes a second to start."""

    def pickles_spent(self, name: str) -> ModelArtifact:
        """The artifact of an archive left unread because the bundle's other archives spent the pickle allowance."""
        return ModelArtifact(name, "torch_save", "unknown", 0, 0, "not read: the bundle's other archives used up "
                             f"the {self.unpickle_in_all >> 20} MiB of pickle the scan reads")


def describe_weights(shapes: dict[str, tuple[int, ...]], hollow: int = 0) -> tuple[int, int, str]:
    """Parameters, weight matrices and a summary of the tensors whose values the file holds; `hollow`: tensors
    it declares without bytes of their own for their shapes (a header claiming billions of parameters in a few
    KiB, or many tensors on the same bytes), named in the summary and never counted."""
    implausible = {k for k, s in shapes.items() if not plausible(s)}  # a negative dimension, a million of them
    shapes, hollow = {k: s for k, s in shapes.items() if k not in implausible}, hollow + len(implausible)
    params = sum(math.prod(s) for s in shapes.values())
    weights = {k: s for k, s in shapes.items() if len(s) >= 2 and math.prod(s) > 0}  # an empty matrix is no layer
    top = sorted(weights.items(), key=lambda kv: -math.prod(kv[1]))[:3]
    largest = ", ".join(f"{_short(k)} {'×'.join(map(str, s))}" for k, s in top)
    return params, len(weights), f"{len(shapes)} tensors, {len(weights)} weight matrices/kernels" + (
        f"; largest: {largest}" if largest else "") + (
        f"; {hollow} tensor(s) declared without values of their own, not counted" if hollow else "")


def _short(name: str, keep: int = 100) -> str:
    """A name the file chose (a tensor's), as the summary quotes it: at most `keep` characters."""
    return name if len(name) <= keep else f"{name[:keep]}… ({len(name):,} characters)"


def zip_held(data: bytes, infos: list[zipfile.ZipInfo], folder: str) -> dict[str, int]:
    """Bytes each entry's data holds in the archive, by name less `folder`: never more than the bytes stored for it
    (a central directory may declare any size, and deflate any ratio: what is counted are the bytes present), and
    each byte for one entry at most (two entries may name the same local header)."""
    spans = []
    for info in infos:
        offset = info.header_offset
        head = data[offset:offset + 30]
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            continue
        name_length, extra_length = struct.unpack("<HH", head[26:30])
        start = offset + 30 + name_length + extra_length
        spans.append((start, start + info.compress_size, info))
    held, used = {}, 0
    for start, end, info in sorted(spans, key=lambda s: s[:2]):
        if used <= start and end <= len(data):
            held[info.filename.removeprefix(folder)], used = min(info.file_size, info.compress_size), end
    return held
