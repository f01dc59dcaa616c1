"""Test bundle: crashes while loading."""

import bentoml
import numpy as np


@bentoml.service
class CrashOnStart:
    def __init__(self):
        raise SystemExit("model weights are corrupt")

    @bentoml.api
    def forecast(self, history: np.ndarray, future: np.ndarray) -> np.ndarray:
        return np.zeros((len(history), 24))
