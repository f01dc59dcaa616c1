"""Static evidence of the model a bundle carries: its files are read as data, never run or imported.

Known formats, recognised by content: ONNX (protobuf, parsed by the `onnx` package without external data),
PyTorch archives (`torch.save` state dicts and TorchScript: a zip whose `data.pkl` is walked by a stub
unpickler that never calls anything the pickle names), safetensors (a JSON header) and BentoML model-store
entries (`models/NAME/VERSION/model.yaml`). Each artifact gives its framework, an architecture summary and its
parameter count. What the bundle does with the artifact at run time is not proven by this: an evaluator
confirms it.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import posixpath
import struct
import tarfile
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from testbed.yamlio import safe_load_bounded

__all__ = ["ModelArtifact", "scan_models", "deep_learning_model", "MIN_DL_PARAMETERS", "MIN_DL_LAYERS"]

MAX_PARSED_BYTES = 512 << 20
"""Files larger than this are reported by size only, not parsed."""
MAX_PICKLE_BYTES = 32 << 20
MAX_WALK = 200_000
MAX_PATH = 200
"""Characters of a tensor's dotted path kept: a path grows with the nesting, and 200,000 nested dicts under one
64 KiB key would otherwise make gigabytes of paths."""
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
    """onnx, torchscript, torch_save, safetensors or bentoml_model."""
    framework: str
    """onnx, pytorch, safetensors, or the BentoML module (e.g. `bentoml.pytorch`)."""
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


def scan_models(bundle: Path) -> list[ModelArtifact]:
    """Every model artifact in a `.bento` archive (already vetted by `inspect_bundle`), read statically."""
    found = []
    with tarfile.open(bundle, "r:*") as tar:
        for member in tar:
            if not member.isfile() or member.size < 8:
                continue
            name = posixpath.normpath(member.name)
            with tar.extractfile(member) as fh:
                head = fh.read(16)
                if member.size > MAX_PARSED_BYTES:
                    continue
                kind = _kind(name, head)
                if kind is None:
                    continue
                data = head + fh.read()
            try:
                artifact = _READERS[kind](name, data)
            except Exception as exc:  # noqa: BLE001 - hostile bytes: any parse failure is "unreadable"
                artifact = ModelArtifact(name, kind, "unknown", 0, 0, f"unreadable {kind} file ({type(exc).__name__})")
            if artifact:
                found.append(artifact)
    return found


def _kind(name: str, head: bytes) -> str | None:
    if name.endswith(".onnx"):
        return "onnx"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) > 9 and head[8:9] == b"{" and (name.endswith(".safetensors") or head[9:10] == b'"'):
        return "safetensors"
    if posixpath.basename(name) == "model.yaml" and "models/" in name:
        return "bentoml_model"
    return None


def _describe_weights(shapes: dict[str, tuple[int, ...]], hollow: int = 0) -> tuple[int, int, str]:
    """Parameters, weight matrices and a summary of the tensors whose values the file holds; `hollow`: tensors
    it declares without bytes of their own for their shapes (a header claiming billions of parameters in a few
    KiB, or many tensors on the same bytes), named in the summary and never counted."""
    params = sum(math.prod(s) for s in shapes.values())
    weights = {k: s for k, s in shapes.items() if len(s) >= 2}
    top = sorted(weights.items(), key=lambda kv: -math.prod(kv[1]))[:3]
    largest = ", ".join(f"{k} {'×'.join(map(str, s))}" for k, s in top)
    return params, len(weights), f"{len(shapes)} tensors, {len(weights)} weight matrices/kernels" + (
        f"; largest: {largest}" if largest else "") + (
        f"; {hollow} tensor(s) declared without values of their own, not counted" if hollow else "")


def _onnx(name: str, data: bytes) -> ModelArtifact:
    import onnx

    model = onnx.load_model_from_string(data)
    shapes, hollow = {}, 0
    for init in model.graph.initializer:
        shape = tuple(int(d) for d in init.dims)
        if _onnx_values(init) >= math.prod(shape):
            shapes[init.name] = shape
        else:
            hollow += 1
    params, layers, weights = _describe_weights(shapes, hollow)
    ops = Counter(node.op_type for node in model.graph.node)
    summary = f"{len(model.graph.node)} operators ({', '.join(f'{n} {op}' for op, n in ops.most_common(5))}); {weights}"
    return ModelArtifact(name, "onnx", "onnx", params, layers, summary)


def _onnx_values(init) -> int:
    """Elements an ONNX initializer holds in the file (external data: none here)."""
    if init.raw_data:
        from onnx.helper import tensor_dtype_to_np_dtype

        return len(init.raw_data) // max(1, tensor_dtype_to_np_dtype(init.data_type).itemsize)
    return max(len(init.float_data), len(init.int32_data), len(init.int64_data), len(init.double_data),
               len(init.uint64_data), len(init.string_data))


_SAFETENSORS_BYTES = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                      "I16": 2, "U16": 2}
"""Bytes per element of a safetensors dtype (the others: 1 or less)."""


def _safetensors(name: str, data: bytes) -> ModelArtifact:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + min(length, 100 << 20)])
    held, shapes, hollow, used = len(data) - 8 - length, {}, 0, 0
    tensors = sorted(((int(v["data_offsets"][0]), int(v["data_offsets"][1]), k, v) for k, v in header.items()
                      if k != "__metadata__"), key=lambda t: t[:2])
    for start, end, key, info in tensors:  # in file order: each byte backs one tensor at most
        shape = tuple(int(d) for d in info["shape"])
        if used <= start <= end <= held and end - start >= math.prod(shape) * _SAFETENSORS_BYTES.get(info["dtype"], 1):
            shapes[key], used = shape, end
        else:
            hollow += 1
    params, layers, weights = _describe_weights(shapes, hollow)
    return ModelArtifact(name, "safetensors", "safetensors", params, layers, weights)


def _bentoml_model(name: str, data: bytes) -> ModelArtifact | None:
    meta = safe_load_bounded(data)
    if not isinstance(meta, dict) or "module" not in meta:
        return None
    context = meta.get("context") if isinstance(meta.get("context"), dict) else {}
    framework = str(meta.get("module"))
    summary = f"BentoML model {meta.get('name')}:{meta.get('version')} ({context.get('framework_name', framework)})"
    return ModelArtifact(name, "bentoml_model", framework, 0, 0, summary)


# PyTorch archives --------------------------------------------------------------------------------------------

class _Stub:
    """Stands for any object a pickle names. Nothing the pickle names is ever looked up or called."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.state = (self.state, key, value)

    def append(self, value):
        self.state = (self.state, value)

    extend = add = append


class _Dict(dict):
    """An OrderedDict as a plain dict that takes attributes (a state dict carries `_metadata`)."""


@dataclass
class _Tensor:
    shape: tuple[int, ...]
    held: bool = True
    """Its storage's file in the archive has the elements its shape needs."""


@dataclass
class _Storage:
    elements: int
    """Elements of its dtype the storage's file in the archive holds."""
    claimed: int = 0
    """Elements the tensors built on it so far take."""


_STORAGE_BYTES = {"Double": 8, "Long": 8, "ComplexFloat": 8, "ComplexDouble": 16, "Float": 4, "Int": 4, "QInt32": 4,
                  "Half": 2, "BFloat16": 2, "Short": 2}
"""Bytes per element of a `torch.<Name>Storage` (the others: 1)."""


def _rebuild_tensor(storage, offset=0, size=(), *rest, **kwargs):
    shape = tuple(int(s) for s in size) if isinstance(size, tuple | list) else ()
    if not isinstance(storage, _Storage):
        return _Tensor(shape)
    held = math.prod(shape) <= storage.elements - storage.claimed
    storage.claimed += math.prod(shape) if held else 0  # views of one storage share its values: counted once
    return _Tensor(shape, held)


def _rebuild_parameter(data, *rest, **kwargs):
    return data


class _StubUnpickler(pickle.Unpickler):
    TENSOR_BUILDERS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_qtensor"}

    def __init__(self, data: bytes, stored: dict[str, int] | None = None):
        super().__init__(io.BytesIO(data))
        self.classes: Counter = Counter()
        self.stored = stored or {}
        """Bytes of each storage's file in the archive (`data/<key>`)."""
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in self.TENSOR_BUILDERS:
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return _Dict
        self.classes[f"{module}.{name}"] += 1
        return type(name, (_Stub,), {"qualname": f"{module}.{name}"})

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage":
            kind = getattr(pid[1], "qualname", "").removeprefix("torch.").removesuffix("Storage")
            if str(pid[2]) not in self.storages:  # one per file, however often the pickle names it
                self.storages[str(pid[2])] = _Storage(self.stored.get(str(pid[2]), 0) // _STORAGE_BYTES.get(kind, 1))
            return self.storages[str(pid[2])]
        return None


def _walk(root) -> tuple[dict[str, tuple[int, ...]], int]:
    """Tensors reachable from `root` whose values the archive holds, by dotted path, and how many others
    (iterative, bounded, cycle-safe)."""
    shapes, hollow, stack, seen = {}, 0, [("", root)], set()
    while stack and len(seen) < MAX_WALK:
        path, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, _Tensor) and not obj.held:
            hollow += 1
        elif isinstance(obj, _Tensor):
            shapes[path or "tensor"] = obj.shape
        elif isinstance(obj, dict):
            stack += [(f"{path}.{k[:MAX_PATH]}".lstrip(".")[:MAX_PATH] if isinstance(k, str) else path, v)
                      for k, v in obj.items()]
        elif isinstance(obj, list | tuple):
            stack += [(path, v) for v in obj]
        elif isinstance(obj, _Stub):
            stack += [(path, obj.args), (path, obj.state)]
    return shapes, hollow


def _zip(name: str, data: bytes) -> ModelArtifact | None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None or zf.getinfo(pkl).file_size > MAX_PICKLE_BYTES:
            return None
        root = pkl.rpartition("/")[0]
        scripted = any(n.startswith(f"{root}/code/") for n in names)
        folder = f"{root}/data/" if root else "data/"
        stored = {n.removeprefix(folder): zf.getinfo(n).file_size for n in names if n.startswith(folder)}
        unpickler = _StubUnpickler(zf.read(pkl), stored)
        shapes, hollow = _walk(unpickler.load())
    params, layers, weights = _describe_weights(shapes, hollow)
    if scripted:
        modules = Counter({k.removeprefix("__torch__.").rpartition(".")[2]: n for k, n in unpickler.classes.items()
                           if k.startswith("__torch__.")})
        described = ", ".join(f"{m}×{n}" if n > 1 else m for m, n in modules.most_common(6))
        return ModelArtifact(name, "torchscript", "pytorch", params, layers, f"TorchScript modules: {described}; "
                             f"{weights}")
    return ModelArtifact(name, "torch_save", "pytorch", params, layers, f"torch.save archive; {weights}")


_READERS = {"onnx": _onnx, "zip": _zip, "safetensors": _safetensors, "bentoml_model": _bentoml_model}
