"""Point-forecast errors on flattened arrays: truth `y`, prediction `yhat`, and per-point MASE `scale`."""

from __future__ import annotations

import numpy as np

from evaluation.registry import metric


@metric("mae", family="forecasting", goal="min")
def mae(y: np.ndarray, yhat: np.ndarray, scale: np.ndarray) -> float:
    """Mean absolute error, in target units."""
    return float(np.mean(np.abs(y - yhat)))


@metric("rmse", family="forecasting", goal="min")
def rmse(y: np.ndarray, yhat: np.ndarray, scale: np.ndarray) -> float:
    """Root mean squared error, in target units (scaled by the largest error first, so that errors whose
    squares overflow still give a finite value)."""
    error = np.abs(y - yhat)
    largest = float(error.max(initial=0.0))
    if largest == 0 or not np.isfinite(largest):
        return largest
    return float(largest * np.sqrt(np.mean((error / largest) ** 2)))


@metric("smape", family="forecasting", goal="min", span=(0.0, 200.0))
def smape(y: np.ndarray, yhat: np.ndarray, scale: np.ndarray) -> float:
    """Symmetric MAPE in percent (0..200); points where truth and forecast are both 0 count as 0."""
    denom = np.abs(y) + np.abs(yhat)
    ratio = np.divide(2 * np.abs(y - yhat), denom, out=np.zeros_like(denom, dtype=float), where=denom > 0)
    return float(100 * np.mean(ratio))


@metric("mase", family="forecasting", goal="min")
def mase(y: np.ndarray, yhat: np.ndarray, scale: np.ndarray) -> float:
    """Mean absolute scaled error: |error| over the window's in-sample seasonal-naive MAE (below 1 beats it)."""
    return float(np.mean(np.abs(y - yhat) / scale))
