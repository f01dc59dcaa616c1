"""The forecasting task contract (hourly demand, next 24 hours).

    @bentoml.service
    class MyForecaster:
        @bentoml.api
        def forecast(self, history: np.ndarray, future: np.ndarray) -> np.ndarray: ...

- `history`: float array (windows, history_hours, len(HISTORY_FEATURES)), oldest hour first. Hours missing
  from the record are NaN (sent as the JSON literal `NaN`), calendar columns excepted.
- `future`: float array (windows, horizon, len(FUTURE_FEATURES)): the coming hours' calendar and weather,
  as a weather forecast gives it.
- returns: float array (windows, horizon) of predicted demand, finite and non-negative.

One request carries many windows; services may also set `batchable=True`.
"""

from __future__ import annotations

import json

import numpy as np

from evaluation.contract import Contract, ContractViolation

__all__ = ["FORECAST", "HISTORY_FEATURES", "FUTURE_FEATURES", "CALENDAR_FEATURES", "encode_request",
           "decode_response"]

FUTURE_FEATURES = (
    "hour", "day_of_week", "holiday", "functioning_day", "temperature", "humidity", "wind_speed", "visibility",
    "dew_point", "solar_radiation", "rainfall", "snowfall",
)
"""Columns of `future` (and of `history` after `demand`). Calendar first, then weather."""
HISTORY_FEATURES = ("demand", *FUTURE_FEATURES)
"""Columns of `history`: demand (bikes rented in the hour) first."""
CALENDAR_FEATURES = ("hour", "day_of_week", "holiday", "functioning_day")
"""Columns never missing: the calendar is always known."""

FORECAST = Contract(
    family="forecasting",
    api="forecast",
    inputs={"history": ("tensor", "array"), "future": ("tensor", "array")},
    summary=__doc__.split("\n\n", 1)[1].strip(),
)


def encode_request(history: np.ndarray, future: np.ndarray) -> bytes:
    """JSON body for one request (NaN stays the JSON literal NaN)."""
    return json.dumps({"history": history.tolist(), "future": future.tolist()}).encode()


def decode_response(body: bytes, windows: int, horizon: int) -> np.ndarray:
    """Parse and check one response; raise ContractViolation with what is wrong."""
    try:  # hostile input: huge integers become inf (caught below), deep nesting is refused, not a crash
        array = np.asarray(json.loads(body, parse_int=float), dtype=np.float64)
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise ContractViolation(f"response is not a numeric array ({type(exc).__name__}: {str(exc)[:200]})") from None
    if array.shape != (windows, horizon):
        raise ContractViolation(f"response shape {array.shape}, expected ({windows}, {horizon})")
    if not np.isfinite(array).all():
        raise ContractViolation("response contains NaN or infinite values")
    if (array < 0).any():
        raise ContractViolation("response contains negative demand")
    return array
