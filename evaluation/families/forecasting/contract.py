"""The forecasting task contract (any pilot of the family; the pilot spec fixes the sizes and the features).

    @bentoml.service
    class MyForecaster:
        @bentoml.api
        def forecast(self, history: np.ndarray, future: np.ndarray) -> np.ndarray: ...

- `history`: float array (windows, history, len(history_features)), oldest step first. Features in the
  pilot's order (`testbed pilots show PILOT` lists them; the public data carry them as `history_features`):
  the target first, then calendar, known-in-advance and observed covariates. Steps missing from the record are
  NaN (sent as the JSON literal `NaN`), calendar features excepted.
- `future`: float array (windows, horizon, len(future_features)): the calendar and the known-in-advance
  covariates of the steps to forecast (as a weather forecast gives them).
- returns: float array (windows, horizon) of predicted targets, finite, and non-negative unless the pilot's
  `task.nonnegative` is false (a target that can go below zero).

One request carries many windows (of one or many series). Through the testbed's sandbox the arrays travel in
binary (an `.npz` request, an `.npy` answer: the worker converts them for BentoML, the service sees the same
`np.ndarray`s); a plain BentoML JSON request (`{"history": [...], "future": [...]}`) works the same, and is
what the testbed sends when asked for JSON. (BentoML's `batchable=True` batches single-input
APIs only and fails on this one with HTTP 500; in production the testbed's serving proxy batches concurrent
requests itself.)
"""

from __future__ import annotations

import io
import json

import numpy as np

from evaluation.contract import Contract, ContractViolation

__all__ = ["FORECAST", "NPZ", "encode_request", "decode_response"]

NPZ = "application/x-testbed-npz"
"""Media type of a binary request (`sandbox/worker.py` decodes it); the answer comes back as `.npy`."""

FORECAST = Contract(
    family="forecasting",
    api="forecast",
    inputs={"history": ("tensor", "array"), "future": ("tensor", "array")},
    summary=__doc__.split("\n\n", 1)[1].strip(),
)


def encode_request(history: np.ndarray, future: np.ndarray, binary: bool = True) -> bytes:
    """Body of one request: an `.npz` of float64 arrays (media type NPZ), or JSON (NaN stays the literal NaN)."""
    if not binary:
        return json.dumps({"history": history.tolist(), "future": future.tolist()}).encode()
    out = io.BytesIO()
    np.savez(out, history=np.asarray(history, np.float64), future=np.asarray(future, np.float64))
    return out.getvalue()


def _array(body: bytes) -> np.ndarray:
    """An `.npy` answer read without pickle (object arrays are refused), else a JSON one."""
    if body.startswith(b"\x93NUMPY"):
        array = np.load(io.BytesIO(body), allow_pickle=False)
        if array.dtype.kind not in "iuf":
            raise TypeError(f"dtype {array.dtype} is not numeric")
        return array.astype(np.float64)
    array = np.asarray(json.loads(body, parse_int=float))
    if array.dtype.kind not in "iuf":  # strings, booleans, nulls, ragged lists: not the numbers asked for
        raise TypeError(f"the values are {array.dtype.name}, not numbers")
    return array.astype(np.float64)


def decode_response(body: bytes, windows: int, horizon: int, nonnegative: bool = True) -> np.ndarray:
    """Parse and check one response (negative values refused when `nonnegative`); raise ContractViolation with
    what is wrong."""
    try:  # hostile input: huge integers become inf (caught below), deep nesting is refused, not a crash
        array = _array(body)
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise ContractViolation(f"response is not a numeric array ({type(exc).__name__}: {str(exc)[:200]})") from None
    if array.shape != (windows, horizon):
        raise ContractViolation(f"response shape {array.shape}, expected ({windows}, {horizon})")
    if not np.isfinite(array).all():
        raise ContractViolation("response contains NaN or infinite values")
    if nonnegative and (array < 0).any():
        raise ContractViolation("response contains negative values")
    return array
