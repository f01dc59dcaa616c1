"""Test bundle: exposes `predict` instead of the forecasting contract's `forecast`."""

import bentoml
import numpy as np


@bentoml.service
class WrongApi:
    @bentoml.api
    def predict(self, history: np.ndarray, future: np.ndarray) -> np.ndarray:
        return np.zeros((len(history), 24))
