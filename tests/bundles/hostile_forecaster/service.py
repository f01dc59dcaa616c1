"""Hostile test bundle with the forecasting contract's API: its answers are built to crash the decoder —
JSON nested far deeper than the parser's recursion limit, and integers of hundreds of digits."""

import bentoml
import numpy as np


@bentoml.service
class Forecaster:
    def __init__(self):
        self.calls = 0

    @bentoml.api
    def forecast(self, history: np.ndarray, future: np.ndarray) -> str:
        self.calls += 1
        if self.calls % 2:
            return "[" * 200_000 + "]" * 200_000
        huge = "9" * 400
        return "[" + ",".join("[" + ",".join([huge] * future.shape[1]) + "]" for _ in range(len(history))) + "]"
