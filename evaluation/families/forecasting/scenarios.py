"""Scenarios for time-series forecasting inputs. Each takes `(history, future, severity, rng, measured)`, where
`measured` lists the history feature columns that can go missing (all but the calendar)."""

from __future__ import annotations

import numpy as np

from evaluation.registry import scenario


@scenario("missing_hours", family="forecasting")
def missing_hours(history: np.ndarray, future: np.ndarray, severity: float, rng: np.random.Generator,
                  measured: list[int]):
    """Sensor/record outage: a share (`severity`) of history steps lose every non-calendar value (NaN)."""
    history = history.copy()
    lost = rng.random(history.shape[:2]) < severity
    for column in measured:
        history[..., column][lost] = np.nan
    return history, future
