"""PyTorch files: `torch.save` archives and TorchScript (a zip whose `data.pkl` the stub unpickler walks, each
storage counted from the bytes the zip stores for it), and `torch.save`'s format before PyTorch 1.6 (pickles,
then the storages' values)."""

from __future__ import annotations

import zipfile
from collections import Counter

from sandbox.artifacts.base import Budget, ModelArtifact, describe_weights, zip_held
from sandbox.artifacts.pickles import read_legacy, read_pickle

__all__ = ["read_torch_zip", "read_torch_legacy", "MAX_PICKLE_BYTES"]

MAX_PICKLE_BYTES = 32 << 20
"""Bytes of one archive's pickle read, at most; an archive with a longer one is reported unread."""


def read_torch_zip(name: str, data: bytes, zf: zipfile.ZipFile, pkl: str, budget: Budget) -> ModelArtifact:
    """The archive `zf` (the bytes `data`), whose pickle is the member `pkl`."""
    size = zf.getinfo(pkl).file_size
    if size > MAX_PICKLE_BYTES:
        return ModelArtifact(name, "torch_save", "unknown", 0, 0, f"not read: its pickle is past the "
                             f"{MAX_PICKLE_BYTES >> 20} MiB the scan reads of one archive")
    if size > budget.unpickle:
        return budget.pickles_spent(name)
    budget.unpickle -= size
    names = zf.namelist()
    root = pkl.rpartition("/")[0]
    scripted = any(n.startswith(f"{root}/code/") for n in names)
    folder = f"{root}/data/" if root else "data/"
    stored = zip_held(data, [zf.getinfo(n) for n in names if n.startswith(folder)], folder)
    shapes, hollow, classes = read_pickle(zf.read(pkl), stored)
    params, layers, weights = describe_weights(shapes, hollow)
    if scripted:
        modules = Counter({k.removeprefix("__torch__.").rpartition(".")[2]: n for k, n in classes.items()
                           if k.startswith("__torch__.")})
        described = ", ".join(f"{m}×{n}" if n > 1 else m for m, n in modules.most_common(6))
        return ModelArtifact(name, "torchscript", "pytorch", params, layers, f"TorchScript modules: {described}; "
                             f"{weights}")
    return ModelArtifact(name, "torch_save", "pytorch", params, layers, f"torch.save archive; {weights}")


def read_torch_legacy(name: str, data: bytes, budget: Budget) -> ModelArtifact:
    """A file `torch.save` wrote before PyTorch 1.6 (`read_legacy`): its pickles, read within the file's first
    `MAX_PICKLE_BYTES`, count against the bundle's pickle allowance (twice: they are read twice)."""
    if budget.unpickle <= 0:
        return budget.pickles_spent(name)
    shapes, hollow, _, used = read_legacy(data, min(MAX_PICKLE_BYTES, budget.unpickle // 2))
    budget.unpickle -= 2 * used
    params, layers, weights = describe_weights(shapes, hollow)
    return ModelArtifact(name, "torch_save", "pytorch", params, layers, f"torch.save archive (before 1.6); {weights}")
