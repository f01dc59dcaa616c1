"""Test bundle: follows the forecasting API's signature but answers with the wrong shape."""

import bentoml
import numpy as np


@bentoml.service
class BadOutput:
    @bentoml.api
    def forecast(self, history: np.ndarray, future: np.ndarray) -> np.ndarray:
        return np.ones((len(history), 3))
