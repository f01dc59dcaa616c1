"""Scenarios for time-series forecasting inputs."""

from __future__ import annotations

import numpy as np

from evaluation.families.forecasting.contract import CALENDAR_FEATURES, HISTORY_FEATURES
from evaluation.registry import scenario


@scenario("missing_hours", family="forecasting")
def missing_hours(history: np.ndarray, future: np.ndarray, severity: float, rng: np.random.Generator):
    """Sensor/record outage: a share (`severity`) of history hours lose every non-calendar value (NaN)."""
    history = history.copy()
    lost = rng.random(history.shape[:2]) < severity
    measured = [i for i, name in enumerate(HISTORY_FEATURES) if name not in CALENDAR_FEATURES]
    for column in measured:
        history[..., column][lost] = np.nan
    return history, future
