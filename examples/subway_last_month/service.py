"""Reference baseline for the subway-ridership pilot: last month (each station and hour band's boardings in the
most recent month; a month missing from the record is filled from the month before it).

No deep learning: this is the bar a deep-learning bundle must clear (decision criterion 1).
"""

import bentoml
import numpy as np


def last_value(target: np.ndarray) -> np.ndarray:
    """The latest finite value of each row (0 when none)."""
    out = np.full(len(target), np.nan)
    for column in range(target.shape[1]):
        out = np.where(np.isfinite(target[:, column]), target[:, column], out)
    return np.nan_to_num(out, nan=0.0)


@bentoml.service(resources={"cpu": "1"})
class LastMonth:
    @bentoml.api
    def forecast(self, history: np.ndarray, future: np.ndarray) -> np.ndarray:
        pred = last_value(history[:, :, 0])
        return np.clip(np.repeat(pred[:, None], future.shape[1], axis=1), 0, None)
