"""Test bundle: a 15-line numpy heuristic (no learned parameters): the mean of the same hour over the past week,
scaled by the last day's level against that week, zero on non-functioning days."""

import bentoml
import numpy as np


@bentoml.service
class Heuristic:
    @bentoml.api
    def forecast(self, history: np.ndarray, future: np.ndarray) -> np.ndarray:
        horizon, demand = future.shape[1], history[:, :, 0]
        days = demand[:, -(demand.shape[1] // 24) * 24:].reshape(len(demand), -1, 24)
        profile = np.nan_to_num(np.nanmean(days, axis=1))
        trend = np.nan_to_num(np.nanmean(days[:, -1], axis=1) / np.maximum(np.nanmean(days, axis=(1, 2)), 1), nan=1.0)
        pred = np.resize(profile, (len(demand), horizon)) * np.clip(trend, 0.5, 1.5)[:, None]
        return np.clip(pred * np.nan_to_num(future[:, :, 3], nan=1.0), 0, None)
