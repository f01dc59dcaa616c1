"""Hostile test bundle: no learning at all. It carries the public UCI file (the test copies it in next to this
file before building) and answers each window with the recorded demand + 1, found by the coming day's weather."""

from pathlib import Path

import bentoml
import numpy as np

CSV = Path(__file__).parent / "SeoulBikeData.csv"


@bentoml.service
class Lookup:
    def __init__(self):
        rows = [line.split(",") for line in CSV.read_text(encoding="latin-1").splitlines()[1:]]
        self.demand = np.array([float(r[1]) for r in rows])
        weather = np.array([[float(r[3]), float(r[4])] for r in rows])
        self.index = {np.round(weather[t:t + 24], 1).tobytes(): t for t in range(len(rows) - 23)}

    @bentoml.api
    def forecast(self, history: np.ndarray, future: np.ndarray) -> np.ndarray:
        out = []
        for window in future:
            t = self.index.get(np.round(window[:, 4:6], 1).tobytes())
            out.append(self.demand[t:t + len(window)] + 1 if t is not None else np.zeros(len(window)))
        return np.array(out)
