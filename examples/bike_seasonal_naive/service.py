"""Reference baseline for the bike-demand pilot: seasonal naive (the same hour one day earlier).

No deep learning: this is the bar a deep-learning bundle must clear (decision criterion 1).
Missing hours (NaN) are filled from the same hour on earlier days of the history.
"""

import bentoml
import numpy as np


def seasonal_naive(demand: np.ndarray, season: int = 24) -> np.ndarray:
    days = demand.shape[1] // season
    last = demand[:, -season:].copy()
    for k in range(2, days + 1):
        earlier = demand[:, -season * k:demand.shape[1] - season * (k - 1)]
        last = np.where(np.isnan(last), earlier, last)
    return np.nan_to_num(last, nan=0.0)


@bentoml.service(resources={"cpu": "1"})
class SeasonalNaive:
    @bentoml.api
    def forecast(self, history: np.ndarray, future: np.ndarray) -> np.ndarray:
        horizon = future.shape[1]
        pred = np.stack([np.resize(row, horizon) for row in seasonal_naive(history[:, :, 0])])
        return np.clip(pred, 0, None)
