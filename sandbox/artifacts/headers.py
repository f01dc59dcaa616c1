"""Model files described by a header: safetensors (a JSON header, then the values) and BentoML model-store
entries (`models/NAME/VERSION/model.yaml`)."""

from __future__ import annotations

import json
import math
import struct

from sandbox.artifacts.base import ModelArtifact, describe_weights
from sandbox.artifacts.pickles import plausible
from testbed.yamlio import safe_load_bounded

__all__ = ["read_safetensors", "read_bentoml_model", "MAX_SAFETENSORS_HEADER"]

_SAFETENSORS_BYTES = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                      "I16": 2, "U16": 2}
"""Bytes per element of a safetensors dtype (the others: 1 or less)."""
MAX_SAFETENSORS_HEADER = 16 << 20
"""Bytes of a safetensors header read (a real one takes a few hundred bytes a tensor); a longer one is unreadable.
JSON made 28 bytes of objects of each byte of `[{},{},…]`: the format's own 100 MB limit meant 2.8 GB."""


def read_safetensors(name: str, data: bytes, size: int | None = None) -> ModelArtifact:
    """`data`: the file, or (for a large file) its header only, `size` then saying what the file holds."""
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_SAFETENSORS_HEADER:
        raise ValueError(f"a header of {length} bytes")
    header = json.loads(data[8:8 + length])
    held, shapes, hollow, used = (len(data) if size is None else size) - 8 - length, {}, 0, 0
    tensors = sorted(((int(v["data_offsets"][0]), int(v["data_offsets"][1]), k, v) for k, v in header.items()
                      if k != "__metadata__"), key=lambda t: t[:2])
    for start, end, key, info in tensors:  # in file order: each byte backs one tensor at most
        shape = tuple(int(d) for d in info["shape"])
        if plausible(shape) and used <= start <= end <= held and \
                end - start >= math.prod(shape) * _SAFETENSORS_BYTES.get(info["dtype"], 1):
            shapes[key], used = shape, end
        else:
            hollow += 1
    params, layers, weights = describe_weights(shapes, hollow)
    return ModelArtifact(name, "safetensors", "safetensors", params, layers, weights)


def read_bentoml_model(name: str, data: bytes) -> ModelArtifact | None:
    meta = safe_load_bounded(data)
    if not isinstance(meta, dict) or "module" not in meta:
        return None
    context = meta.get("context") if isinstance(meta.get("context"), dict) else {}
    framework = str(meta.get("module"))
    summary = f"BentoML model {meta.get('name')}:{meta.get('version')} ({context.get('framework_name', framework)})"
    summary = summary if len(summary) <= 300 else f"{summary[:300]}… ({len(summary):,} characters)"
    return ModelArtifact(name, "bentoml_model", framework[:100], 0, 0, summary)
