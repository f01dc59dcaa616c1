"""Every scenario's inputs for an evaluation, computed in parallel and remembered for the next one.

A scenario's perturbation is a function of the clean inputs, the family's options and the scenario's spec
(its seed included) alone, never of the phase seed that orders and batches the requests: that is the contract
of `TaskFamily.perturb`. So within one process (a campaign, a benchmark, a long-lived driver) each split is
perturbed once per scenario, not once per bundle; the cache is keyed by a sha256 over exactly those inputs,
so a changed spec, option or data file is a new key. Misses run in threads: numpy and Pillow release the GIL
for the heavy work (a CCTV split's six scenarios: 4.8 s in one thread on 2 cores).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["scenario_inputs", "fingerprint", "KEEP"]

KEEP = 16
"""Scenario input sets kept per process, the most recently used (a CCTV split's six take ~100 MB)."""

_cache: OrderedDict[str, Any] = OrderedDict()
_lock = threading.Lock()


def fingerprint(value: Any, digest: Any = None) -> Any:
    """A sha256 over a family's inputs: bytes, text, numpy arrays (dtype and shape included), numbers and
    nested lists, tuples and dicts of them. Returns the hashlib object (`.hexdigest()` for the key)."""
    digest = digest or hashlib.sha256()
    if isinstance(value, bytes | bytearray | memoryview):
        digest.update(b"b%d:" % len(value))
        digest.update(value)
    elif isinstance(value, str):
        fingerprint(value.encode(), digest)
    elif isinstance(value, np.ndarray):
        digest.update(f"a{value.dtype.str}{value.shape}:".encode())
        digest.update(np.ascontiguousarray(value).view(np.uint8).reshape(-1).data if value.size else b"")
    elif isinstance(value, list | tuple):
        digest.update(b"l%d:" % len(value))
        for item in value:
            fingerprint(item, digest)
    elif isinstance(value, dict):
        digest.update(b"d%d:" % len(value))
        for key in sorted(value, key=repr):
            fingerprint(repr(key), digest)
            fingerprint(value[key], digest)
    elif value is None or isinstance(value, bool | int | float | np.generic):
        digest.update(f"n{value!r}:".encode())
    else:
        raise TypeError(f"cannot fingerprint a {type(value).__name__}: give perturb plain data")
    return digest


def scenario_inputs(fam: Any, data: Any, clean: Any) -> dict[str, Any]:
    """Scenario name -> `fam.perturb(data, clean, scenario)`, for every scenario of the family's spec (`fam`: the
    `evaluation.family.TaskFamily` calling, which imports this module)."""
    base = fingerprint([fam.name, fam.dataset_sha256, fam.options.model_dump_json(), clean]).hexdigest()
    keys = {sc.name: hashlib.sha256(f"{base}:{sc.model_dump_json()}".encode()).hexdigest()
            for sc in fam.spec.scenarios}
    with _lock:
        found = {name: _cache[key] for name, key in keys.items() if key in _cache}
    missing = [sc for sc in fam.spec.scenarios if sc.name not in found]
    if missing:
        with ThreadPoolExecutor(max_workers=min(len(missing), os.cpu_count() or 1),
                                thread_name_prefix="perturb") as pool:
            found |= dict(zip([sc.name for sc in missing],
                              pool.map(lambda sc: fam.perturb(data, clean, sc), missing), strict=True))
    with _lock:
        for name, key in keys.items():
            _cache[key] = found[name]
            _cache.move_to_end(key)
        while len(_cache) > KEEP:
            _cache.popitem(last=False)
    return {sc.name: found[sc.name] for sc in fam.spec.scenarios}
