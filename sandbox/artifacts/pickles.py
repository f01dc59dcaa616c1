"""The pickle inside a PyTorch archive (`torch.save`, TorchScript), read as data: a stub unpickler that never
looks up or calls anything the pickle names, and a walk of what it built for the tensors whose values the
archive holds (`read_pickle`). The other readers of `sandbox.artifacts` describe the model from that."""

from __future__ import annotations

import io
import math
import pickle
from collections import Counter
from dataclasses import dataclass

__all__ = ["read_pickle", "read_legacy", "LEGACY_MAGIC", "plausible", "MAX_WALK", "MAX_PATH", "MAX_RANK"]

MAX_WALK = 200_000
MAX_PATH = 200
"""Characters of a tensor's dotted path kept: a path grows with the nesting, and 200,000 nested dicts under one
64 KiB key would otherwise make gigabytes of paths."""


class _Stub:
    """Stands for any object a pickle names. Nothing the pickle names is ever looked up or called."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        """A stub called (cloudpickle: `_builtin_type("CodeType")(...)`): another stub, holding the arguments."""
        return type(self)(*args)

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


MAX_RANK = 64
"""Dimensions a tensor may have (PyTorch's own limit); a shape of more, or a dimension outside 0..2**63, is declared,
never held: the product of a million dimensions of 2**62 took hours to compute."""


def plausible(shape: tuple[int, ...]) -> bool:
    """A shape whose product is cheap to compute and that some tensor could have."""
    return len(shape) <= MAX_RANK and all(0 <= d < 1 << 63 for d in shape)


def _rebuild_tensor(storage, offset=0, size=(), *rest, **kwargs):
    shape = tuple(int(s) for s in size) if isinstance(size, tuple | list) and len(size) <= MAX_RANK else (-1,)
    if not isinstance(storage, _Storage) or not plausible(shape):  # values not from a file of the archive
        return _Tensor(shape, held=False)
    held = math.prod(shape) <= storage.elements - storage.claimed
    storage.claimed += math.prod(shape) if held else 0  # views of one storage share its values: counted once
    return _Tensor(shape, held)


def _rebuild_parameter(data, *rest, **kwargs):
    return data


class _StubUnpickler(pickle._Unpickler):  # noqa: SLF001 - the Python unpickler: its memo is a dict
    """Python's own unpickler, not the C one (`pickle.Unpickler`): the C one sizes its memo by the largest index a
    PUT names, so five bytes (LONG_BINPUT 2**31 - 1) made it allocate and clear 32 GiB; this one's memo holds what
    the pickle put in it. About 1.5 times slower (a 32 MiB pickle of objects: 26 s, not 18 s)."""

    TENSOR_BUILDERS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_qtensor"}

    def __init__(self, data: bytes | io.BytesIO, stored: dict[str, int] | None = None):
        super().__init__(data if isinstance(data, io.BytesIO) else io.BytesIO(data))
        self.kinds: dict[str, str] = {}
        """The element type of each storage the pickle names (`Float`), by key."""
        self.classes: Counter = Counter()
        self.stored = stored or {}
        """Bytes of each storage's file in the archive (`data/<key>`)."""
        self.storages: dict[str, _Storage] = {}

    def load_newobj(self, kwargs: bool = False):
        """NEWOBJ (and NEWOBJ_EX): `cls.__new__(cls, *args)`, where `cls` may be a stub object standing for a class
        the pickle built (cloudpickle rebuilds a class defined in `__main__`, as `bentoml.pytorch` saves it): an
        instance stub then, holding the arguments."""
        if kwargs:
            self.stack.pop()
        args, cls = self.stack.pop(), self.stack.pop()
        self.append(cls.__new__(cls, *args) if isinstance(cls, type) else _Stub(*args))

    def load_newobj_ex(self):
        self.load_newobj(kwargs=True)

    dispatch = pickle._Unpickler.dispatch | {pickle.NEWOBJ[0]: load_newobj, pickle.NEWOBJ_EX[0]: load_newobj_ex}  # noqa: SLF001

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
            self.kinds.setdefault(str(pid[2]), kind)
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


def read_pickle(data: bytes, stored: dict[str, int]) -> tuple[dict[str, tuple[int, ...]], int, Counter]:
    """The tensors of a `data.pkl` whose values the archive holds (dotted path -> shape), how many others it
    declares (`_walk`), and how often it names each class (`module.name`). `stored`: bytes of each storage's
    file in the archive, by key (`data/<key>`)."""
    unpickler = _StubUnpickler(data, stored)
    shapes, hollow = _walk(unpickler.load())
    return shapes, hollow, unpickler.classes


LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
"""How a file `torch.save` wrote in its format before PyTorch 1.6 begins: the pickled magic number."""


def read_legacy(data: bytes, limit: int) -> tuple[dict[str, tuple[int, ...]], int, Counter, int]:
    """`read_pickle` for PyTorch's format before 1.6 (`_use_new_zipfile_serialization=False`): three pickles (magic,
    protocol, system), the object's, the sorted list of storage keys, then each storage as its element count
    (8 bytes) and its values. Read twice: once for the storages' element types, once with the bytes they hold.
    The pickles must lie within the first `limit` bytes; the last value: the bytes of pickle they take."""
    fh = io.BytesIO(data[:limit])
    for _ in range(3):
        _StubUnpickler(fh).load()
    start = fh.tell()
    first = _StubUnpickler(fh)
    first.load()
    keys = _StubUnpickler(fh).load()
    stored, offset = {}, fh.tell()
    used = offset
    for key in keys if isinstance(keys, list) else ():
        count = int.from_bytes(data[offset:offset + 8], "little")
        size = count * _STORAGE_BYTES.get(first.kinds.get(str(key), ""), 1)
        if offset + 8 + size > len(data):
            break
        stored[str(key)], offset = size, offset + 8 + size
    fh.seek(start)
    unpickler = _StubUnpickler(fh, stored)
    shapes, hollow = _walk(unpickler.load())
    return shapes, hollow, unpickler.classes, used
