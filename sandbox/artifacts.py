"""Static evidence of the model a bundle carries: its files are read as data, never run or imported.

Known formats, recognised by content: ONNX (protobuf, parsed by the `onnx` package in a bounded process, under
any name; weights are its initializers and Constant nodes' values, those in external data files counted from those
files' sizes in the archive, never opened), PyTorch archives (`torch.save` state dicts and TorchScript: a zip whose
`data.pkl` is walked by a stub unpickler that never calls anything the pickle names; and `torch.save`'s format
before 1.6, pickles then values), safetensors (a JSON header), BentoML model-store entries
(`models/NAME/VERSION/model.yaml`), and NumPy arrays (`np.save`, `np.savez`: headers read as literals, never
unpickled). Each artifact gives its framework, an architecture summary and its parameter count, counted from the
values the file holds. What the bundle does with the artifact at run time is not proven by this: an evaluator
confirms it.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import struct
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from sandbox.torch_pickle import LEGACY_MAGIC, plausible, read_legacy, read_pickle
from testbed.yamlio import safe_load_bounded

__all__ = ["ModelArtifact", "scan_models", "deep_learning_model", "MIN_DL_PARAMETERS", "MIN_DL_LAYERS"]

_ROOT = Path(__file__).resolve().parent.parent
MAX_PARSED_BYTES = 512 << 20
"""Files larger than this are not read (a safetensors file: its header only, its size saying what it holds)."""
MAX_PICKLE_BYTES = 32 << 20
MAX_PICKLE_BYTES_IN_ALL = 64 << 20
"""Pickle bytes read in a bundle, all its archives together: the stub unpickler takes about a second a MiB of
hostile pickle, so 4 GiB of them would take an hour; an archive past the budget is reported unread."""
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
    """Every model artifact in a `.bento` archive (already vetted by `inspect_bundle`), read statically, one file
    at a time. An ONNX graph is finished once every member's size is known: its weights may be in external data
    files."""
    found: list[ModelArtifact | Callable[[dict[str, int]], ModelArtifact]] = []
    sizes: dict[str, int] = {}
    budget = [MAX_INFLATED_BYTES, MAX_PICKLE_BYTES_IN_ALL, MAX_ONNX_FILES]  # the bundle's: inflate, unpickle, ONNX
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
                if kind.startswith("onnx") and budget[2] <= 0:
                    if kind == "onnx":
                        found.append(ModelArtifact(name, kind, "unknown", 0, 0, f"not read: the bundle's first "
                                                   f"{MAX_ONNX_FILES} ONNX files were"))
                    continue
                budget[2] -= kind.startswith("onnx")
                if member.size > MAX_PARSED_BYTES:  # a large safetensors file: its header, and its size
                    header = min(struct.unpack("<Q", head[:8])[0], MAX_SAFETENSORS_HEADER)
                    data = head + fh.read(max(0, 8 + header - len(head)))
                else:
                    data = head + fh.read()
            try:
                artifact = (_zip(name, data, budget) if kind == "zip" else
                            _torch_legacy(name, data, budget) if kind == "torch_legacy" else
                            _safetensors(name, data, member.size) if kind == "safetensors" else
                            _READERS[kind](name, data))
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
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(LEGACY_MAGIC):
        return "torch_legacy"
    if len(head) > 9 and head[8:9] == b"{" and (name.endswith(".safetensors") or head[9:10] == b'"'):
        return "safetensors"
    if posixpath.basename(name) == "model.yaml" and "models/" in name:
        return "bentoml_model"
    if len(head) > 2 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in _ONNX_NEXT_FIELDS:
        return "onnx_named_otherwise"
    return None


_ONNX_NEXT_FIELDS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}
"""How an ONNX file under another name (`model.bin`) begins, as every ONNX writer orders the fields: its IR version
(field 1, a small number), then the producer, domain, model version, doc string, graph or opsets (fields 2–8)."""


def _onnx_named_otherwise(name: str, data: bytes) -> Callable[[dict[str, int]], ModelArtifact] | None:
    """A file that begins as ONNX does without its name saying so: a model if it parses as one with a graph."""
    try:
        finish = _onnx(name, data)
    except Exception:  # noqa: BLE001 - any other file that happens to begin so
        return None
    return finish if finish.operators else None


def _describe_weights(shapes: dict[str, tuple[int, ...]], hollow: int = 0) -> tuple[int, int, str]:
    """Parameters, weight matrices and a summary of the tensors whose values the file holds; `hollow`: tensors
    it declares without bytes of their own for their shapes (a header claiming billions of parameters in a few
    KiB, or many tensors on the same bytes), named in the summary and never counted."""
    implausible = {k for k, s in shapes.items() if not plausible(s)}  # a negative dimension, a million of them
    shapes, hollow = {k: s for k, s in shapes.items() if k not in implausible}, hollow + len(implausible)
    params = sum(math.prod(s) for s in shapes.values())
    weights = {k: s for k, s in shapes.items() if len(s) >= 2 and math.prod(s) > 0}  # an empty matrix is no layer
    top = sorted(weights.items(), key=lambda kv: -math.prod(kv[1]))[:3]
    largest = ", ".join(f"{k} {'×'.join(map(str, s))}" for k, s in top)
    return params, len(weights), f"{len(shapes)} tensors, {len(weights)} weight matrices/kernels" + (
        f"; largest: {largest}" if largest else "") + (
        f"; {hollow} tensor(s) declared without values of their own, not counted" if hollow else "")


MAX_ONNX_FILES = 16
"""ONNX files of a bundle parsed, at most: each in a process of its own (`_onnx`), which takes a second to start."""
ONNX_TIMEOUT_S = 120
_ONNX_CHILD = """
import json, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.path.insert(0, sys.argv[3])
from sandbox.artifacts import _onnx_parts
json.dump(_onnx_parts(sys.argv[1], sys.stdin.buffer.read()), sys.stdout)
"""


def _onnx(name: str, data: bytes) -> Callable[[dict[str, int]], ModelArtifact]:
    """The graph read now (external data files are not opened); the artifact once the members' sizes are known
    (`sizes`: what the external data files hold). Parsed in a process of its own whose address space is bounded
    (1 GiB and 4 bytes a byte of the file): protobuf makes an object of every message, so 512 MiB of empty nodes
    (75 KiB in the archive) took 80 bytes of memory a byte, 40 GiB, in the harness."""
    limit = (1 << 30) + 4 * len(data)
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _ONNX_CHILD, name, str(limit), str(_ROOT)], input=data,
                              capture_output=True, timeout=ONNX_TIMEOUT_S, check=False,
                              env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": os.defpath})
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"not parsed in {ONNX_TIMEOUT_S} s") from None
    if done.returncode:
        raise MemoryError if b"MemoryError" in done.stderr[-2000:] else ValueError(done.returncode)
    parts = json.loads(done.stdout)
    shapes = [(k, tuple(s)) for k, s in parts["shapes"]]
    inline, refs, described = set(parts["inline"]), [tuple(r) for r in parts["refs"]], parts["described"]

    def finish(sizes: dict[str, int]) -> ModelArtifact:
        held = inline | _external_held(refs, sizes)
        params, layers, weights = _describe_weights(dict(shapes[i] for i in sorted(held)), len(shapes) - len(held))
        return ModelArtifact(name, "onnx", "onnx", params, layers, f"{described}; {weights}")

    finish.operators = parts["operators"]
    return finish


def _onnx_parts(name: str, data: bytes) -> dict:
    """What `_onnx` needs of a model, as JSON (run in the bounded process)."""
    import onnx

    model = onnx.load_model_from_string(data)
    constants = [(node.output[0] if node.output else "", attr.t) for node in model.graph.node
                 if node.op_type == "Constant" for attr in node.attribute
                 if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR]
    initializers = [*model.graph.initializer, *(t for _, t in constants)]  # weights kept as Constant nodes too
    names = [init.name for init in model.graph.initializer] + [out or t.name for out, t in constants]
    shapes = [(names[i], tuple(int(d) for d in init.dims)) for i, init in enumerate(initializers)]
    shapes = [(k, s if plausible(s) else (-1,)) for k, s in shapes]
    inline = [i for i, init in enumerate(initializers)
              if plausible(shapes[i][1]) and _onnx_values(init) >= math.prod(shapes[i][1])]
    ops = Counter(node.op_type for node in model.graph.node)
    described = f"{len(model.graph.node)} operators ({', '.join(f'{n} {op}' for op, n in ops.most_common(5))})"
    return {"shapes": shapes, "inline": inline, "refs": _external_refs(name, initializers), "described": described,
            "operators": len(model.graph.node)}


def _external_refs(name: str, initializers) -> list[tuple[str, int, int, int, int]]:
    """(file, offset, length, bytes needed, index) of each initializer kept in an external data file, the file
    named relative to the model's folder."""
    from onnx import TensorProto
    from onnx.helper import tensor_dtype_to_np_dtype

    refs = []
    for i, init in enumerate(initializers):
        if init.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in init.external_data}
        try:
            if not plausible(tuple(init.dims)):
                continue
            need = math.prod(int(d) for d in init.dims) * tensor_dtype_to_np_dtype(init.data_type).itemsize
            refs.append((posixpath.normpath(posixpath.join(posixpath.dirname(name), info["location"])),
                         int(info.get("offset", 0)), int(info.get("length", need)), need, i))
        except (KeyError, ValueError, TypeError):
            continue
    return refs


def _external_held(refs: list[tuple[str, int, int, int, int]], sizes: dict[str, int]) -> set[int]:
    """Indices of the external initializers whose bytes the bundle holds: the file is a member, the range lies
    within it, and each byte backs one tensor at most."""
    held, used = set(), {}
    for path, offset, length, need, i in sorted(refs):  # in file order
        if path in sizes and used.get(path, 0) <= offset and need <= length and offset + length <= sizes[path]:
            held.add(i)
            used[path] = offset + length
    return held


def _onnx_values(init) -> int:
    """Elements an ONNX initializer holds in the model file itself."""
    if init.raw_data:
        from onnx.helper import tensor_dtype_to_np_dtype

        return len(init.raw_data) // max(1, tensor_dtype_to_np_dtype(init.data_type).itemsize)
    return max(len(init.float_data), len(init.int32_data), len(init.int64_data), len(init.double_data),
               len(init.uint64_data), len(init.string_data))


_SAFETENSORS_BYTES = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                      "I16": 2, "U16": 2}
"""Bytes per element of a safetensors dtype (the others: 1 or less)."""


MAX_SAFETENSORS_HEADER = 16 << 20
"""Bytes of a safetensors header read (a real one takes a few hundred bytes a tensor); a longer one is unreadable.
JSON made 28 bytes of objects of each byte of `[{},{},…]`: the format's own 100 MB limit meant 2.8 GB."""


def _safetensors(name: str, data: bytes, size: int | None = None) -> ModelArtifact:
    """`data`: the file, or (past `MAX_PARSED_BYTES`) its header only, `size` then saying what the file holds."""
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


def _zip(name: str, data: bytes, budget: list[int] | None = None) -> ModelArtifact | None:
    budget = [MAX_INFLATED_BYTES, MAX_PICKLE_BYTES_IN_ALL] if budget is None else budget
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None and any(n.endswith(".npy") for n in names):
            return _npz(name, data, zf, budget)
        if pkl is None or zf.getinfo(pkl).file_size > MAX_PICKLE_BYTES:
            return None
        if zf.getinfo(pkl).file_size > budget[1]:
            return ModelArtifact(name, "zip", "unknown", 0, 0, "not read: the bundle's other archives used up the "
                                 f"{MAX_PICKLE_BYTES_IN_ALL >> 20} MiB of pickle the scan reads")
        budget[1] -= zf.getinfo(pkl).file_size
        root = pkl.rpartition("/")[0]
        scripted = any(n.startswith(f"{root}/code/") for n in names)
        folder = f"{root}/data/" if root else "data/"
        stored = _zip_held(data, [zf.getinfo(n) for n in names if n.startswith(folder)], folder)
        shapes, hollow, classes = read_pickle(zf.read(pkl), stored)
    params, layers, weights = _describe_weights(shapes, hollow)
    if scripted:
        modules = Counter({k.removeprefix("__torch__.").rpartition(".")[2]: n for k, n in classes.items()
                           if k.startswith("__torch__.")})
        described = ", ".join(f"{m}×{n}" if n > 1 else m for m, n in modules.most_common(6))
        return ModelArtifact(name, "torchscript", "pytorch", params, layers, f"TorchScript modules: {described}; "
                             f"{weights}")
    return ModelArtifact(name, "torch_save", "pytorch", params, layers, f"torch.save archive; {weights}")


def _zip_held(data: bytes, infos: list[zipfile.ZipInfo], folder: str) -> dict[str, int]:
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


def _torch_legacy(name: str, data: bytes, budget: list[int]) -> ModelArtifact:
    """A file `torch.save` wrote before PyTorch 1.6 (`read_legacy`): its pickles, read within the file's first
    `MAX_PICKLE_BYTES`, count against the bundle's `MAX_PICKLE_BYTES_IN_ALL` (twice: they are read twice)."""
    if budget[1] <= 0:
        return ModelArtifact(name, "torch_save", "unknown", 0, 0, "not read: the bundle's other archives used up "
                             f"the {MAX_PICKLE_BYTES_IN_ALL >> 20} MiB of pickle the scan reads")
    shapes, hollow, _, used = read_legacy(data, min(MAX_PICKLE_BYTES, budget[1] // 2))
    budget[1] -= 2 * used
    params, layers, weights = _describe_weights(shapes, hollow)
    return ModelArtifact(name, "torch_save", "pytorch", params, layers, f"torch.save archive (before 1.6); {weights}")


def _npy_header(head: bytes) -> tuple[tuple[int, ...], int, int] | None:
    """Shape, bytes per element and header length of a `.npy` file from its first bytes (`np.save`'s format: the
    header is a Python literal, read with `ast.literal_eval`), or None when its values are not plain numbers (an
    object array is a pickle, never read)."""
    import ast

    import numpy as np

    if not head.startswith(b"\x93NUMPY") or len(head) < 10:
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


_NPY_HEAD = 65_536 + 12
"""Bytes read for a `.npy` header (NumPy writes at most 10,000 for any array it saves)."""


def _npy(name: str, data: bytes) -> ModelArtifact | None:
    header = _npy_header(data[:_NPY_HEAD])
    if header is None:
        return None
    shape, itemsize, start = header
    held = {"array": shape} if plausible(shape) and len(data) - start >= math.prod(shape) * itemsize else {}
    params, layers, weights = _describe_weights(held, 1 - len(held))
    return ModelArtifact(name, "numpy", "numpy", params, layers, f"np.save array; {weights}")


MAX_INFLATED_BYTES = 512 << 20
"""Bytes the compressed `.npz` files of a bundle are inflated to, at most in all, to see which arrays they hold."""


def _npz(name: str, data: bytes, zf: zipfile.ZipFile, budget: list[int]) -> ModelArtifact:
    """Arrays of an `np.savez` archive (`np.load` reads them as weights): each counts when its member holds the
    bytes its header declares; a compressed member is inflated to see so (`budget`: bytes left to inflate)."""
    shapes, hollow = {}, 0
    members = [info for info in zf.infolist() if info.filename.endswith(".npy")]
    stored = _zip_held(data, members, "")  # each member's own bytes, in the archive
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
                while held < need and budget[0] > 0 and (chunk := fh.read(min(1 << 20, budget[0]))):
                    held, budget[0] = held + len(chunk), budget[0] - len(chunk)
        if held >= need:
            shapes[info.filename.removesuffix(".npy")] = shape
        else:
            hollow += 1
    params, layers, weights = _describe_weights(shapes, hollow)
    return ModelArtifact(name, "numpy", "numpy", params, layers, f"np.savez archive; {weights}")


_READERS = {"onnx": _onnx, "zip": _zip, "safetensors": _safetensors, "bentoml_model": _bentoml_model, "npy": _npy,
            "onnx_named_otherwise": _onnx_named_otherwise}
"""Readers of one file: an artifact, None (not a model), or for ONNX a function finishing it (`_onnx`); `_zip` is
also given the bundle's budgets (`MAX_INFLATED_BYTES`, `MAX_PICKLE_BYTES_IN_ALL`)."""
