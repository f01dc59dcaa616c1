"""Static evidence of the model a bundle carries: its files are read as data, never run or imported.

Known formats, recognised by content: ONNX (`onnx_graph`: parsed in a bounded process, under any name), PyTorch
archives (`torch_archive`: `torch.save` state dicts and TorchScript, whose `data.pkl` a stub unpickler walks
without calling anything the pickle names (`pickles`), and `torch.save`'s format before 1.6), safetensors and
BentoML model-store entries (`headers`), and NumPy arrays (`numpy_arrays`: never unpickled). Each artifact gives
its framework, an architecture summary and its parameter count, counted from the values the file holds, each byte
once. A bundle's files share one budget of each costly step (`Budget`). What the bundle does with the artifact at
run time is not proven by this: an evaluator confirms it.
"""

from __future__ import annotations

import io
import posixpath
import struct
import tarfile
import zipfile
from pathlib import Path

from sandbox.artifacts.base import MIN_DL_LAYERS, MIN_DL_PARAMETERS, Budget, ModelArtifact, deep_learning_model
from sandbox.artifacts.headers import MAX_SAFETENSORS_HEADER, read_bentoml_model, read_safetensors
from sandbox.artifacts.numpy_arrays import NPY_MAGIC, read_npy, read_npz
from sandbox.artifacts.onnx_graph import MAX_ONNX_FILES, looks_like_onnx, read_onnx, read_onnx_named_otherwise
from sandbox.artifacts.pickles import LEGACY_MAGIC
from sandbox.artifacts.torch_archive import read_torch_legacy, read_torch_zip

__all__ = ["ModelArtifact", "scan_models", "deep_learning_model", "MIN_DL_PARAMETERS", "MIN_DL_LAYERS"]

MAX_PARSED_BYTES = 512 << 20
"""Files larger than this are not read (a safetensors file: its header only, its size saying what it holds)."""
MAX_PICKLE_BYTES_IN_ALL = 64 << 20
"""Pickle bytes read in a bundle, all its archives together: the stub unpickler takes about a second a MiB of
hostile pickle, so 4 GiB of them would take an hour; an archive past the budget is reported unread."""
MAX_INFLATED_BYTES = 512 << 20
"""Bytes the compressed `.npz` files of a bundle are inflated to, at most in all, to see which arrays they hold."""


def scan_models(bundle: Path) -> list[ModelArtifact]:
    """Every model artifact in a `.bento` archive (already vetted by `inspect_bundle`), read statically, one file
    at a time. An ONNX graph is finished once every member's size is known: its weights may be in external data
    files."""
    found: list = []  # artifacts, and ONNX graphs waiting for the members' sizes
    sizes: dict[str, int] = {}
    budget = Budget(MAX_INFLATED_BYTES, MAX_PICKLE_BYTES_IN_ALL, MAX_PICKLE_BYTES_IN_ALL, MAX_ONNX_FILES)
    with tarfile.open(bundle, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = posixpath.normpath(member.name)
            sizes[name] = member.size
            if member.size < 8:
                continue
            with tar.extractfile(member) as fh:
                head = fh.read(16)
                kind = _kind(name, head)
                if kind is None or (member.size > MAX_PARSED_BYTES and kind != "safetensors"):
                    continue
                if kind.startswith("onnx") and budget.onnx_files <= 0:
                    if kind == "onnx":
                        found.append(ModelArtifact(name, kind, "unknown", 0, 0, f"not read: the bundle's first "
                                                   f"{MAX_ONNX_FILES} ONNX files were"))
                    continue
                budget.onnx_files -= kind.startswith("onnx")
                if member.size > MAX_PARSED_BYTES:  # a large safetensors file: its header, and its size
                    header = min(struct.unpack("<Q", head[:8])[0], MAX_SAFETENSORS_HEADER)
                    data = head + fh.read(max(0, 8 + header - len(head)))
                else:
                    data = head + fh.read()
            try:
                artifact = _read(kind, name, data, member.size, budget)
            except Exception as exc:  # noqa: BLE001 - hostile bytes: any parse failure is "unreadable"
                artifact = ModelArtifact(name, kind, "unknown", 0, 0, f"unreadable {kind} file ({type(exc).__name__})")
            if artifact:
                found.append(artifact)
    return [a if isinstance(a, ModelArtifact) else a(sizes) for a in found]


def _kind(name: str, head: bytes) -> str | None:
    if name.endswith(".onnx"):
        return "onnx"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(LEGACY_MAGIC):
        return "torch_legacy"
    if len(head) > 9 and head[8:9] == b"{" and (name.endswith(".safetensors") or head[9:10] == b'"'):
        return "safetensors"
    if posixpath.basename(name) == "model.yaml" and "models/" in name:
        return "bentoml_model"
    if looks_like_onnx(head):
        return "onnx_named_otherwise"
    return None


def _read(kind: str, name: str, data: bytes, size: int, budget: Budget):
    """An artifact, None (not a model), or for ONNX a function finishing it once the members' sizes are known."""
    if kind == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is not None:
                return read_torch_zip(name, data, zf, pkl, budget)
            return read_npz(name, data, zf, budget) if any(n.endswith(".npy") for n in names) else None
    return {"torch_legacy": lambda: read_torch_legacy(name, data, budget),
            "safetensors": lambda: read_safetensors(name, data, size),
            "npy": lambda: read_npy(name, data),
            "bentoml_model": lambda: read_bentoml_model(name, data),
            "onnx": lambda: read_onnx(name, data),
            "onnx_named_otherwise": lambda: read_onnx_named_otherwise(name, data)}[kind]()
