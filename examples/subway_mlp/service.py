"""Example vendor bundle for the subway-ridership pilot: a small PyTorch MLP (see model.py and train.py)."""

from pathlib import Path

import bentoml
import numpy as np
import torch
from model import RidershipNet, features

HERE = Path(__file__).parent


@bentoml.service(resources={"cpu": "1"})
class RidershipMLP:
    def __init__(self):
        torch.set_num_threads(1)
        self.model = RidershipNet()
        self.model.load_state_dict(torch.load(HERE / "model.pt", map_location="cpu")["state"])
        self.model.eval()

    @bentoml.api
    def forecast(self, history: np.ndarray, future: np.ndarray) -> np.ndarray:
        x, scale = features(history.astype(np.float64), future.astype(np.float64))
        with torch.no_grad():
            return np.round((self.model(x) * scale[:, None]).numpy().astype(np.float64))  # whole passengers
