"""Hostile test bundle with the forecasting contract's API: its answers are built to crash the decoder —
JSON nested far deeper than the parser's recursion limit, and integers of a hundred digits."""

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
            return "[" * 20_000 + "]" * 20_000  # 40 KB: inside the answer's byte allowance, past the parser's limit
        huge = "9" * 100  # a batch of them stays inside the answer's byte allowance, for the decoder to meet
        return "[" + ",".join("[" + ",".join([huge] * future.shape[1]) + "]" for _ in range(len(history))) + "]"
