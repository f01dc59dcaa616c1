"""Test bundle: takes far too long to become ready."""

import time

import bentoml
import numpy as np


@bentoml.service
class SlowStart:
    def __init__(self):
        time.sleep(600)

    @bentoml.api
    def forecast(self, history: np.ndarray, future: np.ndarray) -> np.ndarray:
        return np.zeros((len(history), 24))
