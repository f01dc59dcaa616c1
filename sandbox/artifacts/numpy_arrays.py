"""NumPy weights (`np.save`, `np.savez`, compressed or not, loaded with `np.load`): headers read as Python literals,
object arrays (pickles) never read, each array counted from the bytes its file or member holds."""

from __future__ import annotations

import ast
import math
import struct
import zipfile

from sandbox.artifacts.base import Budget, ModelArtifact, describe_weights, zip_held
from sandbox.artifacts.pickles import plausible

__all__ = ["read_npy", "read_npz", "NPY_MAGIC"]

NPY_MAGIC = b"\x93NUMPY"
_NPY_HEAD = 65_536 + 12
"""Bytes read for a `.npy` header (NumPy writes at most 10,000 for any array it saves)."""


def _npy_header(head: bytes) -> tuple[tuple[int, ...], int, int] | None:
    """Shape, bytes per element and header length of a `.npy` file from its first bytes (`np.save`'s format: the
    header is a Python literal, read with `ast.literal_eval`), or None when its values are not plain numbers (an
    object array is a pickle, never read)."""
    import numpy as np

    if not head.startswith(NPY_MAGIC) or len(head) < 10:
        return None
    size, at = (struct.unpack("<H", head[8:10])[0], 10) if head[6] == 1 else (struct.unpack("<I", head[8:12])[0], 12)
    literal = head[at:at + size]
    if len(literal) < size:
        return None
    header = ast.literal_eval(literal.decode("latin1"))
    dtype = np.dtype(header["descr"]) if isinstance(header.get("descr"), str) else None
    if dtype is None or dtype.hasobject:
        return None
    return tuple(int(d) for d in header["shape"]), dtype.itemsize, at + size


def read_npy(name: str, data: bytes) -> ModelArtifact | None:
    header = _npy_header(data[:_NPY_HEAD])
    if header is None:
        return None
    shape, itemsize, start = header
    held = {"array": shape} if plausible(shape) and len(data) - start >= math.prod(shape) * itemsize else {}
    params, layers, weights = describe_weights(held, 1 - len(held))
    return ModelArtifact(name, "numpy", "numpy", params, layers, f"np.save array; {weights}")


def read_npz(name: str, data: bytes, zf: zipfile.ZipFile, budget: Budget) -> ModelArtifact:
    """Arrays of an `np.savez` archive (`np.load` reads them as weights): each counts when its member holds the
    bytes its header declares; a compressed member is inflated to see so, within the bundle's allowance."""
    shapes, hollow = {}, 0
    members = [info for info in zf.infolist() if info.filename.endswith(".npy")]
    stored = zip_held(data, members, "")  # each member's own bytes, in the archive
    for info in members:
        if info.filename not in stored:
            hollow += 1
            continue
        with zf.open(info) as fh:
            header = _npy_header(fh.read(_NPY_HEAD))
            if header is None:
                continue
            shape, itemsize, start = header
            if not plausible(shape):
                hollow += 1
                continue
            need, held = math.prod(shape) * itemsize, stored[info.filename] - start
            if info.compress_type != zipfile.ZIP_STORED:
                fh.seek(0)  # what it inflates to, not what the directory says
                held = -start
                while held < need and budget.inflate > 0 and (chunk := fh.read(min(1 << 20, budget.inflate))):
                    held, budget.inflate = held + len(chunk), budget.inflate - len(chunk)
        if held >= need:
            shapes[info.filename.removesuffix(".npy")] = shape
        else:
            hollow += 1
    params, layers, weights = describe_weights(shapes, hollow)
    return ModelArtifact(name, "numpy", "numpy", params, layers, f"np.savez archive; {weights}")
