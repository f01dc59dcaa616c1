"""ONNX models, read by the `onnx` package in a process of its own with a bounded address space: weights are the
graph's initializers and its Constant nodes' values; those kept in external data files count from those files'
sizes in the archive, never opened."""

from __future__ import annotations

import json
import math
import os
import posixpath
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sandbox.artifacts.base import ModelArtifact, describe_weights
from sandbox.artifacts.pickles import plausible

__all__ = ["read_onnx", "read_onnx_named_otherwise", "looks_like_onnx", "MAX_ONNX_FILES"]

_ROOT = Path(__file__).resolve().parents[2]
MAX_ONNX_FILES = 16
"""ONNX files of a bundle parsed, at most: each in a process of its own (`read_onnx`), which takes a second to
start."""
ONNX_TIMEOUT_S = 120
_ONNX_CHILD = """
import json, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.path.insert(0, sys.argv[3])
from sandbox.artifacts.onnx_graph import onnx_parts
json.dump(onnx_parts(sys.argv[1], sys.stdin.buffer.read()), sys.stdout)
"""

_ONNX_NEXT_FIELDS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}
"""How an ONNX file under another name (`model.bin`) begins, as every ONNX writer orders the fields: its IR version
(field 1, a small number), then the producer, domain, model version, doc string, graph or opsets (fields 2–8)."""

Finish = Callable[[dict[str, int]], ModelArtifact]
"""An ONNX artifact waiting for the sizes of the bundle's members (its external data files may come later)."""


def looks_like_onnx(head: bytes) -> bool:
    """Whether a file's first bytes are how an ONNX model begins."""
    return len(head) > 2 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in _ONNX_NEXT_FIELDS


def read_onnx_named_otherwise(name: str, data: bytes) -> Finish | None:
    """A file that begins as ONNX does without its name saying so: a model if it parses as one with a graph."""
    try:
        finish = read_onnx(name, data)
    except Exception:  # noqa: BLE001 - any other file that happens to begin so
        return None
    return finish if finish.operators else None


def read_onnx(name: str, data: bytes) -> Finish:
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
        params, layers, weights = describe_weights(dict(shapes[i] for i in sorted(held)), len(shapes) - len(held))
        return ModelArtifact(name, "onnx", "onnx", params, layers, f"{described}; {weights}")

    finish.operators = parts["operators"]
    return finish


def onnx_parts(name: str, data: bytes) -> dict:
    """What `read_onnx` needs of a model, as JSON (run in the bounded process)."""
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
